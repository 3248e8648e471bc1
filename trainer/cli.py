"""``barp-trainer`` command line: a thin dispatcher from subcommands to the modules that implement them.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``; add new ones (e.g.
``serve``) to ``_SUBCOMMANDS`` without putting logic here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from barp_sidecar.console import package_version, run_handling_closed_stdout
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


# Bad arguments, data or files (argparse uses 2 as well).
EXIT_USAGE = 2


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``chosen`` subcommand's module is imported (for its arguments), so that
    ``barp-trainer --help`` and a bad command line answer without importing torch."""
    parser = argparse.ArgumentParser(prog="barp-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _SUBCOMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(_module_name=module_name)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if a in _SUBCOMMANDS), None)
    args = build_parser(chosen).parse_args(argv)
    try:
        return run_handling_closed_stdout(lambda: int(importlib.import_module(args._module_name).run(args)))
    except (BarpError, FileExistsError, FileNotFoundError) as error:
        # A user's mistake (bad --data, existing --out, a bad file): one line, exit 2, no traceback.
        print(f"barp-trainer {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
