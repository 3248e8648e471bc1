"""Logging setup: structlog JSON lines on stdout, one event per fact (``log.info("server_started", port=…)``).

Owns only the process-wide structlog configuration, applied by the composition root (``app.run``), never at
import. Prompts are never logged here; the access log adds them only when ``logging.log_prompts`` is true.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

from barp_sidecar.settings import LoggingSettings


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """JSON lines with ISO UTC timestamps and the level, filtered at ``settings.level``."""
    level = logging.getLevelNamesMapping()[settings.level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=True,
    )
