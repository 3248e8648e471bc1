"""``barp-sidecar complete``: send a chat message through a running sidecar's Complete and stream the answer.

Owns only this small command-line client (sync gRPC). The answer's text goes to stdout as it arrives, then
one JSON summary line (decision, model that answered, fallback_from, usage, cost) to stderr; with
``--json`` a single JSON object with the text and the summary goes to stdout instead. On a gRPC error it
prints ``CODE: message`` to stderr and exits 1; a bad argument exits 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc

from barp_sidecar.gen.barp.v1 import router_pb2, router_pb2_grpc
from barp_sidecar.rpc.client import EXPLORATION_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("message", help="the user message")
    parser.add_argument("--system", default=None, help="an optional system message before it")
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
    parser.add_argument("--max-tokens", type=int, default=0, help="0 = the provider's default")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--request-id", default="", help="caller-chosen id echoed in the sidecar's logs")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="call deadline in seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")


def build_request(args: argparse.Namespace) -> router_pb2.CompleteRequest:
    messages = []
    if args.system:
        messages.append(router_pb2.ChatMessage(role="system", content=args.system))
    messages.append(router_pb2.ChatMessage(role="user", content=args.message))
    request = router_pb2.CompleteRequest(
        messages=messages,
        allowed_models=args.allowed_model,
        exploration=EXPLORATION_CHOICES[args.exploration],
        request_id=args.request_id,
    )
    request.parameters.max_tokens = args.max_tokens
    if args.temperature is not None:
        request.parameters.temperature = args.temperature
    if args.quality_weight is not None:
        request.preference.quality_weight = args.quality_weight
    return request


def summary(first: router_pb2.CompleteChunk, last: router_pb2.CompleteChunk) -> dict[str, Any]:
    decision = first.decision
    return {
        "decision_id": decision.decision_id,
        "model": decision.model,
        "fallback_from": list(last.fallback_from),
        "propensity": decision.propensity,
        "policy_version": decision.policy_version,
        "finish_reason": last.finish_reason,
        "usage": {
            "input_tokens": last.usage.input_tokens,
            "output_tokens": last.usage.output_tokens,
            "cost_usd": last.usage.cost_usd,
            "estimated": last.usage.estimated,
        },
        "provider_latency_ms": round(last.provider_latency_ms, 3),
    }


def run(args: argparse.Namespace) -> int:
    request = build_request(args)
    parts: list[str] = []
    first = last = None
    with grpc.insecure_channel(args.target) as channel:
        try:
            for chunk in router_pb2_grpc.RouterStub(channel).Complete(request, timeout=args.timeout_s):
                first = first or chunk
                last = chunk
                parts.append(chunk.delta)
                if not args.json:
                    sys.stdout.write(chunk.delta)
                    sys.stdout.flush()
        except grpc.RpcError as error:
            if parts and not args.json:
                sys.stdout.write("\n")
            print(f"{error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    if first is None or last is None:
        print("INTERNAL: the sidecar closed the stream without a chunk", file=sys.stderr)
        return 1
    result = summary(first, last)
    if args.json:
        print(json.dumps({"text": "".join(parts), **result}, indent=2))
    else:
        sys.stdout.write("\n")
        print(json.dumps(result), file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m barp_sidecar.rpc.complete_client``: the same as ``barp-sidecar complete``."""
    parser = argparse.ArgumentParser(prog="barp-sidecar complete", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
