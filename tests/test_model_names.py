"""One alias table for model names, applied by the catalog and policy manifests (loaders: test_datasets)."""

import json

import pytest
import torch

from barp_sidecar.errors import CheckpointError, ConfigError
from barp_sidecar.model_names import MODEL_ALIASES, canonical_model_name
from barp_sidecar.policy.checkpoint import EncoderIdentity, PolicyManifest, load_checkpoint, save_checkpoint
from barp_sidecar.policy.network import PolicyArchitecture, PolicyNetwork
from barp_sidecar.providers.catalog import parse_catalog


def test_aliases_map_to_canonical_names_that_are_not_aliases_themselves():
    assert canonical_model_name(" gpt4_1106_preview ") == "gpt-4-1106-preview"
    assert canonical_model_name("claude-2") == "claude-v2" == canonical_model_name("claude-v2")
    assert canonical_model_name("some-unknown-model") == "some-unknown-model"
    assert not set(MODEL_ALIASES.values()) & set(MODEL_ALIASES)  # one step always reaches the canonical name
    assert all(alias != canonical for alias, canonical in MODEL_ALIASES.items())


def test_catalog_arms_are_canonical_and_aliases_of_one_model_collide():
    catalog = parse_catalog({"providers": [{"arm": "gpt4_1106_preview", "enabled": False}]})
    assert catalog.models == ("gpt-4-1106-preview",)
    catalog.check_models(["gpt-4-1106-preview"])
    catalog.check_models(["gpt4_1106_preview"])
    twice = {"providers": [{"arm": "claude-2", "enabled": False}, {"arm": "claude-v2", "enabled": False}]}
    with pytest.raises(ConfigError, match=r"duplicate model 'claude-v2' \(aliases name one model\)"):
        parse_catalog(twice)


def _save(tmp_path, models):
    architecture = PolicyArchitecture(embedding_dim=8, num_models=len(models), head_hidden=4)
    manifest = PolicyManifest(
        version=1,
        models=models,
        encoder=EncoderIdentity("hash:8", 8, 256, "tail"),
        tau_usd=0.01,
        architecture=architecture,
    )
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "p", PolicyNetwork(architecture), manifest)


def test_policy_manifest_arms_load_canonical(tmp_path):
    _save(tmp_path, ("gpt4_1106_preview", "claude-2"))
    assert load_checkpoint(tmp_path / "p").manifest.models == ("gpt-4-1106-preview", "claude-v2")


def test_policy_with_two_aliases_of_one_model_is_rejected(tmp_path):
    _save(tmp_path, ("claude-2", "claude-v1"))
    path = tmp_path / "p" / "manifest.json"
    data = json.loads(path.read_text())
    data["arms"] = ["claude-2", "claude-v2"]
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="aliases name one model"):
        load_checkpoint(tmp_path / "p")
