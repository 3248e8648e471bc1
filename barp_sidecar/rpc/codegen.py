"""Generates the Python gRPC stubs in ``barp_sidecar/gen`` from ``protos/barp/v1/*.proto``.

Owns only code generation. The stubs are checked in (so a plain ``pip install`` needs no protoc step);
``tests/rpc/test_codegen.py`` regenerates them into a temporary directory and fails on any difference.

protoc writes cross-module imports as ``from barp.v1 import x_pb2``; they are rewritten to the package
path ``barp_sidecar.gen.barp.v1`` so the stubs import without touching ``sys.path``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_IMPORT_PATTERN = re.compile(r"^from barp\.v1 import ", re.MULTILINE)
_PACKAGE_IMPORT = "from barp_sidecar.gen.barp.v1 import "


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Generate stubs for every ``barp/v1/*.proto`` under ``proto_root`` into ``out_dir``.

    Returns the generated file paths. Raises RuntimeError when protoc fails.
    """
    from grpc_tools import protoc  # imported lazily: only code generation needs it

    import grpc_tools

    protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "barp" / "v1").glob("*.proto"))
    if not protos:
        raise RuntimeError(f"no .proto files under {proto_root / 'barp' / 'v1'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed for {protos}")
    generated: list[Path] = []
    for package_dir in (out_dir / "barp", out_dir / "barp" / "v1"):
        init = package_dir / "__init__.py"
        init.write_text('"""Generated gRPC stubs (barp_sidecar.rpc.codegen); do not edit."""\n')
        generated.append(init)
    for path in sorted((out_dir / "barp" / "v1").glob("*_pb2*.py*")):
        path.write_text(_IMPORT_PATTERN.sub(_PACKAGE_IMPORT, path.read_text()))
        generated.append(path)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    repo_root = Path(__file__).resolve().parents[2]
    parser.add_argument("--protos", type=Path, default=repo_root / "protos")
    parser.add_argument("--out", type=Path, default=repo_root / "barp_sidecar" / "gen")
    args = parser.parse_args(argv)
    for path in generate(args.protos, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
