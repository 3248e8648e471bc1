"""Logging setup: structlog JSON lines on stdout, one event per fact (``log.info("server_started", port=…)``).

Owns only the process-wide structlog configuration, applied by each process's entry point (``app.run``,
``trainer.service.main.run``), never at import. Prompts are never logged here; the access log adds them
only when ``logging.log_prompts`` is true.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure_logging(level_name: str, stream: TextIO | None = None) -> None:
    """JSON lines with ISO UTC timestamps and the level, filtered at ``level_name`` (``info``, …).

    Both processes (sidecar and trainer) call it, so their logs are one stream format on stdout."""
    level = logging.getLevelNamesMapping()[level_name.upper()]
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
