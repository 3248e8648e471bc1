"""``barp-trainer serve``: parse arguments, load settings (exit 2 on a bad setting), run the TrainerApp.

The process shell (JSON logs on stdout, SIGTERM/SIGINT -> graceful stop, a second signal -> exit 130,
exit codes) is the sidecar's: ``barp_sidecar.process`` and ``barp_sidecar.log``.

Exposes ``add_arguments(parser)`` / ``run(args) -> int`` for trainer/cli.py's dispatcher, and ``main()``
so ``python -m trainer.service.main`` works on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from barp_sidecar.errors import CheckpointError, ConfigError
from barp_sidecar.log import configure_logging
from barp_sidecar.process import EXIT_CONFIG, config_error_exit, serve_until_signalled
from trainer.service.settings import TrainerSettings, load_trainer_settings

PROGRAM = "barp-trainer serve"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML settings file (BARP_TRAINER__SECTION__KEY env overrides it)")
    parser.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    parser.add_argument("--data-dir", help="override storage.data_dir")


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


def run(args: argparse.Namespace) -> int:
    try:
        settings = build_settings(args)
    except ConfigError as exc:
        return config_error_exit(PROGRAM, exc)
    configure_logging(settings.logging.level)
    # Imported here: settings are validated (and a bad one reported) before torch is imported.
    import torch

    from trainer.service.app import TrainerApp

    torch.set_num_threads(min(2, torch.get_num_threads()))
    try:
        return asyncio.run(serve_until_signalled(TrainerApp(settings, config_path=args.config), PROGRAM))
    except ConfigError as exc:  # raised while building the app, before it could start
        return config_error_exit(PROGRAM, exc)
    except CheckpointError as exc:
        print(f"{PROGRAM}: cannot load the starting policy: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ModuleNotFoundError as exc:
        print(f"{PROGRAM}: {exc} (use learner.initial_policy: cold with arms and tau_usd)", file=sys.stderr)
        return EXIT_CONFIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="barp-trainer serve", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
