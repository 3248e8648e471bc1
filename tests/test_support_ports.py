"""tests.support.ports.free_port: never the same port twice in one process, and free when handed out."""

from __future__ import annotations

import socket

from tests.support import ports


def test_free_ports_are_distinct_and_bindable() -> None:
    picked = [ports.free_port() for _ in range(200)]
    assert len(set(picked)) == len(picked)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", picked[-1]))


def test_a_port_the_kernel_hands_out_again_is_skipped(monkeypatch) -> None:
    """Simulate the kernel returning a port already handed out: free_port asks again."""
    first = ports.free_port()
    real_socket = socket.socket
    answers = iter([first, first])

    class Repeating(real_socket):
        def getsockname(self):
            name = super().getsockname()
            return (name[0], next(answers, name[1]))

    monkeypatch.setattr(ports.socket, "socket", Repeating)
    second = ports.free_port()
    assert second != first
