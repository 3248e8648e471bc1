"""barp.v1 Router servicer: converts, delegates to RoutingService, maps errors, writes the access log.

Owns only the transport concerns of Route. Complete and ReportOutcome are left to the generated base class
(UNIMPLEMENTED) until their branches add them; collaborators arrive through the constructor.
"""

from __future__ import annotations

import time
import uuid

import grpc
import structlog

from barp_sidecar.errors import BarpError
from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.metrics import SidecarMetrics
from barp_sidecar.routing.service import RoutingService
from barp_sidecar.rpc import convert
from barp_sidecar.rpc.status import status_for

log = structlog.get_logger("barp_sidecar.access")


class RouterServicer(router_pb2_grpc.RouterServicer):
    """Route over a RoutingService."""

    def __init__(
        self, routing: RoutingService, metrics: SidecarMetrics, *, log_prompts: bool = False
    ) -> None:
        self._routing = routing
        self._metrics = metrics
        self._log_prompts = log_prompts

    async def Route(  # the generated base class names it
        self, request: router_pb2.RouteRequest, context: grpc.aio.ServicerContext
    ) -> router_pb2.RouteResponse:
        started_s = time.monotonic()
        request_id = request.request_id or uuid.uuid4().hex[:16]
        code = grpc.StatusCode.CANCELLED
        message = ""
        model = None
        response = None
        try:
            remaining_s = context.time_remaining()
            deadline_s = None if remaining_s is None else started_s + remaining_s
            decision = await self._routing.route(convert.route_command(request, deadline_s))
            response = convert.route_response(decision)
            model = decision.model
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
