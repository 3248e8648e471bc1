"""The OpenAI-compatible HTTP API: request parsing, OpenAI-shaped answers and the aiohttp server.

A transport like ``rpc/``: it converts and maps errors; ``routing.completion`` does the work.
"""
