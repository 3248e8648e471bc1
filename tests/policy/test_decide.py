"""``barp-sidecar decide`` on a tiny hash-encoder checkpoint, and the shipped default checkpoint."""

import argparse
import json
import math

import pytest
import torch

from barp_sidecar import decide
from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, load_checkpoint, save_checkpoint
from barp_sidecar.policy.encoder import BUILTIN_MODEL, BUILTIN_MODEL_ID
from barp_sidecar.policy.loading import encoder_model_for
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork

ARMS = ("small", "medium", "large")


@pytest.fixture
def policy_dir(tmp_path):
    torch.manual_seed(0)
    architecture = PolicyArchitecture(embedding_dim=32, num_models=3, head_hidden=8)
    manifest = PolicyManifest(
        version=4,
        models=ARMS,
        encoder=EncoderIdentity("hash:32", 32, 256, "tail"),
        tau_usd=0.005,
        architecture=architecture,
    )
    save_checkpoint(tmp_path / "v4", PolicyNetwork(architecture), manifest)
    return tmp_path / "v4"


def _run(argv, capsys):
    parser = argparse.ArgumentParser()
    decide.add_arguments(parser)
    code = decide.run(parser.parse_args(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_decide_prints_a_json_decision(policy_dir, capsys):
    code, out, _ = _run(["What is 2+2?", "--quality-weight", "0.7", "--policy", str(policy_dir)], capsys)
    assert code == 0
    decision = json.loads(out)
    assert decision["model"] in ARMS and decision["policy_version"] == 4
    assert sum(decision["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert decision["model"] == max(decision["probabilities"], key=decision["probabilities"].get)


def test_decide_respects_allowed_models_and_samples_with_a_propensity(policy_dir, capsys):
    argv = ["hi", "--policy", str(policy_dir), "--allowed-model", "medium", "--sample", "--seed", "1"]
    code, out, _ = _run(argv, capsys)
    decision = json.loads(out)
    assert code == 0 and decision["model"] == "medium" and decision["propensity"] == pytest.approx(1.0)
    assert decision["probabilities"]["small"] == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--quality-weight", "1.5"], "quality_weight"),
        (["--quality-weight", "nan"], "quality_weight"),
        (["--allowed-model", "nope"], "unknown model(s)"),
        (["--allowed-model", "large", "--allowed-model", "large"], "duplicate"),
    ],
)
def test_decide_rejects_bad_arguments_with_exit_code_2(policy_dir, capsys, argv, message):
    code, _, err = _run(["hi", "--policy", str(policy_dir), *argv], capsys)
    assert code == 2 and message in err


def test_allowed_model_is_repeated_and_the_prompt_stays_positional(policy_dir, capsys):
    argv = ["--allowed-model", "small", "--allowed-model", "large", "the prompt", "--policy", str(policy_dir)]
    code, out, _ = _run(argv, capsys)
    decision = json.loads(out)
    assert code == 0 and decision["model"] in ("small", "large") and decision["probabilities"]["medium"] == 0


def test_greedy_output_says_why_propensity_is_one(policy_dir, capsys):
    _, out, _ = _run(["hi", "--policy", str(policy_dir)], capsys)
    decision = json.loads(out)
    assert decision["propensity"] == 1.0 and decision["exploration"] == "greedy"
    assert decision["propensity_note"] == decide.GREEDY_NOTE and "explanation" not in decision


def test_explain_lists_every_model_with_the_numbers_behind_the_choice(policy_dir, capsys):
    argv = [
        "hi",
        "--policy",
        str(policy_dir),
        "--explain",
        "--allowed-model",
        "small",
        "--allowed-model",
        "large",
    ]
    _, out, _ = _run(argv, capsys)
    decision = json.loads(out)
    rows = decision["explanation"]
    assert [row["rank"] for row in rows] == [1, 2, 3] and rows[0]["model"] == decision["model"]
    assert {row["model"]: row["probability"] for row in rows} == decision["probabilities"]
    masked = next(row for row in rows if row["model"] == "medium")
    assert masked == {"rank": 3, "model": "medium", "allowed": False, "logit": None, "probability": 0.0}
    allowed = [row for row in rows if row["allowed"]]
    # The softmax of the logits over the allowed models gives the probabilities.
    weights = [math.exp(row["logit"]) for row in allowed]
    for row, weight in zip(allowed, weights, strict=True):
        assert row["probability"] == pytest.approx(weight / sum(weights), abs=1e-3)


def test_a_missing_policy_directory_is_one_line_and_exit_2(tmp_path, capsys):
    code, out, err = _run(["hi", "--policy", str(tmp_path / "nope")], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "policy" in err


def test_encoder_model_comes_from_the_manifest_unless_overridden(policy_dir):
    identity = load_checkpoint(policy_dir).manifest.encoder
    assert encoder_model_for(identity, None) == "hash:32"
    assert encoder_model_for(identity, "/models/minilm") == "hash:32"  # self-describing, as in the sidecar
    builtin = EncoderIdentity(BUILTIN_MODEL_ID, 384, 256, "tail")
    assert encoder_model_for(builtin, None) == BUILTIN_MODEL
    assert encoder_model_for(builtin, "/models/minilm") == "/models/minilm"
    other = EncoderIdentity("org/other-encoder", 384, 256, "tail")
    assert encoder_model_for(other, None) == "org/other-encoder"


def test_the_shipped_default_policy_loads():
    directory = builtin_policy_dir()
    assert (directory / "manifest.json").is_file(), f"the shipped policy is missing from {directory}"
    policy = load_checkpoint(directory)
    assert len(policy.manifest.models) == 11
    assert policy.manifest.encoder.encoder_id == BUILTIN_MODEL_ID
    assert policy.manifest.encoder.truncation == "tail"
