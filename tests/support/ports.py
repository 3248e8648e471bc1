"""Loopback ports for subprocess servers that must know their port before they start (a restart after
SIGKILL rebinds the same address, and a cluster's route list names its peers' ports up front).

Owns ``free_port``: the kernel's pick for a port-0 bind, released at once, and never a port this process
has handed out before. Picks made one after another could return the same port twice (released ports are
free again), and two servers given one port fail: one of them does not bind, while the other answers on
its port as if both were up (a NATS cluster test saw a two-node "cluster" refuse three-replica streams).
"""

from __future__ import annotations

import socket

MAX_TRIES = 100
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free at this moment that this process has not handed out before."""
    for _ in range(MAX_TRIES):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no new free loopback port in {MAX_TRIES} tries ({len(_handed_out)} handed out)")
