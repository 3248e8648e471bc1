"""bench/nats_transport.py refuses bad arguments with exit 2 and a message naming the option, before it
starts any process."""

from __future__ import annotations

import pytest

from bench.nats_transport import main
from tests.bench.bench_runner import argument_error


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rounds", "0"], "--rounds must be >= 1"),
        (["--sidecars", "0"], "--sidecars, --events and --rounds must be >= 1"),
        (["--events-per-message", "1,x"], "--events-per-message must be comma-separated integers"),
        (["--events-per-message", "0,64"], "--events-per-message values must be in [1, 4096]"),
        (["--events-per-message", "5000"], "--events-per-message values must be in [1, 4096]"),
    ],
)
def test_bad_arguments_exit_2_naming_the_option(argv, message, capsys):
    assert message in argument_error(main, argv, capsys)
