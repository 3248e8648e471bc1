"""barp-sidecar: a gRPC sidecar that routes prompts to LLMs with a BaRP policy (arXiv 2510.07429).

Importing this package has no side effects; the composition root is ``barp_sidecar.app``.
"""

__version__ = "0.1.0"
