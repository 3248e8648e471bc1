"""gRPC transport: server, servicers, pb<->domain conversion, the error->status table."""
