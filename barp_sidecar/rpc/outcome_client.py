"""``barp-sidecar report DECISION_ID --quality Q [--cost-usd C]``: ReportOutcome on a running sidecar.

Owns only this command-line client (sync gRPC). Prints the acknowledgement as JSON. A gRPC error prints
``CODE: message`` on one line of stderr and exits 1; a bad argument exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf.json_format import MessageToDict

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("decision_id", help="decision_id from route / complete")
    parser.add_argument("--quality", type=float, required=True, help="observed answer quality in [0, 1]")
    parser.add_argument(
        "--cost-usd", type=float, default=None, help="cost in USD when you called the provider yourself"
    )
    parser.add_argument("--target", default="127.0.0.1:50051", help="sidecar address HOST:PORT")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="call deadline in seconds")


def run(args: argparse.Namespace) -> int:
    request = router_pb2.OutcomeRequest(decision_id=args.decision_id, quality=args.quality)
    if args.cost_usd is not None:
        request.cost_usd = args.cost_usd
    with grpc.insecure_channel(args.target) as channel:
        try:
            ack = router_pb2_grpc.RouterStub(channel).ReportOutcome(request, timeout=args.timeout_s)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    result = MessageToDict(ack, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    print(json.dumps({"decision_id": args.decision_id, **result}, indent=2))
    return 0
