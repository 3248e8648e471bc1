"""One word for a candidate LLM per module (docs/architecture.md, glossary), checked over every identifier.

A candidate LLM is a **model** in ``barp_sidecar/`` and wherever the trainer talks to users, data and the
CLI; it is an **arm** only inside the learner. No module may use both words. The check reads each module with
``ast`` (nothing is imported) and collects its identifiers: names, attributes, function and class names,
parameters, keyword arguments and imported names. Identifiers are split into words at ``_`` and at
camel-case boundaries; a module that has an identifier with the word ``arm``/``arms`` and one with
``model``/``models`` fails, unless the identifier is listed below: a "model" that means something else
(OTHER_MODELS), or a crossing (CROSSINGS: a persisted/wire name that keeps its first spelling, or the
sidecar's name a learner module must use for the network it builds). Strings and comments are not
identifiers. Every exemption must still be needed, so a stale one cannot hide a new mix.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("barp_sidecar", "trainer")
SKIPPED = ("barp_sidecar/gen/",)  # generated protobuf stubs

ARM_WORDS = {"arm", "arms"}
MODEL_WORDS = {"model", "models"}

# Identifiers whose "model" is not a candidate LLM, used next to "arm" in the learner. Exact identifiers.
OTHER_MODELS = {
    # The "reward_model" policy kind's learner and its settings (a regression model of each arm's outcome).
    "RewardModelLearner",
    "RewardModelHyperParameters",
    # torch.optim.swa_utils.AveragedModel: a running average of a torch module's weights.
    "AveragedModel",
}

# Where a module must say the other side's word, per module: (module path, identifier) -> why. Persisted and
# wire names keep their first spelling (docs/architecture.md, glossary), and a learner module that builds or
# reads the policy network, or an event, uses the sidecar's names for it. Nothing else.
CROSSINGS = {
    ("barp_sidecar/rpc/admin.py", "arms"): "admin.proto PolicyInfo.arms",
    ("barp_sidecar/policy/watcher.py", "arms"): "trainer.proto PolicyAnnouncement.arms",
    ("barp_sidecar/app.py", "arms"): "the server_started log field",
    ("trainer/service/app.py", "arms"): "the trainer_started log field",
    ("trainer/service/servicer.py", "arms"): "trainer.proto PolicyAnnouncement.arms",
    ("trainer/service/policy_source.py", "arms"): "the learner.arms setting (a persisted configuration key)",
    ("trainer/service/settings.py", "arms"): "the learner.arms setting (a persisted configuration key)",
    ("trainer/service/learner.py", "model"): "trainer.proto RewardEvent.model",
    ("trainer/replay/trainer_router.py", "model"): "trainer.proto RewardEvent.model",
    (
        "trainer/replay/trainer_router.py",
        "choose_model",
    ): "the sidecar's choice rule, which the replay shares",
    ("trainer/offline/reinforce.py", "num_models"): "PolicyArchitecture.num_models of the network it builds",
    ("trainer/service/reward_model_learner.py", "num_models"): "PolicyArchitecture.num_models of its network",
}


def words(identifier: str) -> set[str]:
    """``num_arms`` -> {num, arms}; ``ArmOutcomeCritic`` -> {arm, outcome, critic}; ``ARM_MISMATCH`` too."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", identifier)
    return {word.lower() for word in spaced.split("_") if word}


def identifiers(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name
        elif isinstance(node, ast.arg):
            yield node.arg
        elif isinstance(node, ast.keyword) and node.arg is not None:
            yield node.arg
        elif isinstance(node, ast.alias):
            yield node.asname or node.name.rsplit(".", 1)[-1]


def mixed_vocabulary(source: str, path: str) -> tuple[list[str], list[str]]:
    """(arm identifiers, model identifiers) of one module when it uses both words, else two empty lists."""
    arm_ids, model_ids = set(), set()
    for name in identifiers(ast.parse(source, filename=path)):
        if (path, name) in CROSSINGS or name in OTHER_MODELS:
            continue
        found = words(name)
        if found & ARM_WORDS:
            arm_ids.add(name)
        if found & MODEL_WORDS:
            model_ids.add(name)
    if arm_ids and model_ids:
        return sorted(arm_ids), sorted(model_ids)
    return [], []


def modules() -> Iterator[Path]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not path.relative_to(ROOT).as_posix().startswith(SKIPPED):
                yield path


def test_no_module_uses_both_arm_and_model():
    problems = []
    for path in modules():
        relative = path.relative_to(ROOT).as_posix()
        arm_ids, model_ids = mixed_vocabulary(path.read_text(), relative)
        if arm_ids:
            problems.append(f"{relative}: arm-words {arm_ids} and model-words {model_ids}")
    assert not problems, "one word for a candidate LLM per module:\n" + "\n".join(problems)


def test_the_exemptions_are_still_needed():
    """An exemption nobody needs any more is stale: it would hide the next real mix."""
    for (relative, name), why in CROSSINGS.items():
        source = (ROOT / relative).read_text()
        assert name in set(identifiers(ast.parse(source))), f"{relative} no longer uses {name!r} ({why})"
    used_next_to_arm = set()
    for path in modules():
        relative = path.relative_to(ROOT).as_posix()
        names = set(identifiers(ast.parse(path.read_text())))
        if any(words(name) & ARM_WORDS for name in names if (relative, name) not in CROSSINGS):
            used_next_to_arm |= names & OTHER_MODELS
    assert OTHER_MODELS <= used_next_to_arm, f"not needed any more: {sorted(OTHER_MODELS - used_next_to_arm)}"


def test_the_checker_catches_a_planted_mix():
    planted = "def route(models, allowed):\n    arms = list(models)\n    return arms\n"
    assert mixed_vocabulary(planted, "barp_sidecar/planted.py") == (["arms"], ["models"])
    # Every kind of identifier counts: attribute, keyword, class/function name, parameter, import, camel case.
    for arm_use in (
        "x.num_arms",
        "f(arm=1)",
        "class ArmTable: pass",
        "def choose_arm(): pass",
        "def f(arms): pass",
        "from m import arm_names",
        "x.ARM_MISMATCH",
    ):
        source = f"{arm_use}\nchosen_model = 1\n"
        assert mixed_vocabulary(source, "trainer/planted.py")[0], arm_use
    # Either word alone passes, and so does a "model" that means something else.
    assert mixed_vocabulary("arms = 1\nnum_arms = 2\n", "trainer/planted.py") == ([], [])
    assert mixed_vocabulary("models = 1\nModelCatalog = 2\n", "trainer/planted.py") == ([], [])
    assert mixed_vocabulary("arms = 1\nlearner = RewardModelLearner()\n", "trainer/planted.py") == ([], [])
    # A crossing is exempt only in the module it is listed for.
    wire = "arms = 1\nmodels = 2\n"
    assert mixed_vocabulary(wire, "barp_sidecar/rpc/admin.py") == ([], [])
    assert mixed_vocabulary(wire, "barp_sidecar/rpc/convert.py") == (["arms"], ["models"])
    # Strings and comments are not identifiers: the manifest key "arms" in a serializer is fine.
    assert mixed_vocabulary('models = data["arms"]  # arm\n', "barp_sidecar/policy/x.py") == ([], [])


def test_words_split_snake_and_camel_case():
    assert words("num_arms") == {"num", "arms"}
    assert words("ArmOutcomeCritic") == {"arm", "outcome", "critic"}
    assert words("MODEL_LIST_MISMATCH") == {"model", "list", "mismatch"}
    assert not words("warm_up") & ARM_WORDS and not words("alarm") & ARM_WORDS
