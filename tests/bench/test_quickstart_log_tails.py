"""A failed quickstart step prints the last notable lines (warnings, errors, policy and gate events) of
every server it started, so a flake seen once in a loop can be read from the test's output alone."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import cast

from bench.quickstart import LOG_TAIL_LINES, Context, background_log_tails


def test_the_tails_keep_only_notable_lines_of_each_server(tmp_path: Path) -> None:
    trainer_log = tmp_path / "background-0.log"
    trainer_log.write_text(
        "\n".join(
            [
                *(f'{{"event": "reward_events_stored", "n": {i}}}' for i in range(50)),
                '{"event": "gate_decision", "decision": "rejected"}',
                '{"event": "policy_published", "version": 2}',
            ]
        )
    )
    sidecar_log = tmp_path / "background-1.log"
    sidecar_log.write_text(
        "\n".join(f'{{"event": "policy_rejected", "version": {i}, "level": "error"}}' for i in range(30))
    )
    quiet_log = tmp_path / "background-2.log"
    quiet_log.write_text("listening on 8089\n")
    process = cast(subprocess.Popen[bytes], None)
    context = Context(ports={}, work=tmp_path, env={})
    context.background = [
        ("barp-trainer serve --config t.yaml", process, trainer_log),
        ("barp-sidecar serve --config s.yaml", process, sidecar_log),
        ("python -m barp_sidecar.providers.fake_server --port 8089", process, quiet_log),
    ]
    text = background_log_tails(context)
    trainer, sidecar, fake = text.split("--- ")[1:]
    assert trainer.startswith("barp-trainer serve --config")
    assert (
        "gate_decision" in trainer and "policy_published" in trainer and "reward_events_stored" not in trainer
    )
    assert sidecar.count("policy_rejected") == LOG_TAIL_LINES and '"version": 29' in sidecar
    assert '"version": 17,' not in sidecar  # only the last LOG_TAIL_LINES
    assert "(no such lines)" in fake
