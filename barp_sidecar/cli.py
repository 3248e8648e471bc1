"""``barp-sidecar`` command line: a thin dispatcher to the module that owns each subcommand.

- ``serve``  run the gRPC sidecar (barp_sidecar.app)
- ``route``  call a running sidecar's Route and print the decision as JSON (barp_sidecar.rpc.client)
- ``decide`` load the policy in-process and print one decision as JSON (barp_sidecar.decide)
- ``complete`` send a chat message through a running sidecar's Complete and stream the answer
  (barp_sidecar.rpc.complete_client)
- ``report`` ReportOutcome for a decision on a running sidecar (barp_sidecar.rpc.outcome_client)
- ``admin``  GetPolicy / ListPolicies / PinPolicy on a running sidecar's Admin port
  (barp_sidecar.rpc.admin_client)
- ``export-onnx`` export the encoder for the ONNX and OpenVINO backends (barp_sidecar.export_onnx)

Modules are imported only for the chosen subcommand, so ``--help`` stays fast. Exit codes: 0 success,
1 the server answered with an error (``CODE: message`` on stderr), 2 a bad argument or configuration
(one line on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from barp_sidecar.console import package_version, run_handling_closed_stdout

SUBCOMMANDS = {
    "serve": ("barp_sidecar.app", "run the gRPC sidecar router"),
    "route": ("barp_sidecar.rpc.client", "ask a running sidecar for a decision (prints JSON)"),
    "decide": ("barp_sidecar.decide", "decide in-process with the policy (prints JSON)"),
    "complete": (
        "barp_sidecar.rpc.complete_client",
        "send a chat message through a running sidecar's Complete and stream the answer",
    ),
    "report": ("barp_sidecar.rpc.outcome_client", "report a decision's outcome (ReportOutcome)"),
    "admin": ("barp_sidecar.rpc.admin_client", "get / list / pin / unpin policy versions (Admin)"),
    "export-onnx": (
        "barp_sidecar.export_onnx",
        "export the encoder to ONNX (fp32 + int8) and OpenVINO IR (fp32), print the files",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="barp-sidecar", description="BaRP LLM router sidecar")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(module=module_name)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub)
    args = parser.parse_args(argv)
    return run_handling_closed_stdout(lambda: int(importlib.import_module(args.module).run(args)))


if __name__ == "__main__":
    sys.exit(main())
