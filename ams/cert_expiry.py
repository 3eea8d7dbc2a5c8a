"""The expiry of a service's own TLS certificate as a Prometheus gauge (alert AmsCertificateExpiresSoon,
deploy/prometheus/alerts.yml): one family for the trainer and the teacher, set once at start."""
from __future__ import annotations

from cryptography import x509
from prometheus_client import Gauge

from ams.pki import identity_of

CERT_EXPIRY = Gauge("ams_tls_certificate_expiry_timestamp_seconds",
                    "notAfter (unix seconds) of the certificate this service serves with", ["service", "role", "name"])


def record(service: str, cert_path: str) -> float:
    """Set the gauge from `cert_path` (PEM); returns notAfter in unix seconds."""
    with open(cert_path, "rb") as f:
        pem = f.read()
    cert = x509.load_pem_x509_certificate(pem)
    identity = identity_of(pem)
    not_after = cert.not_valid_after_utc.timestamp()
    CERT_EXPIRY.labels(service, identity.role, identity.name).set(not_after)
    return not_after


def record_of(config, service: str) -> None:
    """`record` for a service config in TLS mode (nothing in plain-text mode)."""
    if not config.insecure and config.tls_cert:
        record(service, config.tls_cert)
