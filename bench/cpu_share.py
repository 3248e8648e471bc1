"""What the scheduler gave a process over a run: per thread, time on a core and time runnable but waiting
for one, and how much of the machine sat idle meanwhile (Linux: /proc/PID/task/*/schedstat, /proc/stat).

A server's "cores" (its CPU seconds over wall seconds) mix two things on a shared machine: how much CPU its
threads asked for and how much they got. ``waited`` separates them: a thread that is runnable but has no
core accumulates run-queue wait, so ``ran + waited`` per working thread is its demand and ``waited`` its
shortfall (a thread that yields in a loop is runnable too, hence ``MIN_WORKING_SHARE``).
If a server waited while the machine had idle cores, the shortfall is the scheduler's placement, not
contention; if the machine had no idle core, other work took the CPU.

Owns reading and differencing these counters. Knows nothing about servers, load or tables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NS_PER_S = 1e9
# A process's ``waited`` sums the threads that ran at least this share of a core. Threads that run next to
# nothing but sit in the run queue are yielding, not computing: the tokenizers library's worker pool
# (rayon) showed 0.01 cores ran and 0.7-0.8 cores "waited" per thread beside the encoder's forward passes.
MIN_WORKING_SHARE = 0.02
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal (guest time is inside user).
_IDLE_FIELDS = (3, 4)
_TIME_FIELDS = 8


@dataclass(frozen=True)
class ThreadTimes:
    """One thread's cumulative scheduler counters."""

    name: str
    run_s: float  # on a core
    wait_s: float  # runnable, waiting in a run queue


@dataclass(frozen=True)
class Snapshot:
    """A process's threads (by thread id) and the machine's idle CPU seconds, read together."""

    threads: dict[int, ThreadTimes]
    machine_idle_s: float


@dataclass(frozen=True)
class ThreadShare:
    """One thread over a run, in cores (seconds per wall second)."""

    name: str
    ran: float
    waited: float

    @property
    def asleep(self) -> float:
        """The share of the run it was not runnable (blocked, or parked at a barrier of a parallel region).
        A thread born during the run counts as asleep before it existed."""
        return max(0.0, 1.0 - self.ran - self.waited)


@dataclass(frozen=True)
class CpuShare:
    """A process over a run, in cores: what its threads ran and waited (summed), the machine's idle
    cores meanwhile, and its busiest threads (most ``ran`` first)."""

    ran: float
    waited: float
    idle: float
    threads: tuple[ThreadShare, ...]

    def as_dict(self) -> dict[str, object]:
        """The JSON form: ``ran_cores``, ``waited_cores``, ``idle_cores`` and ``threads``."""
        return {
            "ran_cores": self.ran,
            "waited_cores": self.waited,
            "idle_cores": self.idle,
            "threads": [
                {"name": t.name, "ran": t.ran, "waited": t.waited, "asleep": t.asleep} for t in self.threads
            ],
        }


def read_threads(pid: int, proc: Path = Path("/proc")) -> dict[int, ThreadTimes]:
    """Every live thread of ``pid``; a thread that exits while it is read is left out."""
    threads: dict[int, ThreadTimes] = {}
    task_dir = proc / str(pid) / "task"
    for entry in task_dir.iterdir():
        try:
            run_ns, wait_ns, _slices = (entry / "schedstat").read_text().split()
            name = (entry / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        threads[int(entry.name)] = ThreadTimes(name, int(run_ns) / NS_PER_S, int(wait_ns) / NS_PER_S)
    return threads


def machine_idle_seconds(proc: Path = Path("/proc")) -> float:
    """Idle + iowait CPU seconds of all CPUs together since boot."""
    fields = (proc / "stat").read_text().splitlines()[0].split()[1:]
    if len(fields) < _TIME_FIELDS:
        raise ValueError(f"{proc / 'stat'}: unexpected first line")
    return sum(int(fields[i]) for i in _IDLE_FIELDS) / os.sysconf("SC_CLK_TCK")


def snapshot(pid: int, proc: Path = Path("/proc")) -> Snapshot:
    return Snapshot(read_threads(pid, proc), machine_idle_seconds(proc))


def cpu_share(before: Snapshot, after: Snapshot, wall_s: float, top: int = 4) -> CpuShare:
    """The process's share between two snapshots ``wall_s`` apart. A thread born in between counts from 0;
    one that exited in between is lost (its time is not in ``after``)."""
    if wall_s <= 0:
        raise ValueError(f"wall_s must be positive, not {wall_s}")
    shares = []
    for tid, now in after.threads.items():
        then = before.threads.get(tid, ThreadTimes(now.name, 0.0, 0.0))
        ran = (now.run_s - then.run_s) / wall_s
        # A thread cannot be runnable for longer than the run. Once (1 of ~60 runs) a thread of the sidecar
        # showed 3.5 wall-seconds of run-queue wait per wall second (a bad counter on this VM's kernel);
        # capping it keeps one such reading from swamping the process's sum.
        waited = min((now.wait_s - then.wait_s) / wall_s, max(0.0, 1.0 - ran))
        shares.append(ThreadShare(now.name, ran, waited))
    shares.sort(key=lambda share: share.ran, reverse=True)
    return CpuShare(
        ran=sum(s.ran for s in shares),
        waited=sum(s.waited for s in shares if s.ran >= MIN_WORKING_SHARE),
        idle=(after.machine_idle_s - before.machine_idle_s) / wall_s,
        threads=tuple(shares[:top]),
    )
