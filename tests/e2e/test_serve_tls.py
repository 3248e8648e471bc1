"""``barp-sidecar serve`` as a real process with TLS / mTLS settings: health and Route over TLS, the
plaintext health-only port for Kubernetes probes, a client without a certificate refused, clean SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from tests.support.sidecar import ARMS, make_tiny_checkpoint
from tests.tls_certs import Pki, make_pki

REPOSITORY = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 10.0


class ServeProcess:
    """A ``barp-sidecar serve`` subprocess whose JSON log lines are read on a thread."""

    def __init__(self, config: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BARP__")}
        env["PYTHONPATH"] = str(REPOSITORY)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(config)],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                continue

    def wait_for(self, event: str, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                item = self.events.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    stderr = self.process.stderr.read() if self.process.stderr else ""
                    raise AssertionError(f"serve exited with {self.process.returncode}: {stderr}") from None
                continue
            if item.get("event") == event:
                return item
        raise AssertionError(f"no {event!r} event within {timeout_s} s")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT_S)


def write_config(tmp_path: Path, pki: Pki, *, mutual: bool) -> Path:
    server: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "health_port": 0,
        "health_host": "127.0.0.1",
        "grace_s": 2.0,
        "tls_cert_file": str(pki.server_cert),
        "tls_key_file": str(pki.server_key),
    }
    if mutual:
        server["tls_client_ca_file"] = str(pki.ca_cert)
    config = {
        "server": server,
        "metrics": {"port": 0},
        "admin": {"enabled": False},
        "policy": {"checkpoint_dir": str(make_tiny_checkpoint(tmp_path / "policy")), "device": "cpu"},
        "rewards": {"spool_dir": str(tmp_path / "spool")},
    }
    path = tmp_path / "barp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@contextlib.contextmanager
def serving(config: Path) -> Iterator[tuple[ServeProcess, dict[str, Any]]]:
    """Start serve, wait for ``server_started``, yield (process, that event); kill it if still running."""
    process = ServeProcess(config)
    try:
        started = process.wait_for("server_started", START_TIMEOUT_S)
        yield process, started
    finally:
        process.kill()


def check_health(target: str, credentials: grpc.ChannelCredentials | None) -> int:
    channel = (
        grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
    )
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT_S
        )
        return int(response.status)


def stop_with_sigterm(process: ServeProcess) -> None:
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(timeout=STOP_TIMEOUT_S) == 0
    process.wait_for("server_stopped", 5.0)


def test_serve_with_mtls_answers_health_and_route_and_refuses_clients_without_a_cert(
    tmp_path: Path, pki: Pki
) -> None:
    with serving(write_config(tmp_path, pki, mutual=True)) as (process, started):
        assert started["tls"] is True and started["mtls"] is True
        target = f"localhost:{started['port']}"
        client = grpc.ssl_channel_credentials(
            root_certificates=pki.ca_cert.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
        assert check_health(target, client) == health_pb2.HealthCheckResponse.SERVING
        with grpc.secure_channel(target, client) as channel:
            decision = router_pb2_grpc.RouterStub(channel).Route(
                router_pb2.RouteRequest(prompt="What is 2 + 2?"), timeout=CALL_TIMEOUT_S
            )
        assert decision.model in ARMS
        # TLS without a client certificate: the handshake is refused.
        no_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
        with pytest.raises(grpc.RpcError) as caught:
            check_health(target, no_cert)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext on the TLS port: refused too.
        with pytest.raises(grpc.RpcError) as caught:
            check_health(f"127.0.0.1:{started['port']}", None)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # The kubelet's view: plaintext health on the health-only port.
        health_target = f"127.0.0.1:{started['health_port']}"
        assert check_health(health_target, None) == health_pb2.HealthCheckResponse.SERVING
        stop_with_sigterm(process)


def test_serve_with_tls_answers_health_over_tls(tmp_path: Path, pki: Pki) -> None:
    with serving(write_config(tmp_path, pki, mutual=False)) as (process, started):
        assert started["tls"] is True and started["mtls"] is False
        server_only = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
        target = f"localhost:{started['port']}"
        assert check_health(target, server_only) == health_pb2.HealthCheckResponse.SERVING
        stop_with_sigterm(process)


def test_serve_with_a_bad_certificate_exits_2_naming_the_key(tmp_path: Path, pki: Pki) -> None:
    config = write_config(tmp_path, pki, mutual=True)
    data = yaml.safe_load(config.read_text())
    data["server"]["tls_key_file"] = str(make_pki(tmp_path / "other", prefix="other-").server_key)
    config.write_text(yaml.safe_dump(data))
    result = subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(config)],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "server.tls_key_file" in result.stderr and "does not match" in result.stderr
