"""barp.v1 Router servicer: converts, delegates to RoutingService, writes the access log.

Owns only the transport concerns of Route and ReportOutcome; Complete comes from
``rpc.complete.CompleteServicerMixin``. Errors propagate as domain exceptions: the server's error boundary
(``rpc.boundary``) turns them into statuses through the one table. Collaborators arrive through the
constructor.
"""

from __future__ import annotations

import time

import grpc
import structlog

from barp_sidecar.bounded_text import bounded_text
from barp_sidecar.errors import FailedPrecondition, InvalidArgument
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.metrics import SidecarMetrics
from barp_sidecar.rewards.recorder import OutcomeRecorder
from barp_sidecar.routing.completion import CompletionService
from barp_sidecar.routing.service import RoutingService
from barp_sidecar.rpc import convert
from barp_sidecar.rpc.complete import CompleteServicerMixin
from barp_sidecar.rpc.status import status_for, status_message

log = structlog.get_logger("barp_sidecar.access")
# Caller-chosen ids are echoed in the access log only up to this many UTF-8 bytes.
MAX_LOGGED_ID_BYTES = 128


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
        request_id = bounded_text(request.request_id, MAX_LOGGED_ID_BYTES) or None
        code = grpc.StatusCode.CANCELLED
        message = ""
        model = None
        decision_id = None
        try:
            remaining_s = context.time_remaining()
            deadline_s = None if remaining_s is None else started_s + remaining_s
            decision = await self._routing.route(convert.route_command(request, deadline_s))
            model, decision_id = decision.model, decision.decision_id
            response = convert.route_response(decision)
            code = grpc.StatusCode.OK
            return response
        except Exception as error:  # the boundary (rpc.boundary) turns it into the status
            code, message = status_for(error), status_message(error)
            raise
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

    async def ReportOutcome(  # the generated base class names it
        self, request: router_pb2.OutcomeRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.OutcomeAck:
        started_s = time.monotonic()
        code, message = grpc.StatusCode.OK, ""
        recorded = False
        try:
            if self._outcomes is None:
                raise FailedPrecondition("rewards.enabled is false: this sidecar does not record outcomes")
            if not request.HasField("quality"):
                raise InvalidArgument("quality", "is required (a number in [0, 1])")
            cost = request.cost_usd if request.HasField("cost_usd") else None
            recorded = await self._outcomes.report(request.decision_id, request.quality, cost)
            delivery = (
                router_pb2.OUTCOME_DELIVERY_TRAINER
                if self._outcomes.trainer_attached
                else router_pb2.OUTCOME_DELIVERY_KEPT_WITHOUT_TRAINER
            )
            return router_pb2.OutcomeAck(recorded=recorded, delivery=delivery)
        except Exception as error:  # the boundary (rpc.boundary) turns it into the status
            code, message = status_for(error), status_message(error)
            raise
        finally:
            latency_s = time.monotonic() - started_s
            self._metrics.rpc_done("ReportOutcome", code.name, latency_s)
            log.info(
                "rpc",
                method="ReportOutcome",
                decision_id=bounded_text(request.decision_id, MAX_LOGGED_ID_BYTES),
                code=code.name,
                recorded=recorded,
                latency_ms=round(latency_s * 1000, 3),
                error=message or None,
            )
