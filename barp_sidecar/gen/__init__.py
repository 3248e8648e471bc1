"""Generated gRPC stubs for barp.v1 (see barp_sidecar.rpc.codegen); do not edit."""
