"""Routing tables: one row per prompt with every model's quality and dollar cost, from three file layouts.

Owns reading and validating the data; knows nothing about encoders, policies or training.

- RouterBench CSV directory (``<task>_train.csv`` / ``<task>_test.csv``; ``../shared/data/routerbench``):
  ``prompt`` is a stringified Python list (``ast.literal_eval`` then join), one score column per model and
  ``<model>|total_cost``. Rows with a blank score are skipped and counted (RouterBench has a few).
- RouterBench's own pickles (``routerbench_0shot.pkl`` / ``routerbench_5shot.pkl``): a pandas DataFrame
  (read only when pandas is importable), or a pickled list of dicts / dict of lists with the same columns.
  They carry no split: a deterministic 70/30 split by sample id is assigned.
- Generic JSONL, one object per prompt: ``{"prompt", "task", "scores": {model: q}, "costs": {model: usd}}``
  with an optional ``"split"`` ("train"/"test"); rows without one are split by a hash of the prompt.
  Rows may name different models: the table's models are their union (in order of first appearance) and a
  model a row does not name is *unobserved* there (``RoutingTable.observed`` is False; its quality and
  cost are stored as 0 and must not be read).

Model names are canonicalised through ``barp_sidecar.model_names`` (``gpt4_1106_preview`` ->
``gpt-4-1106-preview``), so logs, catalogs and policies that spell one model differently meet.

Any other bad row (non-numeric or out-of-range score, negative cost, missing model) raises ``DataError``
naming the file and line: bad data is never used silently.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from barp_sidecar.errors import DataError
from barp_sidecar.model_names import canonical_model_name

COST_SUFFIX = "|total_cost"
RESPONSE_SUFFIX = "|model_response"
# Columns of the RouterBench layout that are neither a model score nor a cost.
_META_COLUMNS = frozenset({"", "Unnamed: 0", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"})
HASH_SPLIT_TEST_FRACTION = 0.3


def normalize_task(name: str) -> str:
    """RouterBench eval names to identifiers: ``arc-challenge`` -> ``arc_challenge``."""
    return name.strip().lower().replace("-", "_")


@dataclass(frozen=True)
class RoutingTable:
    """Rows of (prompt, task, split) with quality [N, K] in [0, 1] and cost_usd [N, K] ≥ 0 per model.

    ``observed`` [N, K] bool marks the (row, model) outcomes the source holds; None means every one. An
    unobserved entry has quality = cost = 0 as a placeholder: read it only through ``observed_mask``.
    """

    prompts: tuple[str, ...]
    tasks: tuple[str, ...]
    splits: tuple[str, ...]
    models: tuple[str, ...]
    quality: np.ndarray
    cost_usd: np.ndarray
    sample_ids: tuple[str, ...] = ()
    skipped_rows: int = 0
    source: str = ""
    skipped_by_file: dict[str, int] = field(default_factory=dict)
    observed: np.ndarray | None = None
    # Per row, the source it came from when several were combined (``combine_tables``); () = ``source``.
    row_sources: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n, k = len(self.prompts), len(self.models)
        if self.quality.shape != (n, k) or self.cost_usd.shape != (n, k):
            raise ValueError(
                f"quality/cost must be [{n}, {k}], got {self.quality.shape}/{self.cost_usd.shape}"
            )
        if len(self.tasks) != n or len(self.splits) != n:
            raise ValueError("tasks and splits need one entry per prompt")
        if self.observed is not None and self.observed.shape != (n, k):
            raise ValueError(f"observed must be [{n}, {k}], got {self.observed.shape}")
        if self.row_sources and len(self.row_sources) != n:
            raise ValueError("row_sources needs one entry per prompt")

    @property
    def sources(self) -> tuple[str, ...]:
        """Per row, the file or directory it was read from."""
        return self.row_sources or (self.source,) * len(self)

    @property
    def observed_mask(self) -> np.ndarray:
        """[N, K] bool: which (row, model) outcomes exist (all True for a complete table)."""
        if self.observed is None:
            return np.ones(self.quality.shape, dtype=bool)
        return self.observed

    @property
    def fully_observed(self) -> bool:
        return self.observed is None or bool(self.observed.all())

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.tasks)))

    def select(self, indices: Sequence[int] | np.ndarray) -> RoutingTable:
        idx = np.asarray(indices, dtype=np.int64)
        return RoutingTable(
            prompts=tuple(self.prompts[i] for i in idx),
            tasks=tuple(self.tasks[i] for i in idx),
            splits=tuple(self.splits[i] for i in idx),
            models=self.models,
            quality=self.quality[idx],
            cost_usd=self.cost_usd[idx],
            sample_ids=tuple(self.sample_ids[i] for i in idx) if self.sample_ids else (),
            skipped_rows=self.skipped_rows,
            source=self.source,
            skipped_by_file=dict(self.skipped_by_file),
            observed=None if self.observed is None else self.observed[idx],
            row_sources=tuple(self.row_sources[i] for i in idx) if self.row_sources else (),
        )

    def from_source(self, source: str) -> RoutingTable:
        """The rows read from one source (see ``combine_tables``)."""
        return self.select([i for i, s in enumerate(self.sources) if s == source])

    def where(self, split: str | None = None, tasks: Iterable[str] | None = None) -> RoutingTable:
        """Rows of one split and/or a set of tasks (normalised names)."""
        wanted = None if tasks is None else {normalize_task(t) for t in tasks}
        keep = [
            i
            for i in range(len(self))
            if (split is None or self.splits[i] == split) and (wanted is None or self.tasks[i] in wanted)
        ]
        return self.select(keep)


def _hash_split(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") / 2**64
    return "test" if bucket < HASH_SPLIT_TEST_FRACTION else "train"


def _parse_prompt(raw: Any, where: str) -> str:
    if isinstance(raw, list | tuple):
        return "\n".join(str(part) for part in raw)
    if not isinstance(raw, str):
        raise DataError(f"{where}: prompt must be a string or list of strings, got {type(raw).__name__}")
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError) as exc:
            raise DataError(f"{where}: prompt looks like a list but does not parse ({exc})") from exc
        if isinstance(parsed, list):
            return "\n".join(str(part) for part in parsed)
    return raw


def _is_blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any, where: str, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {what} is not a number ({value!r})") from exc
    if not math.isfinite(number):
        raise DataError(f"{where}: {what} is not finite ({value!r})")
    return number


def _score(value: Any, where: str, model: str) -> float:
    score = _number(value, where, f"score of {model!r}")
    if not 0.0 <= score <= 1.0:
        raise DataError(f"{where}: score of {model!r} is {score}, outside [0, 1]")
    return score


def _cost(value: Any, where: str, model: str) -> float:
    if _is_blank(value):
        raise DataError(f"{where}: cost of {model!r} is missing")
    cost = _number(value, where, f"cost of {model!r}")
    if cost < 0:
        raise DataError(f"{where}: cost of {model!r} is negative ({cost})")
    return cost


def routerbench_models(columns: Iterable[str]) -> tuple[str, ...]:
    """Model names of a RouterBench layout: columns that have a matching ``<model>|total_cost``."""
    names = list(columns)
    present = set(names)
    return tuple(
        c for c in names if c not in _META_COLUMNS and "|" not in c and f"{c}{COST_SUFFIX}" in present
    )


def _canonical_models(columns: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Canonical names of a file's model columns; two columns naming one model is an error."""
    models = tuple(canonical_model_name(c) for c in columns)
    if len(set(models)) != len(models):
        dupes = sorted({c for c in columns if models.count(canonical_model_name(c)) > 1})
        raise DataError(f"{where}: columns {dupes} name the same model")
    return models


@dataclass
class _Builder:
    models: tuple[str, ...]
    columns: tuple[str, ...] = ()
    prompts: list[str] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)
    sample_ids: list[str] = field(default_factory=list)
    quality: list[list[float]] = field(default_factory=list)
    cost: list[list[float]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def add_routerbench_row(self, row: Mapping[str, Any], where: str, split: str | None, source: str) -> None:
        columns = self.columns or self.models
        if any(_is_blank(row.get(model)) for model in columns):
            self.skipped[source] = self.skipped.get(source, 0) + 1
            return
        sample_id = str(row.get("sample_id", ""))
        prompt = _parse_prompt(row.get("prompt"), where)
        task = row.get("eval_name")
        if _is_blank(task):
            raise DataError(f"{where}: eval_name (task) is missing")
        self.prompts.append(prompt)
        self.tasks.append(normalize_task(str(task)))
        self.splits.append(split if split is not None else _hash_split(sample_id or prompt))
        self.sample_ids.append(sample_id)
        self.quality.append([_score(row[m], where, m) for m in columns])
        self.cost.append([_cost(row.get(f"{m}{COST_SUFFIX}"), where, m) for m in columns])

    def build(self, source: str) -> RoutingTable:
        if not self.prompts:
            raise DataError(f"{source}: no usable rows")
        k = len(self.models)
        return RoutingTable(
            prompts=tuple(self.prompts),
            tasks=tuple(self.tasks),
            splits=tuple(self.splits),
            models=self.models,
            quality=np.asarray(self.quality, dtype=np.float64).reshape(-1, k),
            cost_usd=np.asarray(self.cost, dtype=np.float64).reshape(-1, k),
            sample_ids=tuple(self.sample_ids),
            skipped_rows=sum(self.skipped.values()),
            source=source,
            skipped_by_file=dict(self.skipped),
        )


def load_routerbench_csv_dir(directory: Path) -> RoutingTable:
    """Every ``*_train.csv`` / ``*_test.csv`` in ``directory``; the file name gives the split."""
    directory = Path(directory)
    files = sorted(p for p in directory.glob("*.csv") if p.stem.endswith(("_train", "_test")))
    if not files:
        raise DataError(f"{directory}: no *_train.csv / *_test.csv files")
    csv.field_size_limit(10**9)
    builder: _Builder | None = None
    for path in files:
        split = "train" if path.stem.endswith("_train") else "test"
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            models = routerbench_models(reader.fieldnames or [])
            if not models:
                raise DataError(f"{path}: no '<model>' + '<model>|total_cost' column pairs")
            if builder is None:
                builder = _Builder(models=_canonical_models(models, str(path)), columns=models)
            elif set(models) != set(builder.columns):
                raise DataError(f"{path}: models {sorted(models)} differ from {sorted(builder.columns)}")
            line = reader.line_num + 1
            for row in reader:
                builder.add_routerbench_row(row, f"{path}:{line}", split, str(path))
                line = reader.line_num + 1
    assert builder is not None
    return builder.build(str(directory))


def _rows_from_pickle(obj: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(obj, list) and all(isinstance(r, Mapping) for r in obj):
        return [dict(r) for r in obj]
    if isinstance(obj, Mapping) and all(
        isinstance(v, Sequence) and not isinstance(v, str) for v in obj.values()
    ):
        lengths = {len(v) for v in obj.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: dict-of-lists columns have different lengths {sorted(lengths)}")
        keys = list(obj)
        return [dict(zip(keys, values, strict=True)) for values in zip(*(obj[k] for k in keys), strict=True)]
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # a pandas DataFrame
        return list(obj.reset_index(drop=True).to_dict(orient="records"))
    raise DataError(
        f"{path}: expected a DataFrame, a list of dicts or a dict of lists, got {type(obj).__name__}"
    )


def load_routerbench_pickle(path: Path) -> RoutingTable:
    """RouterBench's ``routerbench_{0,5}shot.pkl`` (DataFrame; needs pandas) or a list/dict equivalent.

    Only open pickles you trust: unpickling runs code.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            obj = pickle.load(handle)
    except ModuleNotFoundError as exc:
        raise DataError(
            f"{path}: this pickle needs the module {exc.name!r} "
            " (a pandas DataFrame needs `pip install pandas`)"
        ) from exc
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc})") from exc
    rows = _rows_from_pickle(obj, path)
    if not rows:
        raise DataError(f"{path}: no rows")
    models = routerbench_models(rows[0].keys())
    if not models:
        raise DataError(f"{path}: no '<model>' + '<model>|total_cost' column pairs")
    builder = _Builder(models=_canonical_models(models, str(path)), columns=models)
    for index, row in enumerate(rows):
        split = row.get("split") if row.get("split") in ("train", "test") else None
        builder.add_routerbench_row(row, f"{path}:row {index}", split, str(path))
    return builder.build(str(path))


def _jsonl_outcomes(record: dict[str, Any], where: str) -> dict[str, tuple[float, float]]:
    """{canonical model: (score, cost)} of one JSONL row; every named model needs both."""
    scores, costs = record["scores"], record["costs"]
    if not isinstance(scores, dict) or not isinstance(costs, dict) or not scores:
        raise DataError(f"{where}: 'scores' and 'costs' must be non-empty objects keyed by model")
    if set(scores) != set(costs):
        raise DataError(
            f"{where}: 'scores' and 'costs' name different models "
            f"(score only {sorted(set(scores) - set(costs))}, cost only {sorted(set(costs) - set(scores))})"
        )
    outcomes: dict[str, tuple[float, float]] = {}
    for model in scores:
        name = canonical_model_name(model)
        if name in outcomes:
            raise DataError(f"{where}: two keys name the model {name!r} (aliases of one another)")
        if _is_blank(scores[model]):
            raise DataError(f"{where}: score of {model!r} is missing")
        outcomes[name] = (_score(scores[model], where, model), _cost(costs[model], where, model))
    return outcomes


def load_jsonl(path: Path) -> RoutingTable:
    """Generic log: one JSON object per line with prompt, task, scores and costs per model.

    Rows may name different models; a model a row does not name is unobserved on that row.
    """
    path = Path(path)
    prompts: list[str] = []
    tasks: list[str] = []
    splits: list[str] = []
    sample_ids: list[str] = []
    outcomes: list[dict[str, tuple[float, float]]] = []
    models: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            for key in ("prompt", "task", "scores", "costs"):
                if key not in record:
                    raise DataError(f"{where}: missing {key!r}")
            if not isinstance(record["prompt"], str) or not isinstance(record["task"], str):
                raise DataError(f"{where}: 'prompt' and 'task' must be strings")
            split = record.get("split")
            if split is not None and split not in ("train", "test"):
                raise DataError(f"{where}: split must be 'train' or 'test', not {split!r}")
            row = _jsonl_outcomes(record, where)
            for name in row:
                models.setdefault(name, len(models))
            prompts.append(record["prompt"])
            tasks.append(normalize_task(record["task"]))
            splits.append(split or _hash_split(record["prompt"]))
            sample_ids.append(str(record.get("id", line_number)))
            outcomes.append(row)
    if not prompts:
        raise DataError(f"{path}: empty file")
    quality = np.zeros((len(prompts), len(models)), dtype=np.float64)
    cost = np.zeros_like(quality)
    observed = np.zeros(quality.shape, dtype=bool)
    for index, row in enumerate(outcomes):
        for name, (score, usd) in row.items():
            quality[index, models[name]] = score
            cost[index, models[name]] = usd
            observed[index, models[name]] = True
    return RoutingTable(
        prompts=tuple(prompts),
        tasks=tuple(tasks),
        splits=tuple(splits),
        models=tuple(models),
        quality=quality,
        cost_usd=cost,
        sample_ids=tuple(sample_ids),
        source=str(path),
        observed=None if observed.all() else observed,
    )


def combine_tables(tables: Sequence[RoutingTable]) -> RoutingTable:
    """One table over several sources: models are the union, a model a source lacks is unobserved there.

    Rows keep their task names and splits; ``row_sources`` records where each row came from.
    """
    if len(tables) == 1:
        return tables[0]
    models: dict[str, int] = {}
    for table in tables:
        for model in table.models:
            models.setdefault(model, len(models))
    n, k = sum(len(t) for t in tables), len(models)
    quality = np.zeros((n, k))
    cost = np.zeros((n, k))
    observed = np.zeros((n, k), dtype=bool)
    start = 0
    for table in tables:
        columns = [models[a] for a in table.models]
        rows = slice(start, start + len(table))
        quality[rows, columns] = table.quality
        cost[rows, columns] = table.cost_usd
        observed[rows, columns] = table.observed_mask
        start += len(table)
    return RoutingTable(
        prompts=tuple(p for t in tables for p in t.prompts),
        tasks=tuple(x for t in tables for x in t.tasks),
        splits=tuple(x for t in tables for x in t.splits),
        models=tuple(models),
        quality=quality,
        cost_usd=cost,
        sample_ids=tuple(x for t in tables for x in (t.sample_ids or ("",) * len(t))),
        skipped_rows=sum(t.skipped_rows for t in tables),
        source=" + ".join(t.source for t in tables),
        skipped_by_file={f: c for t in tables for f, c in t.skipped_by_file.items()},
        observed=None if observed.all() else observed,
        row_sources=tuple(s for t in tables for s in t.sources),
    )


def load_tables(paths: Sequence[Path]) -> RoutingTable:
    """``load_table`` of each path, combined (``combine_tables``); a path given twice is an error."""
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise DataError(f"--data: a source is given twice in {[str(p) for p in paths]}")
    return combine_tables([load_table(Path(p)) for p in paths])


def load_table(path: Path) -> RoutingTable:
    """Dispatch on the path: a directory of RouterBench CSVs, a ``.pkl`` or a ``.jsonl`` file."""
    path = Path(path)
    if path.is_dir():
        return load_routerbench_csv_dir(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.suffix in (".pkl", ".pickle"):
        return load_routerbench_pickle(path)
    if path.suffix in (".jsonl", ".ndjson"):
        return load_jsonl(path)
    raise DataError(f"{path}: unknown data format (expected a CSV directory, .pkl or .jsonl)")
