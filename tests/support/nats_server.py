"""A real ``nats-server -js`` (or a 3-node JetStream cluster) on 127.0.0.1 for tests, killed for real.

Free ports, a temporary store directory, bounded start-up waits. ``require_nats_server()`` skips the
calling test with a clear reason when the binary is absent (a developer machine without the Debian
package); CI installs it (.ci/run), so there the tests run.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ports import free_port as free_port  # re-exported: the broker tests import it from here

BINARY = "nats-server"


def require_nats_server() -> str:
    path = shutil.which(BINARY) or shutil.which(f"/usr/sbin/{BINARY}")
    if path is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server); CI installs it")
    return path


def _answers_info(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            return sock.recv(4).startswith(b"INFO")
    except OSError:
        return False


class NatsServer:
    """One ``nats-server -js`` process. ``start()`` / ``kill()`` (SIGKILL) / ``stop()``; restartable."""

    def __init__(
        self,
        store_dir: Path,
        *,
        name: str = "n1",
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        self.binary = require_nats_server()
        self.store_dir = store_dir
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra_args = extra_args or []
        self.log_path = store_dir.parent / f"nats-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store_dir)]
        argv += ["-n", self.name]
        if self.cluster_port is not None:
            argv += ["--cluster_name", "barp", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            argv += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        argv += self.extra_args
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log_path.read_text()[-2000:]}")
            if _answers_info(self.port):
                return self
            time.sleep(0.05)
        raise TimeoutError(f"nats-server did not listen: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class NatsCluster:
    """Three JetStream nodes routed to each other on loopback.

    Route ports must be known before any node starts, so they are picked free and bound later; when
    another process takes one in between, ``start`` builds the cluster again on fresh ports (bounded)."""

    START_ATTEMPTS = 3

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.size = size
        self.nodes = self._nodes(root)

    def _nodes(self, store_root: Path) -> list[NatsServer]:
        cluster_ports = [free_port() for _ in range(self.size)]
        return [
            NatsServer(
                store_root / f"store-{i}",
                name=f"n{i}",
                cluster_port=cluster_ports[i],
                routes=[p for j, p in enumerate(cluster_ports) if j != i],
            )
            for i in range(self.size)
        ]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> NatsCluster:
        attempt = 1
        while True:
            try:
                for node in self.nodes:
                    node.start()
                return self
            except RuntimeError as exc:
                self.stop()
                if "address already in use" not in str(exc) or attempt == self.START_ATTEMPTS:
                    raise
                attempt += 1
                self.nodes = self._nodes(self.root / f"attempt-{attempt}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
