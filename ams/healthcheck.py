"""`python -m ams.healthcheck HOST:PORT [--service S] [--ca F --cert F --key F]`: exit 0 iff the
server reports SERVING (for containers). With TLS, the probe presents a service certificate
(the container's own); the files default to AMS_TLS_CA/CERT/KEY or AMS_TEACHER_TLS_CA/CERT/KEY."""
from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ams.pki import CertFiles
from ams.tls import channel


def check(address: str, service: str = "", timeout_s: float = 3.0, tls: CertFiles | None = None) -> bool:
    """True when the gRPC health service at `address` answers SERVING."""
    with channel(address, tls) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m ams.healthcheck", description=__doc__)
    p.add_argument("address")
    p.add_argument("--service", default="")
    for name in ("ca", "cert", "key"):
        p.add_argument(f"--{name}", default=env(f"AMS_TLS_{name.upper()}") or env(f"AMS_TEACHER_TLS_{name.upper()}", ""))
    args = p.parse_args(argv)
    tls = CertFiles(args.ca, args.cert, args.key) if args.ca else None
    return 0 if check(args.address, args.service, tls=tls) else 1


if __name__ == "__main__":
    sys.exit(main())
