"""The chart's rendered configuration runs: a trainer and a standalone router started as real processes
from the ConfigMaps and container environment ``helm template`` produces (standalone mode, mTLS on both
links), with only what a cluster would provide substituted: the container paths are remapped into a
temporary directory holding certificates made here, every port is 0, the trainer's Service name is
localhost, and a tiny hash-encoder policy stands in for the shipped one (same store layout).

Proves the whole wiring (settings keys, env overrides, TLS file names, mounted paths, health-only ports)
rather than each piece: the router answers health over mTLS and on its plaintext probe port, and its
trainer client connects over mTLS (policy watch and reward publishing).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helm.chart_render import CHART, Helm, find_helm
from tests.support.sidecar import make_tiny_checkpoint
from tests.tls_certs import Pki, make_pki

REPOSITORY = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0
CALL_TIMEOUT_S = 10.0
CONTAINER_ROOTS = ("/etc/barp-trainer", "/var/lib/barp-trainer", "/etc/barp", "/var/lib/barp")


class Process:
    """A subprocess whose JSON log lines (stdout and stderr) are collected on threads."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            command,
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.lines: list[str] = []
        for stream in (self.popen.stdout, self.popen.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line)
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    def wait_for(self, event: str) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                item = self.events.get(timeout=0.2)
            except queue.Empty:
                if self.popen.poll() is not None:
                    raise AssertionError(
                        f"exited {self.popen.returncode}: {''.join(self.lines)[-3000:]}"
                    ) from None
                continue
            if item.get("event") == event:
                return item
        raise AssertionError(f"no {event!r} within {START_TIMEOUT_S} s: {''.join(self.lines)[-3000:]}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)


@contextmanager
def running(command: list[str], env: dict[str, str]) -> Iterator[Process]:
    process = Process(command, env)
    try:
        yield process
    finally:
        process.kill()


def remap(value: Any, root: Path) -> Any:
    """Container paths -> paths under ``root`` (recursively through the parsed YAML)."""
    if isinstance(value, dict):
        return {k: remap(v, root) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(CONTAINER_ROOTS):
        return str(root / value.lstrip("/"))
    return value


def install_tls(layout_root: Path, pki: Pki) -> None:
    """Put the Secrets' files where the chart mounts them (same file names as the Secret items)."""
    files = {
        "etc/barp/tls/server/tls.crt": pki.server_cert,
        "etc/barp/tls/server/tls.key": pki.server_key,
        "etc/barp/tls/client-ca/ca.crt": pki.ca_cert,
        "etc/barp/tls/trainer-ca/ca.crt": pki.ca_cert,
        "etc/barp/tls/trainer-client/tls.crt": pki.client_cert,
        "etc/barp/tls/trainer-client/tls.key": pki.client_key,
    }
    for relative, source in files.items():
        target = layout_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())


def health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S
        )
    return int(response.status)


@pytest.fixture(scope="module")
def helm() -> Helm:
    binary = find_helm()
    if binary is None:
        pytest.skip("no helm binary: run `bash .ci/install-helm.sh` (puts the pinned helm in .tools/bin)")
    return Helm(binary)


def test_standalone_chart_configs_run_with_mtls_end_to_end(helm: Helm, tmp_path: Path) -> None:
    rendered = helm.template([CHART / "ci" / "standalone-values.yaml"])
    trainer_layout = tmp_path / "trainer-pod"
    router_layout = tmp_path / "router-pod"
    pki = make_pki(tmp_path / "pki")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("BARP__", "BARP_TRAINER__"))}
    base_env["PYTHONPATH"] = str(REPOSITORY)

    # The trainer pod: its ConfigMap, its TLS Secrets, a PVC that already holds policy v1.
    trainer_data = yaml.safe_load(rendered.one("ConfigMap", "-trainer-config")["data"]["trainer.yaml"])
    trainer_config = remap(trainer_data, trainer_layout)
    install_tls(trainer_layout, pki)
    store = Path(trainer_config["storage"]["data_dir"]) / "checkpoints"
    make_tiny_checkpoint(store / "v1", version=1)
    (store / "LATEST").write_text("v1\n")
    trainer_file = trainer_layout / "etc/barp-trainer/trainer.yaml"
    trainer_file.parent.mkdir(parents=True, exist_ok=True)
    trainer_file.write_text(yaml.safe_dump(trainer_config))
    trainer_container = rendered.one("Deployment", "-trainer")["spec"]["template"]["spec"]["containers"][0]
    trainer_command = [str(remap(part, trainer_layout)) for part in trainer_container["command"]]
    assert trainer_command[:2] == ["barp-trainer", "serve"]
    trainer_env = {
        **base_env,
        "BARP_TRAINER__SERVER__HOST": "127.0.0.1",
        "BARP_TRAINER__SERVER__PORT": "0",
        "BARP_TRAINER__SERVER__HEALTH_PORT": "0",
        "BARP_TRAINER__METRICS__PORT": "0",
    }

    # The router pod: the shared ConfigMap, the container's own env, its TLS Secrets.
    router_data = yaml.safe_load(rendered.one("ConfigMap", "barp-sidecar-config")["data"]["barp.yaml"])
    router_config = remap(router_data, router_layout)
    install_tls(router_layout, pki)
    router_config["policy"] = {**router_config.get("policy", {}), "checkpoint_dir": str(store / "v1")}
    router_file = router_layout / "etc/barp/barp.yaml"
    router_file.write_text(yaml.safe_dump(router_config))
    router_container = rendered.one("Deployment", "-router")["spec"]["template"]["spec"]["containers"][0]
    router_command = [str(remap(part, router_layout)) for part in router_container["command"]]
    assert router_command[:2] == ["barp-sidecar", "serve"]
    container_env = {
        e["name"]: remap(e["value"], router_layout) for e in router_container["env"] if "value" in e
    }
    assert container_env["BARP__SERVER__TLS_CLIENT_CA_FILE"].startswith(str(router_layout))

    with running([sys.executable, "-m", "trainer.cli", *trainer_command[1:]], trainer_env) as trainer:
        trainer_started = trainer.wait_for("trainer_started")
        assert trainer_started["tls"] is True and trainer_started["mtls"] is True
        router_env = {
            **base_env,
            **container_env,
            "BARP__SERVER__HOST": "127.0.0.1",
            "BARP__SERVER__PORT": "0",
            "BARP__SERVER__HEALTH_PORT": "0",
            "BARP__SERVER__HEALTH_HOST": "127.0.0.1",
            "BARP__METRICS__PORT": "0",
            "BARP__ADMIN__PORT": "0",
            "BARP__ADMIN__HOST": "127.0.0.1",
            # The trainer's Service name, as a cluster's DNS would resolve it.
            "BARP__TRAINER__TARGET": f"localhost:{trainer_started['port']}",
        }
        with running([sys.executable, "-m", "barp_sidecar.cli", *router_command[1:]], router_env) as router:
            started = router.wait_for("server_started")
            assert started["tls"] is True and started["mtls"] is True
            client = grpc.ssl_channel_credentials(
                root_certificates=pki.ca_cert.read_bytes(),
                private_key=pki.client_key.read_bytes(),
                certificate_chain=pki.client_cert.read_bytes(),
            )
            assert health(f"localhost:{started['port']}", client) == health_pb2.HealthCheckResponse.SERVING
            assert (
                health(f"127.0.0.1:{started['health_port']}", None) == health_pb2.HealthCheckResponse.SERVING
            )
            assert (
                health(f"127.0.0.1:{trainer_started['health_port']}", None)
                == health_pb2.HealthCheckResponse.SERVING
            )
            # The router's trainer client got through the trainer's mTLS with the chart's client cert.
            assert router.wait_for("policy_watch_connected")["version"] == 1
