"""bench/cpu_share.py: per-thread scheduler counters and the machine's idle time, read and differenced (on a
real process: tests/bench/test_encoder_peer.py's server run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cpu_share import Snapshot, ThreadTimes, cpu_share, machine_idle_seconds, read_threads


def fake_proc(
    root: Path, threads: dict[int, tuple[str, int, int]], idle_ticks: int, iowait_ticks: int
) -> Path:
    """A /proc with process 42's threads (name, run ns, wait ns) and a /proc/stat first line."""
    for tid, (name, run_ns, wait_ns) in threads.items():
        task = root / "42" / "task" / str(tid)
        task.mkdir(parents=True)
        (task / "schedstat").write_text(f"{run_ns} {wait_ns} 17\n")
        (task / "comm").write_text(f"{name}\n")
    (root / "stat").write_text(
        f"cpu  100 0 50 {idle_ticks} {iowait_ticks} 0 3 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    )
    return root


def test_threads_and_idle_time_are_read_from_proc(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path, {42: ("python", 3_000_000_000, 500_000_000), 43: ("worker_0", 10, 0)}, 900, 100
    )
    threads = read_threads(42, proc)
    assert threads == {
        42: ThreadTimes("python", 3.0, 0.5),
        43: ThreadTimes("worker_0", 1e-8, 0.0),
    }
    assert machine_idle_seconds(proc) == pytest.approx(1000 / os.sysconf("SC_CLK_TCK"))


def test_a_share_is_per_wall_second_a_new_thread_counts_from_zero_and_the_busiest_come_first() -> None:
    before = Snapshot({1: ThreadTimes("main", 10.0, 1.0), 2: ThreadTimes("helper", 5.0, 0.0)}, 100.0)
    after = Snapshot(
        {
            1: ThreadTimes("main", 11.0, 1.5),  # ran 1 s, waited 0.5 s
            2: ThreadTimes("helper", 5.5, 1.0),  # ran 0.5 s, waited 1 s
            3: ThreadTimes("new", 1.8, 0.2),  # born during the run
        },
        101.0,
    )
    share = cpu_share(before, after, wall_s=2.0, top=2)
    assert share.ran == pytest.approx(1.65)
    assert share.waited == pytest.approx(0.85)
    assert share.idle == pytest.approx(0.5)
    assert [(t.name, t.ran, t.waited) for t in share.threads] == [
        ("new", pytest.approx(0.9), pytest.approx(0.1)),
        ("main", pytest.approx(0.5), pytest.approx(0.25)),
    ]
    assert [t.asleep for t in share.threads] == [pytest.approx(0.0), pytest.approx(0.25)]
    assert share.as_dict()["ran_cores"] == share.ran
    impossible = Snapshot({1: ThreadTimes("main", 10.5, 8.0), 2: ThreadTimes("helper", 5.0, 0.0)}, 100.0)
    capped = cpu_share(before, impossible, wall_s=2.0)  # main: 7 s of wait in a 2-s run
    assert (capped.threads[0].ran, capped.threads[0].waited) == (pytest.approx(0.25), pytest.approx(0.75))
    with pytest.raises(ValueError, match="wall_s must be positive"):
        cpu_share(before, after, wall_s=0.0)


def test_a_thread_that_barely_runs_but_sits_in_the_run_queue_is_not_counted_as_waiting() -> None:
    """A worker that yields in a loop (tokenizers' rayon pool) is runnable nearly all the time while it
    computes nothing: its "wait" is not a shortfall of the process."""
    before = Snapshot({1: ThreadTimes("main", 0.0, 0.0)}, 0.0)
    after = Snapshot(
        {1: ThreadTimes("main", 1.5, 0.25), 7: ThreadTimes("yielding", 0.02, 1.6)},  # over a 2-s run
        0.0,
    )
    share = cpu_share(before, after, wall_s=2.0)
    assert share.ran == pytest.approx(0.76)
    assert share.waited == pytest.approx(0.125)  # main only
    assert share.threads[1].name == "yielding" and share.threads[1].waited == pytest.approx(0.8)
