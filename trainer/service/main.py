"""``barp-trainer serve``: parse arguments, load settings (exit 2 on a bad setting), run the TrainerApp.

Exposes ``add_arguments(parser)`` / ``run(args) -> int`` for trainer/cli.py's dispatcher, and ``main()``
so ``python -m trainer.service.main`` works on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys

import structlog

from barp_sidecar.errors import CheckpointError, ConfigError
from trainer.service.settings import TrainerSettings, load_trainer_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML settings file (BARP_TRAINER__SECTION__KEY env overrides it)")
    parser.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    parser.add_argument("--data-dir", help="override storage.data_dir")


def configure_logging(level: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def build_settings(args: argparse.Namespace) -> TrainerSettings:
    settings = load_trainer_settings(args.config, os.environ)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port", f"must be in [0, 65535], not {args.port}")
        settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, port=args.port))
    if args.data_dir is not None:
        settings = dataclasses.replace(
            settings, storage=dataclasses.replace(settings.storage, data_dir=args.data_dir)
        )
    return settings


async def serve(settings: TrainerSettings) -> None:
    # Imported here: settings are validated (and a bad one reported) before torch is imported.
    from trainer.service.app import TrainerApp

    app = TrainerApp(settings)
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            os._exit(1)  # second signal: force exit
        app.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await app.start()
        await app.wait()
    finally:
        await app.close()


def run(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
    except ConfigError as exc:
        print(f"barp-trainer: invalid setting {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.logging.level)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        asyncio.run(serve(settings))
    except ConfigError as exc:
        print(f"barp-trainer: invalid setting {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:
        print(f"barp-trainer: cannot load the starting policy: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(
            f"barp-trainer: {exc} (use learner.initial_policy: cold with arms and tau_usd)", file=sys.stderr
        )
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="barp-trainer serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
