"""``barp-trainer calibrate``: gives a checkpoint a calibration set from prompts (weights byte-identical), and
the shipped policy's set is what ``make builtin-calibration`` regenerates from the built-in prompts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.calibration import CALIBRATION_FILE
from barp_sidecar.policy.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, load_checkpoint, sha256_file
from barp_sidecar.policy.encoder import HashingEncoder, build_encoder
from barp_sidecar.policy.loading import encoder_model_for
from tests.support.sidecar import HASH_ENCODER, make_tiny_checkpoint
from trainer.cli import main
from trainer.offline.calibration_prompts import BUILTIN_CALIBRATION_PROMPTS


def test_calibrate_upgrades_an_old_checkpoint_with_the_prompts_embeddings(tmp_path: Path, capsys) -> None:
    directory = make_tiny_checkpoint(tmp_path / "policy", calibrated=False)
    weights_sha = sha256_file(directory / WEIGHTS_FILE)
    prompts = ["What is 2+2?", "", "Write a haiku about rain.", "  Summarise this contract.  "]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    assert main(["calibrate", str(directory), "--prompts", str(tmp_path / "prompts.txt")]) == 0
    assert "3 prompt embeddings" in capsys.readouterr().out
    policy = load_checkpoint(directory)
    assert sha256_file(directory / WEIGHTS_FILE) == weights_sha == policy.manifest.weights_sha256
    encoder = HashingEncoder(HASH_ENCODER.settings("hash:32")).load()
    expected = encoder.encode(["What is 2+2?", "Write a haiku about rain.", "Summarise this contract."])
    assert policy.calibration is not None
    np.testing.assert_allclose(policy.calibration.embeddings.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("content", [None, "\n  \n"])
def test_calibrate_refuses_missing_or_empty_prompt_files(tmp_path: Path, capsys, content: str | None) -> None:
    directory = make_tiny_checkpoint(tmp_path / "policy")
    before = (directory / MANIFEST_FILE).read_text()
    prompts = tmp_path / "prompts.txt"
    if content is not None:
        prompts.write_text(content)
    assert main(["calibrate", str(directory), "--prompts", str(prompts)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"--prompts {prompts}" in line
    assert (directory / MANIFEST_FILE).read_text() == before, "nothing changed"


def test_the_shipped_policy_carries_the_built_in_prompts_calibration_set() -> None:
    """``make builtin-calibration`` is deterministic: the stored set is the shipped encoder's embeddings of
    the built-in prompts (float tolerance: another CPU may round differently)."""
    directory = builtin_policy_dir()
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["weights_sha256"] == sha256_file(directory / WEIGHTS_FILE)
    assert manifest["calibration"]["sha256"] == sha256_file(directory / CALIBRATION_FILE)
    policy = load_checkpoint(directory)
    assert policy.calibration is not None
    assert len(policy.calibration.embeddings) == len(BUILTIN_CALIBRATION_PROMPTS)
    identity = policy.manifest.encoder
    encoder = build_encoder(identity.settings(encoder_model_for(identity, None), device="cpu"))
    expected = encoder.load().encode(list(BUILTIN_CALIBRATION_PROMPTS))
    np.testing.assert_allclose(policy.calibration.embeddings.numpy(), expected, atol=1e-4)
