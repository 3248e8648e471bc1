"""Dynamic micro-batching and admission control; generic over the work item, knows nothing about gRPC."""
