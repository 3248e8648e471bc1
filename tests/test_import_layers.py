"""The package layering of docs/architecture.md, checked over the real import graph (``ast``, no imports run).

Fails on an upward import (a lower layer importing a higher one), on an import between two packages of the
same layer, and on any cycle between packages. Imports inside functions and ``TYPE_CHECKING`` blocks count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import its own unit and any unit of a LOWER layer, nothing else.
# A unit is a package (``barp_sidecar.policy``) or a top-level module (``barp_sidecar.app``).
LAYERS: list[set[str]] = [
    {
        "barp_sidecar.errors",
        "barp_sidecar.domain",
        "barp_sidecar.tasks",
        "barp_sidecar.backoff",
        "barp_sidecar.model_names",
        "barp_sidecar.console",
        "barp_sidecar.gen",
        "barp_sidecar.bounded_text",
    },
    # The broker's settings section and NATS connection glue (below settings, which embeds the section).
    {"barp_sidecar.broker", "barp_sidecar.file_watch"},
    {"barp_sidecar.settings"},
    {"barp_sidecar.log", "barp_sidecar.process", "barp_sidecar.tracing", "barp_sidecar.exposition"},
    {"barp_sidecar.batching"},
    {"barp_sidecar.policy"},
    # choose_model: pure (numpy + domain), shared by the sidecar's routing, `decide` and the trainer's replay,
    # which must decide exactly as a sidecar does.
    {"barp_sidecar.routing.exploration"},
    {"barp_sidecar.providers", "barp_sidecar.rewards"},
    {"barp_sidecar.routing"},
    {"barp_sidecar.metrics"},
    # The transports: gRPC, and the OpenAI-compatible HTTP API (independent of each other).
    {"barp_sidecar.rpc", "barp_sidecar.http"},
    # The composition root and the one-shot commands.
    {"barp_sidecar.learning_wiring", "barp_sidecar.decide", "barp_sidecar.catalog_reload"},
    {"barp_sidecar.app"},
    {"barp_sidecar.cli", "barp_sidecar.export_onnx", "barp_sidecar"},
    # The trainer builds on the sidecar's lower layers (never the reverse).
    {"trainer.reinforce_core"},
    {"trainer.offline"},
    {"trainer.service"},
    {"trainer.replay"},
    {"trainer.demo"},
    {"trainer.cli", "trainer"},
]
# Sidecar units the trainer must not import: the sidecar's process shell and request path.
SIDECAR_ONLY = {
    "barp_sidecar.app",
    "barp_sidecar.cli",
    "barp_sidecar.learning_wiring",
    "barp_sidecar.decide",
    "barp_sidecar.routing",
    "barp_sidecar.batching",
    "barp_sidecar.providers",
    "barp_sidecar.metrics",
    "barp_sidecar.http",
}
LAYER_OF = {unit: index for index, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """The longest known unit that ``module`` is, or lies in."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        candidate = ".".join(parts[:length])
        if candidate in LAYER_OF:
            return candidate
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def project_imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every absolute or relative import of a project module in ``path``."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from barp_sidecar import errors`` imports the module ``barp_sidecar.errors``.
            names = [
                f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names
            ]
        else:
            continue
        for name in names:
            if name.split(".")[0] in ("barp_sidecar", "trainer"):
                yield node.lineno, name


def source_files() -> list[Path]:
    files = [*ROOT.glob("barp_sidecar/**/*.py"), *ROOT.glob("trainer/**/*.py")]
    return sorted(f for f in files if "gen" not in f.relative_to(ROOT).parts)


def layer_violations(files: list[Path]) -> list[str]:
    problems = []
    for path in files:
        here = unit_of(module_name(path))
        for line, imported in project_imports(path):
            there = unit_of(imported)
            where = f"{path.relative_to(ROOT)}:{line} imports {imported}"
            if there == here:
                continue
            if here.startswith("trainer") and there in SIDECAR_ONLY:
                problems.append(f"{where}: the trainer may not import the sidecar's {there}")
            elif LAYER_OF[there] > LAYER_OF[here]:
                problems.append(f"{where}: upward ({here} is below {there})")
            elif LAYER_OF[there] == LAYER_OF[here]:
                problems.append(f"{where}: {here} and {there} share a layer and must stay independent")
    return problems


def package_cycles(files: list[Path]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for path in files:
        here = unit_of(module_name(path))
        graph.setdefault(here, set()).update(
            unit_of(imported) for _, imported in project_imports(path) if unit_of(imported) != here
        )
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(unit: str, path: list[str]) -> None:
        state[unit] = 1
        for nxt in sorted(graph.get(unit, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [unit])
    return cycles


def test_every_import_goes_downwards() -> None:
    assert layer_violations(source_files()) == []


def test_no_cycle_between_packages() -> None:
    assert package_cycles(source_files()) == []


def test_the_check_sees_an_upward_import_and_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself: a policy module importing rewards (upward) and the cycle it closes are reported."""
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "barp_sidecar" / "policy").mkdir(parents=True)
    (tmp_path / "barp_sidecar" / "rewards").mkdir(parents=True)
    upward = tmp_path / "barp_sidecar" / "policy" / "watcher.py"
    upward.write_text("from barp_sidecar.rewards.backoff import backoff_delay_s\n")
    downward = tmp_path / "barp_sidecar" / "rewards" / "backoff.py"
    downward.write_text("def f():\n    from ..policy import watcher\n")
    files = [upward, downward]
    [problem] = layer_violations(files)
    assert problem.startswith("barp_sidecar/policy/watcher.py:1 imports barp_sidecar.rewards.backoff: upward")
    assert package_cycles(files) == [["barp_sidecar.policy", "barp_sidecar.rewards", "barp_sidecar.policy"]]


def test_architecture_doc_lists_every_unit() -> None:
    """docs/architecture.md's layer table names every unit of LAYERS (a checked table, not just prose)."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = doc.split("## Layout and layers", 1)[1].split("```", 1)[0]
    missing = []
    for unit in LAYER_OF:
        if unit in ("barp_sidecar", "trainer"):
            continue  # the package roots (__init__.py)
        path = unit.replace(".", "/")
        relative = path.removeprefix("barp_sidecar/")
        names = {f"`{relative}.py`", f"`{relative}/`", f"`{path}.py`", f"`{path}/`"}
        if not any(name in table for name in names):
            missing.append(unit)
    assert missing == []


def documented_modules(doc: str) -> dict[str, set[str]]:
    """{package path: module stems} from the module list of docs/architecture.md (the fenced block after
    "Every module, by package"): a line starting with ``pkg/`` opens a package, indented lines continue it."""
    block = doc.split("Every module, by package", 1)[1].split("```", 2)[1]
    listed: dict[str, set[str]] = {}
    package = ""
    for line in block.splitlines():
        words = line.split()
        if not words:
            continue
        if not line[0].isspace():
            package, words = words[0], words[1:]
            assert package.endswith("/") and package not in listed, f"bad or repeated package line: {line!r}"
            listed[package] = set()
        listed[package].update(words)
    return listed


def actual_modules() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for root in ("barp_sidecar", "trainer"):
        for path in (ROOT / root).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("barp_sidecar", "gen") or path.name == "__init__.py":
                continue
            found.setdefault(relative.parent.as_posix() + "/", set()).add(path.stem)
    return found


def module_list_problems(listed: dict[str, set[str]], actual: dict[str, set[str]]) -> list[str]:
    return [
        f"{package}: missing {sorted(actual.get(package, set()) - listed.get(package, set()))}, "
        f"stale {sorted(listed.get(package, set()) - actual.get(package, set()))}"
        for package in sorted(set(listed) | set(actual))
        if listed.get(package) != actual.get(package)
    ]


def test_architecture_doc_lists_every_module() -> None:
    """The module list of docs/architecture.md is the tree: nothing missing, nothing stale."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    assert module_list_problems(documented_modules(doc), actual_modules()) == []


def test_the_module_list_check_catches_a_missing_and_a_stale_module() -> None:
    doc = "Every module, by package\n\n```\nx/  a b\n    c\ny/  d\n```\n"
    listed = documented_modules(doc)
    assert listed == {"x/": {"a", "b", "c"}, "y/": {"d"}}
    assert module_list_problems(listed, {"x/": {"a", "b", "c"}, "y/": {"d"}}) == []
    assert module_list_problems(listed, {"x/": {"a", "b", "c", "new"}, "y/": {"d"}}) == [
        "x/: missing ['new'], stale []"
    ]
    assert module_list_problems(listed, {"x/": {"a", "b"}}) == [
        "x/: missing [], stale ['c']",
        "y/: missing [], stale ['d']",
    ]
