"""Hot swap from the trainer: WatchPolicy + FetchPolicy into a local dir, validation, rejection, pinning.

A real TrainerServicer (real CheckpointStore + announcer) runs in-process on 127.0.0.1:0; the sidecar side
is the real PolicyManager + TrainerPolicyWatcher + AdminServer, over a fake registry.
"""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest
from structlog.testing import capture_logs

from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc, trainer_pb2_grpc
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import CheckpointStore, load_checkpoint, read_manifest
from barp_sidecar.policy.manager import PolicyManager
from barp_sidecar.policy.version import PolicyVersion
from barp_sidecar.policy.watcher import TrainerCheckpointFetcher, TrainerPolicyWatcher
from barp_sidecar.rpc.admin import AdminServer
from barp_sidecar.rpc.boundary import ErrorBoundary
from barp_sidecar.settings import AdminSettings
from tests.learning_helpers import ARMS, DIM, FakeRegistry, publish_tiny, save_tiny_checkpoint
from tests.policy.test_nonfinite_guard import huge
from trainer.service.policy_source import PolicyAnnouncer, announcement_for
from trainer.service.servicer import TrainerServicer


class Upstream:
    """A real trainer gRPC server over a store we control."""

    def __init__(self, root) -> None:
        self.store = CheckpointStore(root)
        self.announcer = PolicyAnnouncer()
        self.server = grpc.aio.server(interceptors=[ErrorBoundary()])
        servicer = TrainerServicer(None, self.store, self.announcer, ARMS, DIM, chunk_bytes=1024)  # type: ignore[arg-type]
        trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def publish(self, version: int, seed: int, models=ARMS) -> PolicyVersion:
        publish_tiny(self.store, version, seed, models)
        manifest = load_checkpoint(self.store.path(version)).manifest
        announcement = announcement_for(self.store, manifest)
        await self.announcer.publish(announcement)
        return announcement


@pytest.fixture
async def setup(tmp_path):
    upstream = Upstream(tmp_path / "trainer-store")
    await upstream.server.start()
    initial = load_checkpoint(save_tiny_checkpoint(tmp_path / "initial", version=1, seed=100))
    registry = FakeRegistry(initial)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{upstream.port}")
    manager = PolicyManager(
        registry, "builtin", TrainerCheckpointFetcher(lambda: channel, tmp_path / "downloads")
    )
    watcher = TrainerPolicyWatcher(manager, channel, "sc-1", 0.05, 0.2, seed=0)
    await watcher.start()
    yield upstream, registry, manager, watcher
    await watcher.close()
    await channel.close()
    await upstream.announcer.close()
    await upstream.server.stop(0)


async def wait_for(predicate, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_announced_versions_are_fetched_verified_and_swapped(setup, tmp_path):
    upstream, registry, manager, _ = setup
    await upstream.publish(2, seed=2)
    await wait_for(lambda: registry.current().version == 2)
    await upstream.publish(3, seed=3)
    await wait_for(lambda: registry.current().version == 3)
    assert registry.swapped_to == [2, 3]
    assert registry.checked == [2, 3]  # every install is checked against the serving encoder first
    assert (tmp_path / "downloads" / "v3" / "policy.safetensors").is_file()
    assert manager.current().source == "trainer"


@pytest.mark.parametrize(
    "fault",
    [
        "wrong_sha",
        "corrupt_weights",
        "corrupt_manifest",
        "other_arms",
        "corrupt_calibration",
        "overflows_on_calibration",
    ],
)
async def test_bad_checkpoints_are_rejected_and_the_previous_version_keeps_serving(setup, fault):
    upstream, registry, manager, _ = setup
    good = await upstream.publish(2, seed=2)
    await wait_for(lambda: registry.current().version == 2)
    with capture_logs() as logs:
        if fault == "other_arms":
            await upstream.publish(3, seed=3, models=("a", "b", "c"))
        else:
            publish_tiny(upstream.store, 3, seed=3)
            path = upstream.store.path(3)
            sha = load_checkpoint(path).manifest.weights_sha256
            if fault == "wrong_sha":
                sha = "0" * 64
            elif fault in ("corrupt_weights", "corrupt_calibration"):
                name = "policy.safetensors" if fault == "corrupt_weights" else CALIBRATION_FILE
                data = bytearray((path / name).read_bytes())
                data[-5] ^= 0xFF
                (path / name).write_bytes(bytes(data))
            elif fault == "overflows_on_calibration":
                # Finite but huge weights (±1e38): the stored prompt embeddings overflow them.
                shutil.rmtree(path)
                sound = load_checkpoint(save_tiny_checkpoint(path.parent / "sound", version=3, seed=3))
                bad = huge(sound, 3)
                upstream.store.publish(bad.network, bad.manifest, sound.calibration)
                sha = read_manifest(path).weights_sha256
            else:
                (path / "manifest.json").write_text("{not json")
            await upstream.announcer.publish(PolicyVersion(3, sha, ARMS, size_bytes=1))
        await wait_for(lambda: sum(manager.rejected_total.values()) == 1)
    assert registry.current().version == 2
    assert registry.current().manifest.weights_sha256 == good.weights_sha256
    rejected = [e for e in logs if e["event"] == "policy_rejected"]
    assert rejected and rejected[0]["version"] == 3 and rejected[0]["serving"] == 2
    expected = {
        "wrong_sha": "sha256_mismatch",
        "corrupt_weights": "sha256_mismatch",
        "corrupt_manifest": "corrupt_manifest",
        "other_arms": "arm_mismatch",
        "corrupt_calibration": "sha256_mismatch",
        "overflows_on_calibration": "non_finite",
    }[fault]
    assert manager.rejected_total[expected] == 1
    if fault.endswith("calibration"):
        assert CALIBRATION_FILE in rejected[0]["error"]


async def test_a_version_whose_fetch_failed_is_installed_later_without_a_new_announcement(setup):
    """The stream announces v2 once; its first download fails (the weights file is not readable yet), so
    the watcher retries after the manager's backoff and serves v2 although nothing is announced again."""
    upstream, registry, manager, watcher = setup
    publish_tiny(upstream.store, 2, seed=2)
    announcement = announcement_for(upstream.store, load_checkpoint(upstream.store.path(2)).manifest)
    weights = upstream.store.path(2) / "policy.safetensors"
    hidden = weights.with_name("policy.safetensors.hidden")
    weights.rename(hidden)
    with capture_logs() as logs:
        await upstream.announcer.publish(announcement)
        await wait_for(lambda: manager.rejected_total["fetch_failed"] == 1)
        assert registry.current().version == 1
        hidden.rename(weights)
        await wait_for(lambda: registry.current().version == 2)
    assert registry.swapped_to == [2]
    assert watcher.reconnects == 0  # the same stream: no announcement was repeated
    rejected = [e for e in logs if e["event"] == "policy_rejected"]
    assert rejected[0]["reason"] == "fetch_failed" and rejected[0]["retry_in_s"] is not None


async def test_admin_pin_survives_announcements_until_unpinned(setup):
    upstream, registry, manager, _ = setup
    await upstream.publish(2, seed=2)
    await wait_for(lambda: registry.current().version == 2)
    admin = AdminServer(AdminSettings(host="127.0.0.1", port=0), manager, env={})
    port = await admin.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            pinned = await stub.PinPolicy(
                admin_pb2.PinPolicyRequest(version=1)
            )  # rollback to the initial one
            assert pinned.version == 1 and pinned.pinned
            assert registry.current().version == 1
            await upstream.publish(3, seed=3)
            await wait_for(
                lambda: manager.latest_announced is not None and manager.latest_announced.version == 3
            )
            assert registry.current().version == 1  # the pin holds
            info = await stub.GetPolicy(admin_pb2.GetPolicyRequest())
            assert info.version == 1 and info.pinned and info.source == "builtin"
            listed = await stub.ListPolicies(admin_pb2.ListPoliciesRequest())
            assert [p.version for p in listed.policies] == [1, 2, 3]

            with pytest.raises(grpc.aio.AioRpcError) as info_err:
                await stub.PinPolicy(admin_pb2.PinPolicyRequest(version=42))
            assert info_err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "version" in info_err.value.details()

            unpinned = await stub.PinPolicy(admin_pb2.PinPolicyRequest(version=0))
            assert not unpinned.pinned and unpinned.version == 3
            assert registry.current().version == 3
    finally:
        await admin.close()


async def test_admin_requires_a_bearer_token_beyond_loopback(setup):
    _, _, manager, _ = setup
    from barp_sidecar.errors import ConfigError

    with pytest.raises(ConfigError, match=r"admin\.token_env"):
        AdminServer(AdminSettings(host="0.0.0.0", port=0), manager, env={})
    admin = AdminServer(AdminSettings(host="0.0.0.0", port=0), manager, env={"BARP_ADMIN_TOKEN": "s3cret"})
    port = await admin.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.GetPolicy(admin_pb2.GetPolicyRequest())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetPolicy(
                    admin_pb2.GetPolicyRequest(), metadata=[("authorization", "Bearer nope")]
                )
            ok = await stub.GetPolicy(
                admin_pb2.GetPolicyRequest(), metadata=[("authorization", "Bearer s3cret")]
            )
            assert ok.version == 1
    finally:
        await admin.close()


async def test_watcher_reconnects_after_the_trainer_restarts(tmp_path):
    upstream = Upstream(tmp_path / "store")
    await upstream.server.start()
    port = upstream.port
    initial = load_checkpoint(save_tiny_checkpoint(tmp_path / "initial", version=1, seed=100))
    registry = FakeRegistry(initial)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    manager = PolicyManager(registry, fetcher=TrainerCheckpointFetcher(lambda: channel, tmp_path / "dl"))
    watcher = TrainerPolicyWatcher(manager, channel, "sc", 0.05, 0.2, seed=0)
    await watcher.start()
    try:
        await upstream.publish(2, seed=2)
        await wait_for(lambda: registry.current().version == 2)
        await upstream.announcer.close()
        await upstream.server.stop(0)
        await wait_for(lambda: watcher.reconnects >= 1)
        restarted = Upstream(tmp_path / "store")
        restarted.server = grpc.aio.server(interceptors=[ErrorBoundary()])
        servicer = TrainerServicer(None, restarted.store, restarted.announcer, ARMS, DIM)  # type: ignore[arg-type]
        trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, restarted.server)
        assert restarted.server.add_insecure_port(f"127.0.0.1:{port}") == port
        await restarted.server.start()
        await restarted.publish(3, seed=3)
        await wait_for(lambda: registry.current().version == 3)
        await restarted.announcer.close()
        await restarted.server.stop(0)
    finally:
        await watcher.close()
        await channel.close()
