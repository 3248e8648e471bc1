"""``barp-sidecar route``: ask a running sidecar for a decision and print it as JSON.

Owns only this small command-line client (sync gRPC). On a gRPC error it prints ``CODE: message`` to stderr
and exits 1; a bad argument exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc

EXPLORATION_CHOICES = {
    "default": router_pb2.EXPLORATION_UNSPECIFIED,
    "greedy": router_pb2.EXPLORATION_GREEDY,
    "sample": router_pb2.EXPLORATION_SAMPLE,
    "epsilon_greedy": router_pb2.EXPLORATION_EPSILON_GREEDY,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt to route")
    parser.add_argument("--target", default="127.0.0.1:50051", help="sidecar address HOST:PORT")
    parser.add_argument(
        "--quality-weight", type=float, default=None, help="w_q in [0, 1] (default: the sidecar's default)"
    )
    parser.add_argument(
        "--allowed-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="restrict to this model (repeat)",
    )
    parser.add_argument("--exploration", choices=sorted(EXPLORATION_CHOICES), default="default")
    parser.add_argument("--request-id", default="", help="caller-chosen id echoed in the sidecar's logs")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="call deadline in seconds")


def build_request(args: argparse.Namespace) -> router_pb2.RouteRequest:
    request = router_pb2.RouteRequest(
        prompt=args.prompt,
        allowed_models=args.allowed_model,
        exploration=EXPLORATION_CHOICES[args.exploration],
        request_id=args.request_id,
    )
    if args.quality_weight is not None:
        request.preference.quality_weight = args.quality_weight
    return request


def run(args: argparse.Namespace) -> int:
    request = build_request(args)
    with grpc.insecure_channel(args.target) as channel:
        try:
            response = router_pb2_grpc.RouterStub(channel).Route(request, timeout=args.timeout_s)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1
    decision = MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    decision["policy_version"] = int(decision["policy_version"])  # proto3 JSON writes int64 as a string
    print(json.dumps(decision, indent=2))
    return 0
