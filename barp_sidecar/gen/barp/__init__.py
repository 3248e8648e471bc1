"""Generated gRPC stubs (barp_sidecar.rpc.codegen); do not edit."""
