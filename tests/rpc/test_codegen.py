"""The checked-in stubs are exactly what barp_sidecar.rpc.codegen generates from protos/ (no diff)."""

from __future__ import annotations

from pathlib import Path

from barp_sidecar.rpc.codegen import generate

REPO = Path(__file__).resolve().parents[2]


def test_checked_in_stubs_match_regenerated_ones(tmp_path: Path) -> None:
    generated = generate(REPO / "protos", tmp_path)
    assert generated, "codegen produced nothing"
    checked_in = REPO / "barp_sidecar" / "gen"
    fresh_names = sorted(str(p.relative_to(tmp_path)) for p in generated)
    stored_names = sorted(
        str(p.relative_to(checked_in))
        for p in checked_in.rglob("*")
        if p.is_file() and p.suffix in (".py", ".pyi") and p.parent != checked_in
    )
    assert fresh_names == stored_names
    stale = [
        name for name in fresh_names if (tmp_path / name).read_bytes() != (checked_in / name).read_bytes()
    ]
    assert stale == [], f"stale stubs, run `python -m barp_sidecar.rpc.codegen`: {stale}"
