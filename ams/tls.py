"""TLS for every gRPC server and client: server ports with (mutual) TLS, client channels with a
certificate, and the verified identity of the peer of a call.

Plain text is only ever used when the caller passes `files=None` explicitly (the services'
`AMS_INSECURE=true`), and the services warn at start-up when they do.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses

import grpc

from ams import errors
from ams.config import ConfigError
from ams.pki import PROXY_ROLE, CertFiles, ForwardedCertificateError, Identity, forwarded_identity, identity_of
from ams.revocation import normalize_fingerprint

# The header in which the load balancer forwards the client certificate it verified (base64 DER).
CLIENT_CERT_HEADER = "ams-client-cert"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def server_credentials(files: CertFiles, require_client_auth: bool = True) -> grpc.ServerCredentials:
    """TLS with the server's certificate; with `require_client_auth`, only clients holding a
    certificate signed by `files.ca` complete the handshake."""
    return grpc.ssl_server_credentials([(_read(files.key), _read(files.cert))], root_certificates=_read(files.ca),
                                       require_client_auth=require_client_auth)


def channel_credentials(files: CertFiles) -> grpc.ChannelCredentials:
    """Trust `files.ca`; present `files.cert` (when given) as the client certificate."""
    if files.cert:
        return grpc.ssl_channel_credentials(_read(files.ca), _read(files.key), _read(files.cert))
    return grpc.ssl_channel_credentials(_read(files.ca))


def bind(server, address: str, files: CertFiles | None) -> int:
    """Add a port to a (sync or aio) server: mutual TLS when `files`, else plain text."""
    if files is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, server_credentials(files))


def channel(address: str, files: CertFiles | None, options: list | None = None) -> grpc.Channel:
    if files is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, channel_credentials(files), options=options)


def aio_channel(address: str, files: CertFiles | None, options: list | None = None) -> grpc.aio.Channel:
    if files is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(files), options=options)


def peer_identity(context) -> Identity:
    """Role and name of the caller's certificate (already verified against the CA by the handshake)."""
    auth = context.auth_context() or {}
    pem = (auth.get("x509_pem_cert") or [b""])[0]
    if not pem:
        raise errors.Unauthenticated("no client certificate on this call")
    return identity_of(pem)


def caller_identity(context, ca_pem: bytes, trusted_proxies: frozenset[str]) -> Identity:
    """Who is calling: the peer certificate's identity or, when the peer is a load balancer (role
    ams-proxy) whose certificate's SHA-256 is one of `trusted_proxies`, that of the client
    certificate it verified and forwarded in `CLIENT_CERT_HEADER`, checked again against the CA
    (its `via` then names the balancer's serial: both are checked for revocation). A client cannot
    forge the header: the load balancer overwrites it, and it is read only on a connection from a
    trusted balancer's certificate. Any other ams-proxy certificate is PERMISSION_DENIED, so a
    proxy bundle is no key to a service that was not told to trust it."""
    peer = peer_identity(context)
    if peer.role != PROXY_ROLE:
        return peer
    if not trusted_proxies:
        raise errors.PermissionDenied("an ams-proxy certificate: this service trusts no load balancer "
                                      "(its TRUSTED_PROXY_SHA256 setting is empty)")
    if peer.sha256 not in trusted_proxies:
        raise errors.PermissionDenied("this ams-proxy certificate is not a trusted balancer of this service")
    value = next((v for k, v in context.invocation_metadata() or () if k == CLIENT_CERT_HEADER), "")
    if not value:
        raise errors.Unauthenticated("the load balancer forwarded no client certificate")
    try:
        forwarded = forwarded_identity(base64.b64decode(value, validate=True), ca_pem)
    except (binascii.Error, ValueError, ForwardedCertificateError) as exc:
        raise errors.Unauthenticated(f"forwarded client certificate refused: {exc}") from exc
    return dataclasses.replace(forwarded, via=(peer.serial,))


def trusted_proxies_of(config) -> frozenset[str]:
    """The balancers' certificate fingerprints a service trusts (`trusted_proxy_sha256`, comma-
    separated, colons allowed); empty: no forwarded identity at all. ConfigError on a malformed one."""
    raw = getattr(config, "trusted_proxy_sha256", "") or ""
    try:
        return frozenset(normalize_fingerprint(f) for f in raw.split(",") if f.strip())
    except ValueError as exc:
        raise ConfigError(f"trusted_proxy_sha256: {exc}") from exc


def files_of(config) -> CertFiles | None:
    """The service's own certificate files from its config, or None in explicit plain-text mode."""
    return None if config.insecure else CertFiles(config.tls_ca, config.tls_cert, config.tls_key)


def ca_pem_of(config) -> bytes:
    """The service's CA certificate (PEM), b"" in plain-text mode."""
    return b"" if config.insecure else _read(config.tls_ca)


def warn_if_insecure(config, log, name: str) -> None:
    if config.insecure:
        log.warning("%s serves PLAIN TEXT without client certificates (insecure mode): for a local demo only, "
                    "never on a published port", name)
