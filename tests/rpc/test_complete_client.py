"""``barp-sidecar complete`` (rpc.complete_client) against an in-process sidecar and a fake provider."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from barp_sidecar.providers.fake_server import FakeBehaviour, FakeProvider
from barp_sidecar.rpc import complete_client
from tests.support.providers import all_live, settings_for, sidecar, write_catalog
from tests.support.sidecar import ARMS


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    complete_client.add_arguments(parser)
    return parser.parse_args(list(argv))


async def test_streams_text_to_stdout_and_a_summary_to_stderr(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", all_live(fake.base_url))
    with capture_logs():  # the in-process sidecar's log events would otherwise share stdout
        async with sidecar(settings_for(checkpoint, catalog)) as app:
            args = parse(
                "hi", "--target", f"127.0.0.1:{app.port}", "--system", "be brief", "--max-tokens", "3"
            )
            assert await asyncio.to_thread(complete_client.run, args) == 0
    out, err = capsys.readouterr()
    assert out == "tok0 tok1 tok2 \n"
    summary = json.loads(err)
    assert summary["model"] in ARMS and summary["finish_reason"] == "length"
    assert summary["usage"]["output_tokens"] == 3 and summary["usage"]["cost_usd"] > 0
    assert [m["role"] for m in fake.stats.bodies[-1]["messages"]] == ["system", "user"]


async def test_json_output_and_errors(
    checkpoint: Path, fake: FakeProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path / "c.yaml", {ARMS[0]: fake.base_url})
    with capture_logs():
        async with sidecar(settings_for(checkpoint, catalog, max_fallbacks=0)) as app:
            target = f"127.0.0.1:{app.port}"
            assert (
                await asyncio.to_thread(complete_client.run, parse("hi", "--target", target, "--json")) == 0
            )
            result = json.loads(capsys.readouterr().out)
            assert result["text"] == "".join(f"tok{i} " for i in range(8)) and result["model"] == ARMS[0]
            refused = parse("hi", "--target", target, "--allowed-model", ARMS[1])
            assert await asyncio.to_thread(complete_client.run, refused) == 1
            assert capsys.readouterr().err.startswith("FAILED_PRECONDITION: no provider is configured")
            fake.push(FakeBehaviour(status=400))
            assert await asyncio.to_thread(complete_client.run, parse("hi", "--target", target)) == 1
            assert "UNAVAILABLE: every provider failed" in capsys.readouterr().err
