"""A real sidecar process rejects bad checkpoints from its store and keeps serving the previous version;
a metric (barp_policy_rejected_total{reason}) and a log line (policy_rejected) say why. At start-up the
same validation (the calibration set's dry run included) exits 2 naming the file."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.policy.calibration import CALIBRATION_FILE, CalibrationSet, write_calibration
from barp_sidecar.policy.checkpoint import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    CheckpointStore,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
)
from tests.e2e.learning_processes import SidecarProcess, free_port, scrape
from tests.policy.test_calibration import overflowing_on_real_embeddings
from tests.support.sidecar import make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


def rejected(metrics_port: int, reason: str) -> float:
    return scrape(metrics_port, f'barp_policy_rejected_total{{reason="{reason}"}}') or 0.0


async def test_corrupt_mismatched_and_wrong_sha_checkpoints_are_rejected(tmp_path):
    store = CheckpointStore(tmp_path / "store")
    make_tiny_checkpoint(store.path(1), version=1, seed=1)
    store.set_latest(1)
    port, metrics_port = free_port(), free_port()
    (tmp_path / "sidecar.yaml").write_text(
        f"server:\n  host: 127.0.0.1\n  port: {port}\n  grace_s: 1\n"
        f"metrics:\n  enabled: true\n  port: {metrics_port}\nadmin:\n  enabled: false\n"
        f"policy:\n  checkpoint_dir: {store.root}\n  device: cpu\n"
        f"rewards:\n  spool_dir: {tmp_path / 'spool'}\n"
        f"trainer:\n  checkpoint_store_dir: {store.root}\n  checkpoint_poll_interval_s: 0.05\n"
    )
    sidecar = SidecarProcess(tmp_path / "sidecar.yaml", tmp_path / "sidecar.log")
    await asyncio.to_thread(sidecar.start)
    try:
        faults = {
            2: "corrupt_weights",  # bytes flipped: the weights no longer match the manifest's sha256
            3: "arm_mismatch",  # another model list
            4: "sha256_mismatch",  # manifest claims a different sha256
            5: "non_finite",  # finite 1e38 weights: random unit vectors pass, the calibration set overflows
        }
        for version, reason in faults.items():
            if reason == "arm_mismatch":
                make_tiny_checkpoint(store.path(version), version=version, models=("x", "y", "z", "w"))
            elif reason == "non_finite":
                sound = load_checkpoint(make_tiny_checkpoint(tmp_path / "sound", version=version))
                bad = overflowing_on_real_embeddings(sound, version)
                save_checkpoint(store.path(version), bad.network, bad.manifest, bad.calibration)
            else:
                make_tiny_checkpoint(store.path(version), version=version, seed=version)
                if reason == "corrupt_weights":
                    weights = store.path(version) / "policy.safetensors"
                    data = bytearray(weights.read_bytes())
                    data[len(data) // 2] ^= 0xFF
                    weights.write_bytes(bytes(data))
                else:
                    manifest_path = store.path(version) / "manifest.json"
                    manifest = json.loads(manifest_path.read_text())
                    manifest["weights_sha256"] = "ab" * 32
                    manifest_path.write_text(json.dumps(manifest))
            store.set_latest(version)
            deadline = time.monotonic() + 30
            expected = "sha256_mismatch" if reason == "corrupt_weights" else reason
            while rejected(metrics_port, expected) < 1 + (1 if reason == "sha256_mismatch" else 0):
                assert time.monotonic() < deadline, f"v{version} ({reason}) was not rejected"
                await asyncio.sleep(0.05)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                response = await router_pb2_grpc.RouterStub(channel).Route(
                    router_pb2.RouteRequest(prompt="hi")
                )
            assert response.policy_version == 1
        log_lines = [
            json.loads(line) for line in sidecar.log_path.read_text().splitlines() if line.startswith("{")
        ]
        rejections = [e for e in log_lines if e.get("event") == "policy_rejected"]
        assert sorted(e["version"] for e in rejections) == [2, 3, 4, 5]  # each rejected once, not per poll
        [overflow] = [e for e in rejections if e["version"] == 5]
        assert overflow["reason"] == "non_finite" and CALIBRATION_FILE in overflow["error"]
        assert all(e["serving"] == 1 and e["error"] for e in rejections)
    finally:
        await asyncio.to_thread(sidecar.stop)


@pytest.mark.parametrize("fault", ["overflows_on_calibration", "calibration_of_another_dim"])
def test_the_sidecar_will_not_start_on_a_policy_its_calibration_set_rejects(
    tmp_path: Path, fault: str
) -> None:
    """Start-up runs the same dry run: exit 2, one line naming the setting and the file, nothing served."""
    good = load_checkpoint(make_tiny_checkpoint(tmp_path / "good"))
    directory = tmp_path / "policy"
    if fault == "overflows_on_calibration":
        bad = overflowing_on_real_embeddings(good, 1)
        save_checkpoint(directory, bad.network, bad.manifest, bad.calibration)
        named, problem = directory / WEIGHTS_FILE, "non-finite logits or probabilities"
    else:
        shutil.copytree(good.directory, directory)
        other = torch.nn.functional.normalize(torch.ones(4, 16), dim=1)
        write_calibration(directory / CALIBRATION_FILE, CalibrationSet(other, torch.tensor([0.5])))
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        manifest["calibration"]["sha256"] = sha256_file(directory / CALIBRATION_FILE)
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
        named, problem = directory / CALIBRATION_FILE, "embeddings have shape [4, 16], expected [N >= 1, 32]"
    (tmp_path / "sidecar.yaml").write_text(
        f"server:\n  host: 127.0.0.1\n  port: 0\n  grace_s: 1\nmetrics:\n  enabled: false\n"
        f"admin:\n  enabled: false\npolicy:\n  checkpoint_dir: {directory}\n  device: cpu\n"
        f"rewards:\n  spool_dir: {tmp_path / 'spool'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "barp_sidecar.cli", "serve", "--config", str(tmp_path / "sidecar.yaml")],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert "policy.checkpoint_dir" in line and str(named) in line and problem in line
    assert "server_started" not in result.stdout
