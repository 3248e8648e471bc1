"""``barp-sidecar admin get|list|pin VERSION|unpin``: call a running sidecar's Admin service, print JSON.

Owns only this command-line client (sync gRPC; no grpcurl needed). The bearer token, when the Admin port
requires one, is read from the environment variable ``--token-env`` names (never from the command line,
where it would show in the process list). A gRPC error prints ``CODE: message`` on one line of stderr
and exits 1; a bad argument exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from barp_sidecar.gen.barp.v1 import admin_pb2, admin_pb2_grpc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--target", default="127.0.0.1:50052", help="Admin address HOST:PORT (admin.port)")
    common.add_argument(
        "--token-env",
        default="BARP_ADMIN_TOKEN",
        help="environment variable holding the bearer token (sent when set)",
    )
    common.add_argument("--timeout-s", type=float, default=10.0, help="call deadline in seconds")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("get", parents=[common], help="the policy version serving now")
    actions.add_parser("list", parents=[common], help="every version this sidecar knows")
    pin = actions.add_parser(
        "pin", parents=[common], help="serve VERSION and ignore newer announcements (rollback)"
    )
    pin.add_argument("version", type=int, help="policy version (>= 1)")
    actions.add_parser("unpin", parents=[common], help="follow the trainer's announcements again")


def policy_json(info: admin_pb2.PolicyInfo) -> dict[str, Any]:
    data = MessageToDict(info, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    data["version"] = int(data["version"])  # proto3 JSON writes int64 as a string
    return data


def call(stub: admin_pb2_grpc.AdminStub, args: argparse.Namespace, metadata: list[tuple[str, str]]) -> Any:
    options = {"timeout": args.timeout_s, "metadata": metadata}
    if args.action == "get":
        return policy_json(stub.GetPolicy(admin_pb2.GetPolicyRequest(), **options))
    if args.action == "list":
        response = stub.ListPolicies(admin_pb2.ListPoliciesRequest(), **options)
        return [policy_json(info) for info in response.policies]
    version = args.version if args.action == "pin" else 0
    return policy_json(stub.PinPolicy(admin_pb2.PinPolicyRequest(version=version), **options))


def run(args: argparse.Namespace) -> int:
    if args.action == "pin" and args.version < 1:
        print(f"barp-sidecar admin pin: version must be >= 1, not {args.version}", file=sys.stderr)
        return 2
    token = os.environ.get(args.token_env)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(args.target) as channel:
        try:
            result = call(admin_pb2_grpc.AdminStub(channel), args, metadata)
        except grpc.RpcError as error:
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2))
    return 0
