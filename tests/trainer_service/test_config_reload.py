"""The running trainer re-reads its config file (a ConfigMap update rewrites it) and changes the model pool
without a restart; a file that no longer validates, or a pool it cannot serve, changes nothing."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from barp_sidecar.errors import ConfigError
from tests.learning_helpers import ARMS, trainer_settings_yaml
from tests.support.waiting import wait_until
from trainer.service.app import TrainerApp
from trainer.service.config_reload import ConfigReloader
from trainer.service.metrics import TrainerCollector
from trainer.service.settings import load_trainer_settings


def with_arms(text: str, arms: list[str]) -> str:
    return text.replace(f"  arms: [{', '.join(ARMS)}]\n", f"  arms: [{', '.join(arms)}]\n")


@pytest.fixture
async def trainer(tmp_path):
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=64, every_s=600))
    app = TrainerApp(load_trainer_settings(config, {}), env={}, config_path=config)
    assert app.reloader is not None
    app.reloader.poll_interval_s = 0.05
    await app.start()
    try:
        yield app, config
    finally:
        await app.close()


def latest_manifest(app: TrainerApp) -> dict:
    version = app.store.latest_version()
    assert version is not None
    return json.loads((app.store.path(version) / "manifest.json").read_text())


async def test_an_edited_pool_is_published_without_a_restart(trainer):
    app, config = trainer
    assert app.loop is not None
    first = app.loop.current_version
    config.write_text(with_arms(config.read_text(), [*ARMS, "fresh"]))
    # The loop's version moves in its worker thread before the announcement is awaited on the event loop, so
    # wait for the announcement (what sidecars see), then check the stored manifest behind it.
    await wait_until(
        lambda: app.announcer.current is not None and app.announcer.current.models == (*ARMS, "fresh"),
        10,
        "an announced version with the new model",
    )
    assert app.loop.current_version > first
    manifest = latest_manifest(app)
    assert manifest["arms"] == [*ARMS, "fresh"]
    assert manifest["architecture"]["exploration_share"][-1] == pytest.approx(0.3)
    assert app.reloader is not None and app.reloader.reloads == 1
    registry = CollectorRegistry()
    registry.register(TrainerCollector(app))
    exposed = generate_latest(registry).decode()
    assert 'barp_trainer_config_reloads_total{result="applied"} 1.0' in exposed
    assert "barp_trainer_model_pool_changes_total 1.0" in exposed
    assert "barp_trainer_models 4.0" in exposed


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda text: with_arms(text, []), "removes every model"),
        (lambda text: with_arms(text, ["mid"]), "at least two models"),
        (lambda text: with_arms(text, ["other-a", "other-b"]), "removes every model of the serving pool"),
        (lambda text: text.replace("batch_size: 16", "batch_size: -1"), "learner.batch_size"),
        (lambda text: text + "  - not: [yaml\n", "yaml"),
    ],
)
async def test_a_bad_edit_is_logged_and_the_pool_stays(trainer, edit, message, capsys):
    app, config = trainer
    assert app.loop is not None and app.reloader is not None
    version, arms = app.loop.current_version, app.loop.models
    config.write_text(edit(config.read_text()))
    await wait_until(lambda: app.reloader.failures == 1, 10, "the refused reload")
    assert (app.loop.current_version, app.loop.models) == (version, arms)
    out = capsys.readouterr().out
    assert "config_reload_failed" in out and message.lower() in out.lower()


async def test_the_reloader_sees_a_configmap_style_symlink_swap(tmp_path):
    """Kubernetes mounts a ConfigMap key as a symlink into a directory it swaps atomically."""
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    data = tmp_path / "data"
    body = trainer_settings_yaml(data, every_events=64)
    (tmp_path / "v1" / "trainer.yaml").write_text(body)
    (tmp_path / "v2" / "trainer.yaml").write_text(with_arms(body, [*ARMS, "fresh"]))
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "v1")
    seen: list[tuple[str, ...]] = []
    reloader = ConfigReloader(
        link / "trainer.yaml", {}, lambda _old, new: seen.append(new.learner.arms), poll_interval_s=0.05
    )
    await reloader.start()
    try:
        swap = tmp_path / "swap"
        swap.symlink_to(tmp_path / "v2")
        swap.replace(link)  # atomic rename over the old link, as the kubelet does
        await wait_until(lambda: bool(seen), 10, "the reload")
    finally:
        await reloader.close()
    assert seen == [(*ARMS, "fresh")]


async def test_a_restart_with_a_pool_it_cannot_serve_stops_naming_the_key(tmp_path):
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=64))
    first = TrainerApp(load_trainer_settings(config, {}), env={})
    await first.start()
    await first.close()
    config.write_text(with_arms(config.read_text(), ["other-a", "other-b"]))
    again = TrainerApp(load_trainer_settings(config, {}), env={}, config_path=config)
    with pytest.raises(ConfigError) as caught:
        await again.start()
    await again.close()
    assert caught.value.key == "learner.arms" and "removes every model of the serving pool" in str(
        caught.value
    )
    assert json.loads((again.store.path(again.store.latest_version()) / "manifest.json").read_text())[
        "arms"
    ] == list(ARMS)  # the stored policy is untouched
