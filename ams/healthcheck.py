"""`python -m ams.healthcheck HOST:PORT [SERVICE]`: exit 0 iff the server reports SERVING (for containers)."""
from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    """True when the gRPC health service at `address` answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m ams.healthcheck HOST:PORT [SERVICE]")
    sys.exit(0 if check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "") else 1)
