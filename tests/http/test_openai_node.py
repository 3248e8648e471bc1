"""The ``openai`` npm package from Node.js against the sidecar's HTTP API (skipped only when node is absent).

The package is installed from ``tests/http/node/package-lock.json`` by ``make node-deps`` (CI runs it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from barp_sidecar.app import SidecarApp
from barp_sidecar.providers.fake_server import FAKE_TOOL_ARGUMENTS
from tests.support.openai_http import base_url
from tests.support.sidecar import ARMS

NODE = shutil.which("node")
CLIENT_DIR = Path(__file__).parent / "node"

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


async def test_openai_npm_package_completes_streams_calls_tools_and_lists_models(live: SidecarApp) -> None:
    assert (CLIENT_DIR / "node_modules" / "openai").is_dir(), (
        "run `make node-deps` to install the npm package"
    )
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(CLIENT_DIR / "openai_client.mjs"),
        base_url(live),
        cwd=CLIENT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    result = json.loads(stdout)
    full_answer = "".join(f"tok{i} " for i in range(8))
    whole = result["whole"]
    assert whole["model"] in ARMS and whole["content"] == full_answer
    assert whole["decisionId"] == whole["barp"]["decision_id"]
    assert whole["barp"]["quality_weight"] == 0.2  # the extension field reached routing
    assert result["streamed"] == {"content": full_answer, "completionTokens": 8}
    assert result["toolCall"] == {
        "finishReason": "tool_calls",
        "name": "get_weather",
        "arguments": FAKE_TOOL_ARGUMENTS,
    }
    assert result["models"] == ["barp-auto", *sorted(ARMS)]
    assert result["notFound"] == {"status": 404, "code": "model_not_found"}
