"""``barp-trainer`` command line: a thin dispatcher from subcommands to the modules that implement them.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; add new ones (e.g.
``serve``) to ``_SUBCOMMANDS`` without putting logic here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from barp_sidecar.errors import BarpError

_SUBCOMMANDS = {
    "offline": (
        "trainer.offline.train_command",
        "train a policy offline on a routing table (bandit feedback)",
    ),
    "reproduce": (
        "trainer.offline.reproduce",
        "train + evaluate BaRP and baselines; write report.md/json, pareto.png",
    ),
    "replay": (
        "trainer.replay.command",
        "replay the online trainer (and peers) on a routing table, deterministically",
    ),
    "evaluate": (
        "trainer.offline.evaluate_command",
        "evaluate a policy on a log: vs single models, per-task best, oracle; report.md/json + plot",
    ),
    "serve": (
        "trainer.service.main",
        "run the online trainer: ingest reward events, learn, publish policies",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barp-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; a ``BarpError`` (bad data, bad checkpoint, bad option) exits 2 with one line."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._module.run(args))
    except BarpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
