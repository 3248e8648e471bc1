"""The process shell shared by ``barp-sidecar serve`` and ``barp-trainer serve``: signals and exit codes.

Owns what happens between ``asyncio.run`` and the app: SIGTERM/SIGINT request a graceful stop (the app's
own ordered shutdown), a second signal forces exit at once, and a start-up failure caused by a setting
becomes exit 2 with one line on stderr naming the key; the process holds grpc.aio's engine for its whole
life (``hold_grpc_aio_engine``). Logging is ``barp_sidecar.log`` (JSON lines on
stdout) for both processes. The app itself (what starts and stops in which order) is the caller's.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Protocol

import structlog

from barp_sidecar.errors import ConfigError

log = structlog.get_logger("barp_sidecar.process")

EXIT_OK = 0
# Invalid configuration (argparse uses 2 for bad arguments too).
EXIT_CONFIG = 2
# A second signal forced exit before the graceful shutdown finished (128 + SIGINT, as shells report).
EXIT_FORCED = 130


class Servable(Protocol):
    """An app with an explicit lifecycle: ``start`` binds and serves, ``close`` is safe after a failed
    start and idempotent."""

    async def start(self) -> None: ...
    def request_stop(self) -> None: ...
    async def wait_for_stop(self) -> None: ...
    async def close(self) -> None: ...


def hold_grpc_aio_engine() -> None:
    """Take one reference on grpc.aio's global engine for the life of the process.

    grpc.aio shuts its engine down whenever its last server or channel goes away: the event loop stops
    reading the poller thread's wake-up socket and then joins that thread. After a burst of completions
    the thread can be blocked writing to the full socket, and the join never returns
    (grpc/grpc#40989): a sidecar that was flooded, then stopped, would hang on SIGTERM. With one reference
    held the engine is never torn down mid-process; its poller is a daemon thread that ends with the
    process. Each call adds a reference nobody releases. grpc is imported here, not at module import, so
    ``--help`` and configuration errors stay fast.
    """
    import grpc.aio

    grpc.aio.init_grpc_aio()


def config_error_exit(program: str, error: ConfigError) -> int:
    """The one-line message and exit code for a bad setting (before or during start-up)."""
    print(f"{program}: invalid configuration: {error}", file=sys.stderr)
    return EXIT_CONFIG


async def serve_until_signalled(app: Servable, program: str) -> int:
    """Start ``app``, serve until SIGTERM/SIGINT, then close it in order; a second signal exits at once
    with ``EXIT_FORCED``. Returns the exit code. Start-up errors other than ConfigError propagate after
    the app was closed."""
    hold_grpc_aio_engine()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            app.request_stop()
        else:
            log.warning("forced_exit", signal=signal.Signals(signum).name, exit_code=EXIT_FORCED)
            os._exit(EXIT_FORCED)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await app.start()
    except ConfigError as error:
        await app.close()
        log.error("startup_failed", key=error.key, error=str(error))
        return config_error_exit(program, error)
    except BaseException:
        await app.close()
        raise
    try:
        await app.wait_for_stop()
    finally:
        await app.close()
    # An app that stopped itself may say why in its exit code (the trainer replica that lost its lease).
    return int(getattr(app, "exit_code", EXIT_OK))
