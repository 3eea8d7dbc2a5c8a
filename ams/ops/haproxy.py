"""The gRPC load balancer's configuration (HAProxy 2.6, Debian's package): `python -m ams.ops.haproxy`
writes deploy/haproxy/haproxy.cfg (compose and Kubernetes: replicas found by DNS); the tests and
`make chaos` render the same configuration for replicas on loopback ports.

- **devices → trainers**: TLS with client certificates (HAProxy verifies each device against the
  operator's CA), every gRPC call routed by consistent hashing on the calling device (its verified
  certificate's CN: all calls of a device's sessions, OpenSession included, land on one replica while
  it lives, and on a survivor when it does not). The device's certificate is forwarded to the replica
  in `ams-client-cert` (overwritten, never passed through), which trusts it only on a connection from
  this balancer's `ams-proxy` certificate and checks it against the CA again.
- **services → teachers**: round robin per call, the caller's certificate forwarded the same way.
- **health**: grpc.health.v1 Check over HTTP/2 (TLS, the balancer's certificate), sent as raw frames
  by a tcp-check (HAProxy 2.6's http-check cannot send the NUL bytes of a gRPC message): a replica
  leaves the rotation when it stops answering SERVING (Redis or the teacher down, draining).
- **metrics**: HAProxy's Prometheus exporter on :8404/metrics.
- **limits** (`Limits`): `maxconn` for the process and per listener; per source IP at most
  `per_source_conns` connections open and `per_source_rate` new ones per 10 s, refused at accept
  (a stick table, before any TLS work); idle connections end in seconds. HAProxy 2.6 has no
  `timeout client-hs`; what it applies, measured against 2.6.12 (tests/integration/test_haproxy_limits.py):
  `timeout client` from accept to the end of the TLS handshake (a socket that never sends a
  ClientHello, or stops half-way) and to a client that stops reading; `timeout http-request` from
  the handshake to the first HTTP/2 request; `timeout http-keep-alive` on an HTTP/2 connection with
  no call open (after its first); an open call whose request is complete (every AMS streaming call
  is server-streaming: StreamUpdates, Health.Watch) idles under `timeout server` only, so update
  streams stay open for minutes while handshakes are cut after seconds. (`timeout tunnel` is for
  TCP mode and HTTP upgrades: not used.)
"""
from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass

HEALTH_PATH = "/grpc.health.v1.Health/Check"
SERVING_REPLY = "00000000020801"          # gRPC message: uncompressed, 2 bytes, HealthCheckResponse{status: SERVING}
ANY_REPLY = "0000000002080[0-3]"          # any HealthCheckResponse status


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _literal(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, new name, no Huffman coding (RFC 7541 §6.2.2)."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def grpc_health_request(scheme: str, service: str = "") -> bytes:
    """One grpc.health.v1.Health/Check call as raw HTTP/2: preface, SETTINGS, HEADERS, DATA."""
    headers = b"".join(_literal(k, v) for k, v in [
        (":method", "POST"), (":scheme", scheme), (":path", HEALTH_PATH), (":authority", "ams"),
        ("content-type", "application/grpc"), ("te", "trailers")])
    message = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""   # HealthCheckRequest
    body = b"\x00" + struct.pack(">I", len(message)) + message
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(0x4, 0, 0, b"") + _frame(0x1, 0x4, 1, headers)
            + _frame(0x0, 0x1, 1, body))


@dataclass(frozen=True)
class Pool:
    """The replicas of one backend: explicit host:port addresses, or a DNS name HAProxy resolves
    (compose's service name, a Kubernetes headless Service) into up to `slots` servers."""

    name: str
    port: int                               # the port the balancer listens on for this pool
    servers: tuple[str, ...] = ()
    dns: str = ""
    slots: int = 8


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the balancer, and for how long an idle connection is kept."""

    maxconn: int = 4096                     # connections the process accepts (global maxconn)
    frontend_maxconn: int = 2048            # per gRPC listener (the metrics listener: 64)
    per_source_conns: int = 64              # concurrent connections from one source IP
    per_source_rate: int = 200              # new connections from one source IP per 10 s
    handshake_s: float = 10                 # accept -> TLS handshake done; handshake -> first request
    keepalive_s: float = 60                 # an HTTP/2 connection with no call open
    stream_s: float = 3600                  # an open call with nothing flowing (update streams, Watch)


DEFAULT_LIMITS = Limits()


def _duration(seconds: float) -> str:
    """HAProxy's time format: 1h, 5m, 10s, 250ms."""
    ms = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


@dataclass(frozen=True)
class TLSFiles:
    ca: str
    bundle: str                             # the balancer's certificate and key in one PEM (ams-admin issue-proxy)


def _backend_lines(pool: Pool, balance: list[str], tls: TLSFiles | None) -> list[str]:
    request = grpc_health_request("https" if tls else "http").hex()
    server_opts = "check inter 1s fall 2 rise 2 proto h2"
    if tls:
        server_opts += (f" ssl verify required ca-file {tls.ca} crt {tls.bundle} alpn h2"
                        f" check-ssl check-alpn h2")
    lines = [f"backend {pool.name}", *balance,
             "  option tcp-check",
             "  tcp-check connect default" + (" ssl alpn h2" if tls else ""),
             f"  tcp-check send-binary {request}",
             f'  tcp-check expect rbinary {ANY_REPLY} comment "no\\ grpc.health.v1\\ reply"',
             f'  tcp-check expect rbinary {SERVING_REPLY} comment "not\\ SERVING"',
             f"  default-server {server_opts}"]
    if pool.dns:
        lines.append(f"  server-template {pool.name[:-1]} {pool.slots} {pool.dns} resolvers dns init-addr none")
    lines += [f"  server {pool.name[:-1]}{i + 1} {address}" for i, address in enumerate(pool.servers)]
    return lines


def _frontend_lines(pool: Pool, tls: TLSFiles | None, route: bool, limits: Limits) -> list[str]:
    bind = f"  bind :{pool.port} "
    bind += (f"ssl crt {tls.bundle} ca-file {tls.ca} verify required alpn h2" if tls else "proto h2")
    lines = [f"frontend {pool.name}_in", bind,
             f"  maxconn {limits.frontend_maxconn}",
             f"  # per source IP: {limits.per_source_conns} connections open, {limits.per_source_rate} new per 10 s;"
             " refused at accept, before any TLS work",
             "  stick-table type ipv6 size 100k expire 60s store conn_cur,conn_rate(10s)",
             "  tcp-request connection track-sc0 src",
             f"  tcp-request connection reject if {{ sc0_conn_cur gt {limits.per_source_conns} }}"
             f" || {{ sc0_conn_rate gt {limits.per_source_rate} }}"]
    if tls:
        lines.append("  http-request set-header ams-client-cert %[ssl_c_der,base64]")
    else:
        lines.append("  http-request del-header ams-client-cert")
    if route:   # the caller's identity: the verified certificate (or, in plain-text mode, its header)
        lines.append("  http-request set-var(txn.route) " + ("ssl_c_s_dn(CN)" if tls else "req.hdr(ams-device-id)"))
    return lines + [f"  default_backend {pool.name}"]


def render(trainers: Pool, teachers: Pool, tls: TLSFiles | None, metrics_port: int = 8404,
           bind_address: str | tuple[str, ...] = "", limits: Limits = DEFAULT_LIMITS) -> str:
    """The whole haproxy.cfg. `bind_address` (e.g. 127.0.0.1, or several) restricts every listener to it."""
    resolvers = ["resolvers dns", "  parse-resolv-conf", "  hold valid 5s", "  hold obsolete 5s", ""] \
        if trainers.dns or teachers.dns else []
    lines = [
        "# Generated by `python -m ams.ops.haproxy` (ams/ops/haproxy.py explains every part): edit that, not this.",
        "global",
        "  log stdout format raw local0 notice",
        "  tune.ssl.default-dh-param 2048",
        f"  maxconn {limits.maxconn}",
        "",
        "defaults",
        "  mode http",
        "  log global",
        "  option httplog",
        "  option dontlog-normal",
        "  option redispatch",
        "  retries 2",
        "  timeout connect 3s",
        "  timeout check 2s",
        "  # HAProxy 2.6 has no timeout client-hs: client = accept -> TLS handshake done (and a client that stops",
        "  # reading); http-request = handshake -> first HTTP/2 request; http-keep-alive = no call open; an open",
        "  # call whose request is complete (server-streaming: update streams, Health.Watch) idles under server only",
        f"  timeout client {_duration(limits.handshake_s)}",
        f"  timeout http-request {_duration(limits.handshake_s)}",
        f"  timeout http-keep-alive {_duration(limits.keepalive_s)}",
        f"  timeout server {_duration(limits.stream_s)}",
        "  timeout client-fin 5s",
        "",
        *resolvers,
        *_frontend_lines(trainers, tls, route=True, limits=limits), "",
        *_backend_lines(trainers, ["  balance hash var(txn.route)", "  hash-type consistent"], tls), "",
        *_frontend_lines(teachers, tls, route=False, limits=limits), "",
        *_backend_lines(teachers, ["  balance roundrobin"], tls), "",
        "frontend metrics",
        f"  bind :{metrics_port}",
        "  maxconn 64",
        "  http-request use-service prometheus-exporter if { path /metrics }",
        "  http-request return status 200 content-type text/plain string ok if { path /healthz }",
        "",
    ]
    addresses = (bind_address,) if isinstance(bind_address, str) else bind_address
    if any(addresses):
        lines = [line.replace("  bind :", f"  bind {a}:") for line in lines
                 for a in (addresses if line.startswith("  bind :") else ("",))]
    return "\n".join(lines)


DEPLOY_TLS = TLSFiles(ca="/pki/ca.pem", bundle="/pki/lb.bundle.pem")


def deployed(trainer_dns: str = "trainer", teacher_dns: str = "teacher") -> str:
    """deploy/haproxy/haproxy.cfg: replicas by DNS (compose service names; Kubernetes headless Services)."""
    return render(Pool("trainers", 50052, dns=f"{trainer_dns}:50052"), Pool("teachers", 50051, dns=f"{teacher_dns}:50051"),
                  DEPLOY_TLS)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="deploy/haproxy/haproxy.cfg")
    args = p.parse_args(argv)
    with open(args.out, "w") as f:
        f.write(deployed())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
