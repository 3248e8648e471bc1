"""Model-pool changes of a running trainer: checking a requested pool, planning the change, and which model
list each published version had.

Owns the rules of a pool change (docs/learning.md "Changing the model pool"): a model new to the pool is
appended to the model list with a bounded exploration share until it has ``new_model_min_events`` events; a
model left out of the requested pool is *retired*: masked first (share 0, still in the model list, so events
that sidecars decided before the change stay valid), then dropped from the model list once
``retire_after_events`` more events were trained. ``PoolHistory`` remembers each version's model list, so
events decided by an older version (other length of ``allowed``, a retired model) are still accepted and
mapped by name. Pure logic: the training loop applies a plan, the learner re-indexes its statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from barp_sidecar.model_names import canonical_model_name
from barp_sidecar.policy.checkpoint import CheckpointError, CheckpointStore, read_manifest


class PoolChangeError(ValueError):
    """A requested pool that cannot be served; the message names the problem (the pool stays as it was)."""


def check_pool(requested: Sequence[str], key: str = "learner.arms") -> tuple[str, ...]:
    """The requested pool, canonical names in the given order; PoolChangeError naming the problem."""
    names = [canonical_model_name(str(name).strip()) for name in requested]
    if not names:
        raise PoolChangeError(f"{key}: the pool change removes every model (an empty list)")
    blank = [i for i, name in enumerate(names) if not name or any(c.isspace() for c in name)]
    if blank:
        raise PoolChangeError(f"{key}: entry {blank[0]} is not a model name ({requested[blank[0]]!r})")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PoolChangeError(f"{key}: models listed twice (aliases name one model): {duplicates}")
    if len(names) < 2:
        raise PoolChangeError(f"{key}: routing needs at least two models, got {names}")
    return tuple(names)


@dataclass(frozen=True)
class PoolPlan:
    """The model list of the next version and what changed. ``models`` keeps the serving order and appends the
    added models; models being retired stay in it (masked) until ``drop`` removes them."""

    models: tuple[str, ...]
    added: tuple[str, ...] = ()
    retired: tuple[str, ...] = ()  # masked from now on
    restored: tuple[str, ...] = ()  # retired earlier, requested again before they were dropped
    dropped: tuple[str, ...] = ()  # leave the model list now

    @property
    def changed(self) -> bool:
        return bool(self.added or self.retired or self.restored or self.dropped)


def plan_pool(current: tuple[str, ...], retiring: Sequence[str], requested: tuple[str, ...]) -> PoolPlan:
    """How to go from the serving model list (``retiring``: its models already masked) to ``requested``.
    PoolChangeError when no model with data would remain (that is a new pool: start it cold)."""
    wanted = set(requested)
    active = [a for a in current if a not in set(retiring)]
    if not wanted & set(current):
        raise PoolChangeError(
            f"learner.arms: the pool change removes every model of the serving pool {list(active)} "
            f"(requested {list(requested)}); keep at least one, or start a new pool cold"
        )
    added = tuple(a for a in requested if a not in set(current))
    retired = tuple(a for a in active if a not in wanted)
    restored = tuple(a for a in retiring if a in wanted)
    return PoolPlan(models=current + added, added=added, retired=retired, restored=restored)


def drop_plan(current: tuple[str, ...], droppable: Sequence[str]) -> PoolPlan:
    """Remove ``droppable`` (retired models whose masked version has served long enough) from the list."""
    gone = set(droppable)
    return PoolPlan(models=tuple(a for a in current if a not in gone), dropped=tuple(droppable))


@dataclass
class PoolState:
    """What the loop tracks between publications: models still under their exploration cap and retired
    models (masked) with the training-event count at which they were masked. Saved in each manifest's
    ``training.model_pool`` so a restart continues the schedule."""

    new_models: list[str] = field(default_factory=list)
    retired_at_events: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"new_models": list(self.new_models), "retired_at_events": dict(self.retired_at_events)}

    @classmethod
    def from_json(cls, data: object) -> PoolState:
        if not isinstance(data, dict):
            return cls()
        new = data.get("new_models", [])
        retired = data.get("retired_at_events", {})
        return cls(
            new_models=[str(a) for a in new] if isinstance(new, list) else [],
            retired_at_events=(
                {str(k): int(v) for k, v in retired.items()} if isinstance(retired, dict) else {}
            ),
        )

    def caps(
        self, models: tuple[str, ...], model_events: Callable[[str], int], min_events: int, share: float
    ) -> tuple[float, ...]:
        """Per-model ``exploration_share`` of the next version: 0 for retired models, ``share`` for new ones
        still below ``min_events`` events (they leave ``new_models`` once they reach it), else 1; () when
        none."""
        self.new_models = [a for a in self.new_models if a in models and model_events(a) < min_events]
        caps = tuple(
            0.0 if a in self.retired_at_events else share if a in self.new_models else 1.0 for a in models
        )
        return caps if any(c < 1.0 for c in caps) else ()


class PoolHistory:
    """The model list of every version this trainer published (read lazily from the store's manifests, or
    recorded from manifests another trainer replica published: ``failover.learn_model_list``), so events
    decided by an older version are validated and mapped with the list that version had. ``current`` is
    the newest recorded version's list."""

    def __init__(self, store: CheckpointStore | None, current: tuple[str, ...], version: int) -> None:
        self._store = store
        self._by_version: dict[int, tuple[str, ...]] = {version: current}
        self._newest = version
        self._unknowable: set[int] = set()
        self.current = current

    def record(self, version: int, models: tuple[str, ...]) -> None:
        self._by_version[version] = models
        if version >= self._newest:
            self._newest, self.current = version, models

    def knows(self, version: int) -> bool:
        """Whether ``version``'s list is known here (recorded, in the store, or marked unknowable)."""
        if version in self._by_version or version in self._unknowable:
            return True
        return self._from_store(version) is not None

    def mark_unknowable(self, version: int) -> None:
        """No manifest of ``version`` exists anywhere (its events are validated against ``current``)."""
        self._unknowable.add(version)

    def decided_with(self, version: int) -> tuple[str, ...]:
        """The model list version ``version`` served with; the current one for a version unknown here."""
        known = self._by_version.get(version)
        if known is None:
            known = self._from_store(version)
        return self.current if known is None else known

    def _from_store(self, version: int) -> tuple[str, ...] | None:
        if self._store is None or version <= 0:
            return None
        try:
            known = read_manifest(self._store.path(version)).models
        except (CheckpointError, OSError):
            return None
        self._by_version[version] = known
        return known
