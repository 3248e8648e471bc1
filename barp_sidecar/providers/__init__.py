"""Forwarding a routed conversation to the chosen LLM provider (DESIGN §1).

Owns the model catalog, the provider adapters (OpenAI-compatible chat completions, Anthropic Messages),
the shared aiohttp client pool with per-provider limits, retries and circuit breakers, fallback to the
next most probable allowed model, cost accounting, and an OpenAI-compatible fake provider for tests,
benchmarks and demos. Knows nothing about gRPC: ``barp_sidecar.rpc`` converts to and from protobuf.
"""
