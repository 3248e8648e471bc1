"""barp.v1 Router servicer: converts, delegates to RoutingService, maps errors, writes the access log.

Owns only the transport concerns of Route and ReportOutcome; Complete comes from
``rpc.complete.CompleteServicerMixin``. Collaborators arrive through the constructor.
"""

from __future__ import annotations

import time

import grpc
import structlog

from barp_sidecar.errors import BarpError, FailedPrecondition
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.metrics import SidecarMetrics
from barp_sidecar.rewards.recorder import OutcomeRecorder
from barp_sidecar.routing.completion import CompletionService
from barp_sidecar.routing.service import RoutingService
from barp_sidecar.rpc import convert
from barp_sidecar.rpc.complete import CompleteServicerMixin
from barp_sidecar.rpc.status import status_for

log = structlog.get_logger("barp_sidecar.access")


class RouterServicer(CompleteServicerMixin, router_pb2_grpc.RouterServicer):
    """Route over a RoutingService; Complete over a CompletionService and ReportOutcome over an
    OutcomeRecorder (None = refused with a clear status)."""

    def __init__(
        self,
        routing: RoutingService,
        metrics: SidecarMetrics,
        *,
        completion: CompletionService | None = None,
        log_prompts: bool = False,
        outcomes: OutcomeRecorder | None = None,
    ) -> None:
        self._routing = routing
        self._metrics = metrics
        self._completion = completion
        self._log_prompts = log_prompts
        self._outcomes = outcomes

    async def Route(  # the generated base class names it
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        started_s = time.monotonic()
        request_id = request.request_id or None
        code = grpc.StatusCode.CANCELLED
        message = ""
        model = None
        decision_id = None
        response = None
        try:
            remaining_s = context.time_remaining()
            deadline_s = None if remaining_s is None else started_s + remaining_s
            decision = await self._routing.route(convert.route_command(request, deadline_s))
            response = convert.route_response(decision)
            model, decision_id = decision.model, decision.decision_id
            code = grpc.StatusCode.OK
        except BarpError as error:
            code, message = status_for(error), str(error)
        except Exception as error:  # a bug: never UNKNOWN, never a silent hang
            log.exception("route_internal_error", request_id=request_id)
            code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"
        finally:
            latency_s = time.monotonic() - started_s
            self._metrics.rpc_done("Route", code.name, latency_s, model)
            fields = {"prompt": request.prompt} if self._log_prompts else {}
            log.info(
                "rpc",
                method="Route",
                request_id=request_id,
                decision_id=decision_id,
                code=code.name,
                model=model,
                latency_ms=round(latency_s * 1000, 3),
                error=message or None,
                **fields,
            )
        if response is None:
            # Status without raising (cheaper than context.abort on the refusal path).
            context.set_code(code)
            context.set_details(message)
            return router_pb2.RouteResponse()
        return response

    async def ReportOutcome(  # the generated base class names it
        self, request: router_pb2.OutcomeRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.OutcomeAck:
        started_s = time.monotonic()
        code, message = grpc.StatusCode.OK, ""
        recorded = False
        try:
            if self._outcomes is None:
                raise FailedPrecondition("rewards.enabled is false: this sidecar does not record outcomes")
            cost = request.cost_usd if request.HasField("cost_usd") else None
            recorded = await self._outcomes.report(request.decision_id, request.quality, cost)
        except BarpError as error:
            code, message = status_for(error), str(error)
        except Exception as error:  # a bug: never UNKNOWN
            log.exception("report_outcome_internal_error", decision_id=request.decision_id[:64])
            code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"
        finally:
            latency_s = time.monotonic() - started_s
            self._metrics.rpc_done("ReportOutcome", code.name, latency_s)
            log.info(
                "rpc",
                method="ReportOutcome",
                decision_id=request.decision_id[:64],
                code=code.name,
                recorded=recorded,
                latency_ms=round(latency_s * 1000, 3),
                error=message or None,
            )
        if code != grpc.StatusCode.OK:
            await context.abort(code, message)
        assert self._outcomes is not None
        delivery = (
            router_pb2.OUTCOME_DELIVERY_TRAINER
            if self._outcomes.trainer_attached
            else router_pb2.OUTCOME_DELIVERY_KEPT_WITHOUT_TRAINER
        )
        return router_pb2.OutcomeAck(recorded=recorded, delivery=delivery)
