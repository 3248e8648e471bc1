"""The one error boundary, through real servers and real channels: bounded echoes, machine-readable
``google.rpc.Status`` details on every service, and never UNKNOWN (invalid UTF-8, garbage bytes, bugs)."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from structlog.testing import capture_logs

from barp_sidecar import errors
from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc, router_pb2, router_pb2_grpc, trainer_pb2
from barp_sidecar.policy.manager import PolicyManager
from barp_sidecar.rpc.admin import AdminServer
from barp_sidecar.rpc.server import PlainEndpoint, Service
from barp_sidecar.rpc.status import ERROR_DOMAIN, STATUS_RULES, rich_status_for
from barp_sidecar.settings import AdminSettings
from tests.learning_helpers import random_event, trainer_settings_yaml
from tests.support.sidecar import running_sidecar, sidecar_settings
from trainer.service.app import TrainerApp
from trainer.service.settings import load_trainer_settings

# What a client may receive in trailing metadata before grpc-core refuses it (its default limit is 8 KiB).
CLIENT_METADATA_LIMIT_BYTES = 8192


def details_of(error: grpc.aio.AioRpcError) -> dict[str, object]:
    """The ``google.rpc.Status`` details a client in any language would unpack, by type name."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no grpc-status-details-bin in the trailers"
    assert status.code == error.code().value[0] and status.message == error.details()
    found: dict[str, object] = {}
    for detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(kind.DESCRIPTOR):
                message = kind()
                detail.Unpack(message)
                found[kind.DESCRIPTOR.name] = message
    return found


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    return sum(len(k) + len(v) for k, v in (error.trailing_metadata() or ())) + len(error.details() or "")


async def test_twenty_thousand_unknown_models_get_a_bounded_invalid_argument(checkpoint: Path) -> None:
    names = [f"no-such-model-{i:05d}" for i in range(20_000)]
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Route(router_pb2.RouteRequest(prompt="hi", allowed_models=names), timeout=10)
            # The server keeps serving.
            ok = await stub.Route(router_pb2.RouteRequest(prompt="still here"), timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "20000 unknown model(s)" in error.details() and "19992 more" in error.details()
    assert len(error.details().encode()) <= 1100
    assert trailer_bytes(error) < CLIENT_METADATA_LIMIT_BYTES / 2
    details = details_of(error)
    info = details["ErrorInfo"]
    assert info.reason == "INVALID_FIELD" and info.domain == ERROR_DOMAIN  # type: ignore[attr-defined]
    violation = details["BadRequest"].field_violations[0]  # type: ignore[attr-defined]
    assert violation.field == "allowed_models" and "unknown model" in violation.description
    access = [entry for entry in logs if entry.get("event") == "rpc"]
    assert access and access[0]["code"] == "INVALID_ARGUMENT"
    assert len(str(access[0])) < 2000, "the access log line grew with the caller's input"
    assert ok.decision_id


async def test_a_100_kb_decision_id_gets_a_bounded_not_found(checkpoint: Path, tmp_path: Path) -> None:
    settings = sidecar_settings(checkpoint, rewards={"spool_dir": str(tmp_path / "spool")})
    async with running_sidecar(settings) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ReportOutcome(
                    router_pb2.OutcomeRequest(decision_id="d" * 100_000, quality=0.5), timeout=10
                )
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert len(error.details()) < 400 and "more bytes" in error.details()
    assert details_of(error)["ErrorInfo"].reason == "DECISION_NOT_FOUND"  # type: ignore[attr-defined]
    assert "RetryInfo" not in details_of(error)
    assert all(len(str(entry)) < 2000 for entry in logs)


def raw_route(prompt: bytes) -> bytes:
    """A RouteRequest on the wire with ``prompt`` as field 1, whatever its bytes (the stubs refuse)."""
    assert len(prompt) < 128
    return bytes([0x0A, len(prompt)]) + prompt


async def test_invalid_utf8_and_garbage_are_invalid_argument_naming_the_field(checkpoint: Path) -> None:
    complete = router_pb2.CompleteRequest(
        messages=[
            router_pb2.ChatMessage(role="system", content="be brief"),
            router_pb2.ChatMessage(role="user", content="PLACEHOLDER"),
        ]
    ).SerializeToString()
    bad_complete = complete.replace(b"PLACEHOLDER", b"PLACE\xff\xfeLDER")
    async with running_sidecar(sidecar_settings(checkpoint)) as app:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            route = channel.unary_unary("/barp.v1.Router/Route")
            stream = channel.unary_stream("/barp.v1.Router/Complete")
            outcome = channel.unary_unary("/barp.v1.Router/ReportOutcome")
            cases = [
                (route(raw_route(b"caf\xc3"), timeout=10), "prompt"),
                (outcome(b"\x0a\x03\xff\x00\x01", timeout=10), "decision_id"),
                (route(b"\x0a\x50only-a-few-bytes", timeout=10), "request"),
            ]
            for call, field in cases:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                error = caught.value
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error)
                assert error.details().startswith(f"{field}: "), error.details()
                details = details_of(error)
                assert details["ErrorInfo"].reason == "MALFORMED_REQUEST"  # type: ignore[attr-defined]
                assert details["BadRequest"].field_violations[0].field == field  # type: ignore[attr-defined]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stream(bad_complete, timeout=10):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith("messages[1].content: is not valid UTF-8")
            ok = await router_pb2_grpc.RouterStub(channel).Route(router_pb2.RouteRequest(prompt="café"))
    assert ok.decision_id


async def test_trainer_and_admin_answer_through_the_same_boundary(tmp_path: Path) -> None:
    config = tmp_path / "trainer.yaml"
    config.write_text(trainer_settings_yaml(tmp_path / "data", every_events=1000, every_s=600))
    trainer = TrainerApp(load_trainer_settings(config, {}))
    await trainer.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{trainer.port}") as channel:
            fetch = channel.unary_stream("/barp.v1.Trainer/FetchPolicy")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in fetch(trainer_pb2.FetchPolicyRequest(version=0).SerializeToString()):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert details_of(caught.value)["BadRequest"].field_violations[0].field == "version"  # type: ignore[attr-defined]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in fetch(trainer_pb2.FetchPolicyRequest(version=99).SerializeToString()):
                    pass
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert details_of(caught.value)["ErrorInfo"].reason == "NOT_FOUND"  # type: ignore[attr-defined]
            # A valid reward event, then one whose event_id (field 1) is not UTF-8, in one client stream.
            good = random_event(random.Random(3), sequence=1).SerializeToString()
            publish = channel.stream_stream("/barp.v1.Trainer/PublishRewards")

            async def events():  # type: ignore[no-untyped-def]
                yield good
                yield b"\x0a\x02\xc3\x28"

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in publish(events()):
                    pass
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith("event_id: is not valid UTF-8")
    finally:
        await trainer.close()

    manager = PolicyManager.__new__(PolicyManager)  # never reached: every call is refused before it
    admin = AdminServer(AdminSettings(host="0.0.0.0", port=0), manager, env={"BARP_ADMIN_TOKEN": "s3cret"})
    await admin.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{admin.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await admin_pb2_grpc.AdminStub(channel).GetPolicy(admin_pb2.GetPolicyRequest(), timeout=10)
    finally:
        await admin.close()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details_of(caught.value)["ErrorInfo"].reason == "UNAUTHENTICATED"  # type: ignore[attr-defined]


class _BuggyRouter(router_pb2_grpc.RouterServicer):
    async def Route(self, request, context):  # type: ignore[no-untyped-def]
        raise KeyError("a bug")

    async def Complete(self, request, context):  # type: ignore[no-untyped-def]
        yield router_pb2.CompleteChunk(delta="partial")
        raise ZeroDivisionError


async def test_a_bug_is_internal_never_unknown_in_unary_and_streaming_calls() -> None:
    from barp_sidecar.rpc.server import GrpcServer

    server = GrpcServer(
        PlainEndpoint("127.0.0.1", 0),
        [Service("barp.v1.Router", router_pb2_grpc.add_RouterServicer_to_server, _BuggyRouter())],
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Route(router_pb2.RouteRequest(prompt="x"), timeout=10)
            chunks = []
            with pytest.raises(grpc.aio.AioRpcError) as streaming:
                async for chunk in stub.Complete(router_pb2.CompleteRequest(), timeout=10):
                    chunks.append(chunk.delta)
    finally:
        await server.stop(0)
    assert unary.value.code() == grpc.StatusCode.INTERNAL
    assert unary.value.details() == "internal error (KeyError)"
    assert details_of(unary.value)["ErrorInfo"].reason == "INTERNAL"  # type: ignore[attr-defined]
    assert streaming.value.code() == grpc.StatusCode.INTERNAL and chunks == ["partial"]
    assert any(entry["event"] == "rpc_internal_error" for entry in logs)


@pytest.mark.parametrize(
    ("error", "reason", "retry"),
    [
        (errors.AdmissionFull("full"), "ADMISSION_FULL", True),
        (errors.ShuttingDown("bye"), "SHUTTING_DOWN", True),
        (errors.NoAllowedModel("none"), "NO_ALLOWED_MODEL", False),
        (errors.DeadlineExceeded("late"), "DEADLINE_EXCEEDED", False),
    ],
)
def test_retry_info_only_where_a_retry_helps(error: Exception, reason: str, retry: bool) -> None:
    status = rich_status_for(error)
    metadata = dict(status.trailing_metadata)
    from google.rpc import status_pb2

    decoded = status_pb2.Status.FromString(metadata["grpc-status-details-bin"])
    kinds = {detail.TypeName().rsplit(".", 1)[-1]: detail for detail in decoded.details}
    info = error_details_pb2.ErrorInfo()
    kinds["ErrorInfo"].Unpack(info)
    assert info.reason == reason
    assert ("RetryInfo" in kinds) is retry


def test_every_reason_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "errors.md").read_text()
    for rule in STATUS_RULES:
        assert f"| `{rule.reason}` | {rule.code.name} |" in doc, rule.reason
    assert "| `INTERNAL` | INTERNAL |" in doc
