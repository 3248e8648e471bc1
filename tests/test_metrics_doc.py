"""docs/metrics.md lists exactly the metrics a sidecar exports, with type and labels; no `_created`.
(The trainer's section at its end is checked by tests/broker/test_trainer_metrics_doc.py.)"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from barp_sidecar.app import SidecarApp
from tests.support.sidecar import make_tiny_checkpoint, sidecar_settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
TRAINER_HEADING = "\n## Trainer"
ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|([^|]*)\|", re.M)


TRANSPORTS = ("grpc", "nats")


def transport_sections(transport: str, tmp_path: Path) -> dict[str, dict[str, object]]:
    """Every part on, for one event transport: the gRPC trainer stream or NATS JetStream (nothing
    listens on port 9: the publishers only try to connect in the background)."""
    if transport == "grpc":
        return {"trainer": {"target": "127.0.0.1:9", "watch_policies": False}}
    return {
        "events": {"backend": "nats", "nats_urls": ["nats://127.0.0.1:9"]},
        "trainer": {"checkpoint_cache_dir": str(tmp_path / "policies")},
    }


async def exported(tmp_path: Path, transport: str) -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, labels) of every family of a sidecar with every part on."""
    sections = transport_sections(transport, tmp_path)
    settings = sidecar_settings(make_tiny_checkpoint(tmp_path / "v1"), **sections)  # type: ignore[arg-type]
    app = SidecarApp.build(settings, env={})
    assert app.learning is not None
    await app.learning.start_recording()  # builds the reward publisher (it does not connect here)
    app.metrics.rpc_done("Complete", "OK", 0.01, "small-model")  # labelled families get a sample
    try:
        collected = list(app.metrics.registry.collect())
        text = generate_latest(app.metrics.registry).decode()
    finally:
        await app.learning.close()
    families: dict[str, tuple[str, set[str]]] = {}
    for family in collected:
        kind = {"info": "gauge"}.get(family.type, family.type)
        name = family.name + {"counter": "_total", "info": "_info"}.get(family.type, "")
        labels = {key for sample in family.samples for key in sample.labels if key != "le"}
        families[name] = (kind, labels)
    assert "_created" not in text
    return families


def sidecar_part() -> str:
    """docs/metrics.md up to the trainer's section."""
    text = DOC.read_text()
    assert TRAINER_HEADING in text
    return text.split(TRAINER_HEADING)[0]


def documented_rows(text: str) -> dict[str, tuple[str, set[str]]]:
    """Name -> (type, labels) of every table row of ``text``."""
    return {
        name: (kind, {label.strip(" `") for label in labels.split(",") if label.strip()})
        for name, kind, labels in ROW.findall(text)
    }


async def test_every_exported_metric_is_documented_with_type_and_labels(tmp_path: Path) -> None:
    documented = documented_rows(sidecar_part())
    families: dict[str, tuple[str, set[str]]] = {}
    for transport in TRANSPORTS:
        families.update(await exported(tmp_path / transport, transport))
    assert sorted(set(families) - set(documented)) == [], "exported but not in docs/metrics.md"
    assert sorted(set(documented) - set(families)) == [], "in docs/metrics.md but not exported"
    for name, (kind, labels) in families.items():
        doc_kind, doc_labels = documented[name]
        assert doc_kind == kind, name
        # Families without samples yet (labelled, never used) have no labels to compare.
        assert not labels or labels == doc_labels, (name, labels, doc_labels)
