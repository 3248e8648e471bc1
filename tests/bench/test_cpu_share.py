"""bench/cpu_share.py: per-thread scheduler counters and the machine's idle time, read and differenced."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cpu_share import Snapshot, ThreadTimes, cpu_share, machine_idle_seconds, read_threads, snapshot


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
    assert share.as_dict()["ran_cores"] == share.ran
    with pytest.raises(ValueError, match="wall_s must be positive"):
        cpu_share(before, after, wall_s=0.0)


BURN_0_3_S_THEN_SLEEP = """
import sys, time
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


def test_a_real_process_s_share_adds_up_to_the_cpu_it_burned() -> None:
    """Contention moves time between ``ran`` and ``waited``, never the CPU burned: 0.3 s of it here."""
    burner = subprocess.Popen(
        [sys.executable, "-c", BURN_0_3_S_THEN_SLEEP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert burner.stdin is not None and burner.stdout is not None
    try:
        before, started_s = snapshot(burner.pid), time.perf_counter()
        burner.stdin.write("go\n")
        burner.stdin.flush()
        assert burner.stdout.readline() == "done\n"
        wall_s = time.perf_counter() - started_s
        share = cpu_share(before, snapshot(burner.pid), wall_s)
        name = Path(f"/proc/{burner.pid}/comm").read_text().strip()
    finally:
        burner.stdin.close()
        burner.wait(30)
    assert share.ran * wall_s == pytest.approx(0.3, abs=0.05)
    assert 0 <= share.waited <= 1.0  # one thread cannot wait more than the wall time
    assert share.ran + share.waited <= 1.05
    assert share.threads[0].name == name  # the burning (main) thread
    assert 0 <= share.idle <= (os.cpu_count() or 1) + 0.05
