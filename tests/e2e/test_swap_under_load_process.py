"""A real sidecar process hot-swaps 5 versions from a checkpoint store during at least 2,000 Route calls at
32 in flight: zero failed calls, and every response names a version that was current during its call.
Traffic continues until the last swap has been served (bounded at 20,000 calls), so a slow machine that
finishes 2,000 calls before the sidecar polls the last version does not fail the test.

From outside the process "current" is checked by two observable facts: a version is never served before
it was published, and once any response carried version v, no call started later gets an older one.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.policy.checkpoint import CheckpointStore
from tests.e2e.learning_processes import SidecarProcess, free_port
from tests.support.sidecar import make_tiny_checkpoint


async def until(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


async def test_five_swaps_under_load_in_a_real_sidecar(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    make_tiny_checkpoint(store.path(1), version=1, seed=1)
    store.set_latest(1)
    port = free_port()
    (tmp_path / "sidecar.yaml").write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        "metrics:\n  enabled: false\nadmin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {store.root}\n  device: cpu\n"
        f"rewards:\n  spool_dir: {tmp_path / 'spool'}\n"
        f"trainer:\n  checkpoint_store_dir: {store.root}\n  checkpoint_poll_interval_s: 0.05\n"
    )
    sidecar = SidecarProcess(tmp_path / "sidecar.yaml", tmp_path / "sidecar.log")
    await asyncio.to_thread(sidecar.start)
    published_at = {1: 0.0}
    results: list[tuple[float, float, int | None]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            issued = 0
            publisher_done = asyncio.Event()

            async def worker() -> None:
                nonlocal issued
                while (issued < 2000 or not publisher_done.is_set()) and issued < 20000:
                    i = issued
                    issued += 1
                    start = time.monotonic()
                    try:
                        response = await stub.Route(router_pb2.RouteRequest(prompt=f"p {i % 61}"), timeout=30)
                        version: int | None = response.policy_version
                    except grpc.aio.AioRpcError:
                        version = None
                    results.append((start, time.monotonic(), version))

            async def publisher() -> None:
                for version in range(2, 7):
                    await until(lambda v=version: len(results) >= (v - 1) * 300)
                    await asyncio.to_thread(
                        make_tiny_checkpoint, store.path(version), version=version, seed=version
                    )
                    published_at[version] = time.monotonic()
                    await asyncio.to_thread(store.set_latest, version)
                    await until(lambda v=version: any(seen == v for _, _, seen in results[-64:]))
                publisher_done.set()

            await asyncio.wait_for(asyncio.gather(publisher(), *(worker() for _ in range(32))), timeout=180)
    finally:
        await asyncio.to_thread(sidecar.stop)
    assert 2000 <= len(results) <= 20000
    assert [r for r in results if r[2] is None] == []
    assert {v for _, _, v in results} == {1, 2, 3, 4, 5, 6}
    first_seen: dict[int, float] = {}
    for _, end, version in sorted(results, key=lambda r: r[1]):
        assert version is not None and published_at[version] <= end
        first_seen.setdefault(version, end)
    for start, _, version in results:
        newest_seen_before_start = max((v for v, t in first_seen.items() if t < start), default=1)
        assert version >= newest_seen_before_start, (start, version, newest_seen_before_start)
