"""docs/metrics.md's "Trainer" section lists exactly the ``barp_trainer_*`` families a trainer exports, with
type and labels, and the trainer also exports the sidecar's process, Python and build families (scraped
over HTTP from real trainers: the gRPC event path with config reloading, and NATS with failover, where
the single replica takes the lease over)."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.rewards.test_sidecar_learning import trainer_yaml
from tests.support.waiting import wait_until
from tests.test_metrics_doc import DOC, TRAINER_HEADING, documented_rows
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings

METRICS_ON = "metrics:\n  enabled: true\n  port: 0\n"
NATS_FAST = "  reconnect_initial_backoff_s: 0.05\n  reconnect_max_backoff_s: 0.3\n  connect_timeout_s: 1\n"
PROCESS_SECTION = "\n## Process, Python, build"


def trainer_config(tmp_path: Path, nats_url: str | None) -> Path:
    text = trainer_yaml(tmp_path / "data", every_events=150)
    text = text.replace("metrics:\n  enabled: false\n", METRICS_ON)
    assert METRICS_ON in text and "initial_policy: cold\n" in text
    if nats_url is not None:
        text += f"events:\n  backend: nats\n  nats_urls: [{nats_url}]\n{NATS_FAST}"
        text += "failover:\n  enabled: true\n  replica_id: a\n  lease_ttl_s: 2\n"
        text = text.replace("initial_policy: cold\n", "initial_policy: latest_or_cold\n")
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "trainer.yaml"
    config.write_text(text)
    return config


async def scrape(tmp_path: Path, nats_url: str | None) -> dict[str, tuple[str, set[str]]]:
    """Exposed name (``_total`` on counters) -> (type, labels) of a started trainer's /metrics."""
    config = trainer_config(tmp_path, nats_url)
    app = TrainerApp(load_trainer_settings(config, {}), env={}, config_path=config)
    await app.start()
    try:
        if nats_url is not None:
            await wait_until(lambda: app.takeover_s is not None, 30, "the replica took the lease over")
            await wait_until(lambda: app.ingestor is not None and app.ingestor.connected, 30, "consumer")
        url = f"http://127.0.0.1:{app.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    finally:
        await app.close()
    assert "_created" not in text
    families: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        families[name] = (family.type, {key for sample in family.samples for key in sample.labels})
    return families


async def test_every_trainer_metric_is_documented_with_type_and_labels(tmp_path, broker):
    text = DOC.read_text()
    trainer_documented = documented_rows(text.split(TRAINER_HEADING)[1])
    process_documented = documented_rows(text.split(PROCESS_SECTION)[1].split("\n## ")[0])
    grpc = await scrape(tmp_path / "grpc", None)
    nats = await scrape(tmp_path / "nats", broker.url)
    assert "barp_trainer_nats_state" not in grpc and "barp_trainer_lease_state" not in grpc
    assert nats["barp_trainer_nats_state"][1] == {"state"}
    exported = {**grpc, **nats}
    own = {name: value for name, value in exported.items() if name.startswith("barp_trainer_")}
    assert sorted(set(own) - set(trainer_documented)) == [], "exported but not in docs/metrics.md"
    assert sorted(set(trainer_documented) - set(own)) == [], "in docs/metrics.md but not exported"
    for name, (kind, labels) in own.items():
        doc_kind, doc_labels = trainer_documented[name]
        assert doc_kind == kind, name
        assert not labels or labels == doc_labels, (name, labels, doc_labels)  # no samples yet: no labels
    others = {name for name in exported if not name.startswith("barp_trainer_")}
    assert others == set(process_documented), "the trainer's process/Python/build families"
