"""Trainer settings: defaults, YAML + BARP_TRAINER__ overrides, ConfigError naming the key, CLI exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from barp_sidecar.errors import ConfigError
from barp_sidecar.gen.barp.v1 import trainer_pb2
from tests.learning_helpers import ARMS, DIM
from trainer.service.settings import load_trainer_settings
from trainer.service.validation import event_problem


def test_defaults_are_valid_and_env_overrides_yaml(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text("server:\n  port: 7000\npublish:\n  every_events: 10\n")
    settings = load_trainer_settings(config, {"BARP_TRAINER__PUBLISH__EVERY_EVENTS": "20"})
    assert settings.server.port == 7000 and settings.publish.every_events == 20
    assert settings.learner.initial_policy == "latest_or_builtin"
    assert settings.events_dir == settings.checkpoints_dir.parent / "events"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"BARP_TRAINER__SERVER__PORT": "70000"}, "server.port"),
        ({"BARP_TRAINER__PUBLISH__GATE_MARGIN": "-1"}, "publish.gate_margin"),
        ({"BARP_TRAINER__LEARNER__INITIAL_POLICY": "cold"}, "learner.arms"),
        ({"BARP_TRAINER__LEARNER__INITIAL_POLICY": "warm"}, "learner.initial_policy"),
        ({"BARP_TRAINER__SERVER__TLS_CERT_FILE": "c.pem"}, "server.tls_key_file"),
        ({"BARP_TRAINER__LEARNER__BATCH_SIZE": "many"}, "learner.batch_size"),
        ({"BARP_TRAINER__NOPE__X": "1"}, "nope"),
        ({"BARP_TRAINER__PORT": "1"}, "BARP_TRAINER__PORT"),
        ({"BARP_TRAINER__FAILOVER__ENABLED": "true"}, "failover.enabled"),  # needs events.backend nats
        ({"BARP_TRAINER__FAILOVER__REPLICA_ID": "pod.1"}, "failover.replica_id"),
        (
            {
                "BARP_TRAINER__EVENTS__BACKEND": "nats",
                "BARP_TRAINER__FAILOVER__ENABLED": "true",
                "BARP_TRAINER__LEARNER__INITIAL_POLICY": "builtin",
            },
            "learner.initial_policy",
        ),
        ({"BARP_TRAINER__FAILOVER__LEASE_TTL_S": "0.5"}, "failover.lease_ttl_s"),
        ({"BARP_TRAINER__FAILOVER__LEASE_BUCKET": "a b"}, "failover.lease_bucket"),
        ({"BARP_TRAINER__FAILOVER__RESUME_WAIT_S": "0"}, "failover.resume_wait_s"),
        ({"BARP_TRAINER__LEARNER__EXPLORATION_REGIONS": "-1"}, "learner.exploration_regions"),
        ({"BARP_TRAINER__LEARNER__EXPLORATION_BONUS": "-0.1"}, "learner.exploration_bonus"),
        ({"BARP_TRAINER__LEARNER__REGION_WARMUP_EVENTS": "0"}, "learner.region_warmup_events"),
    ],
)
def test_bad_settings_name_the_key(env, key):
    with pytest.raises(ConfigError) as info:
        load_trainer_settings(None, env)
    assert info.value.key == key


def test_failover_with_the_nats_backend_is_valid():
    env = {"BARP_TRAINER__EVENTS__BACKEND": "nats", "BARP_TRAINER__FAILOVER__ENABLED": "true"}
    settings = load_trainer_settings(None, env)
    assert settings.failover.enabled and settings.failover.lease_ttl_s == 6.0


def test_cold_start_arms_from_yaml_list_or_env_csv(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text("learner:\n  initial_policy: cold\n  arms: [a, b]\n  tau_usd: 0.01\n")
    assert load_trainer_settings(config, {}).learner.arms == ("a", "b")
    env = {"BARP_TRAINER__LEARNER__ARMS": "x, y ,z"}
    assert load_trainer_settings(config, env).learner.arms == ("x", "y", "z")


def test_cli_exits_2_naming_the_bad_setting():
    result = subprocess.run(
        [sys.executable, "-m", "trainer.service.main", "--port", "99999"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--port" in result.stderr


def _event(**fields) -> trainer_pb2.RewardEvent:
    base = dict(
        event_id="e", embedding=[0.1] * DIM, quality_weight=0.5, model=ARMS[0], propensity=0.5, quality=1
    )
    return trainer_pb2.RewardEvent(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"event_id": ""}, "event_id"),
        ({"embedding": [0.1] * (DIM - 1)}, "embedding"),
        ({"embedding": [float("nan")] * DIM}, "embedding"),
        ({"embedding": [0.1] * (DIM - 1) + [float("nan")]}, "embedding"),
        ({"embedding": [float("-inf")] + [0.1] * (DIM - 1)}, "embedding"),
        ({"quality_weight": 1.5}, "quality_weight"),
        ({"model": "unknown"}, "model"),
        ({"allowed": [True]}, "allowed"),
        ({"allowed": [False, True, True]}, "allowed"),
        ({"propensity": 0.0}, "propensity"),
        ({"propensity": 1.0001}, "propensity"),
        ({"quality": float("nan")}, "quality"),
        ({"cost_usd": -1.0}, "cost_usd"),
    ],
)
def test_event_validation_names_the_field(fields, field):
    problem = event_problem(_event(**fields), ARMS, DIM)
    assert problem is not None and problem.startswith(f"{field}:")
    assert event_problem(_event(), ARMS, DIM) is None
