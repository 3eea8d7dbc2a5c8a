"""The operator's certificate authority (built on `cryptography`): a CA, service certificates and
one certificate per device. `ams-admin` (ams/admin.py) is its command line.

Every certificate names its role in the subject's organizational unit: `ams-service` for the
teacher, the trainer and operator tools, `ams-device` for edge devices, whose device id is the
subject's common name, `ams-proxy` for the gRPC load balancer (it verifies each device's
certificate itself and forwards it to the trainer, `forwarded_identity`). Keys are ECDSA P-256.
"""
from __future__ import annotations

import datetime
import functools
import ipaddress
import os
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEVICE_ROLE, SERVICE_ROLE, PROXY_ROLE = "ams-device", "ams-service", "ams-proxy"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
REVOKED_KEY = "ams:revoked"       # Redis hash: device id -> when it was revoked (the trainer refuses these)


@dataclass(frozen=True)
class Identity:
    """Who a verified peer certificate says it is."""

    role: str
    name: str


@dataclass(frozen=True)
class CertFiles:
    ca: str
    cert: str
    key: str


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id or ""):
        raise ValueError(f"device id {device_id[:80]!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric")
    return device_id


def _name(cn: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AMS"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes, private: bool = False) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    """The CA in `directory` (ca.pem + ca.key); `init` creates it when absent."""

    def __init__(self, directory: str):
        self.dir = directory
        with open(self.path("ca.pem"), "rb") as f:
            self.cert = x509.load_pem_x509_certificate(f.read())
        with open(self.path("ca.key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory}: the CA key is not an ECDSA key (ams-admin init makes one)")
        self.key = key

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @classmethod
    def init(cls, directory: str, days: int = 3650) -> "CertificateAuthority":
        """Open the CA in `directory`, creating it first if there is none (never overwrites one)."""
        if not os.path.exists(os.path.join(directory, "ca.pem")):
            key = ec.generate_private_key(ec.SECP256R1())
            now = datetime.datetime.now(datetime.timezone.utc)
            name = _name("AMS operator CA", "ams-ca")
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=days))
                    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                    .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                 content_commitment=False, key_encipherment=False,
                                                 data_encipherment=False, key_agreement=False,
                                                 encipher_only=False, decipher_only=False), critical=True)
                    .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                    .sign(key, hashes.SHA256()))
            _write(os.path.join(directory, "ca.key"), _key_pem(key), private=True)
            _write(os.path.join(directory, "ca.pem"), cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory)

    def issue(self, cn: str, role: str, hosts: list[str], out_stem: str, days: int = 825) -> CertFiles:
        """Sign a new key for `cn` with `role`; server certificates name `hosts` (DNS names or IPs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
        builder = (x509.CertificateBuilder().subject_name(_name(cn, role)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        files = CertFiles(self.path("ca.pem"), out_stem + ".pem", out_stem + ".key")
        _write(files.key, _key_pem(key), private=True)
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        return files

    def issue_service(self, name: str, hosts: list[str]) -> CertFiles:
        return self.issue(name, SERVICE_ROLE, hosts, self.path(name))

    def issue_proxy(self, name: str, hosts: list[str]) -> CertFiles:
        """The load balancer's certificate (served to devices and services, presented to the
        replicas), and `name`.bundle.pem, certificate + key in one file as HAProxy reads it."""
        files = self.issue(name, PROXY_ROLE, hosts, self.path(name))
        with open(files.cert, "rb") as cert, open(files.key, "rb") as key:
            _write(self.path(name + ".bundle.pem"), cert.read() + key.read(), private=True)
        return files

    def issue_device(self, device_id: str) -> CertFiles:
        return self.issue(check_device_id(device_id), DEVICE_ROLE, [], self.path("devices", device_id))


def init_pki(directory: str, trainer_hosts: list[str], teacher_hosts: list[str]) -> CertificateAuthority:
    """CA plus the trainer's and the teacher's certificates, and the load balancer's, which answers
    for both (made when missing; existing ones kept)."""
    ca = CertificateAuthority.init(directory)
    for name, hosts in (("trainer", trainer_hosts), ("teacher", teacher_hosts)):
        if not os.path.exists(ca.path(name + ".pem")):
            ca.issue_service(name, hosts)
    if not os.path.exists(ca.path("lb.bundle.pem")):
        ca.issue_proxy("lb", list(dict.fromkeys([*trainer_hosts, *teacher_hosts, "lb"])))
    return ca


@functools.lru_cache(maxsize=4096)
def identity_of(pem: bytes) -> Identity:
    """Role and name from a peer certificate that TLS has already verified against the CA."""
    cert = x509.load_pem_x509_certificate(pem)
    attrs = {a.oid: a.value for a in cert.subject}
    return Identity(str(attrs.get(NameOID.ORGANIZATIONAL_UNIT_NAME, "")), str(attrs.get(NameOID.COMMON_NAME, "")))


class ForwardedCertificateError(ValueError):
    """A certificate forwarded by the load balancer that this CA did not sign, or is not valid now."""


def forwarded_identity(der: bytes, ca_pem: bytes) -> Identity:
    """Identity from a client certificate the load balancer verified and forwarded (DER). Checked
    again here: signed by the operator's CA (`ca_pem`) and within its validity period."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise ForwardedCertificateError(f"forwarded client certificate is not DER X.509: {exc}") from exc
    ca = _ca_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ForwardedCertificateError("forwarded client certificate is not signed by this CA") from exc
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ForwardedCertificateError("forwarded client certificate is expired or not yet valid")
    return identity_of(cert.public_bytes(serialization.Encoding.PEM))


@functools.lru_cache(maxsize=4)
def _ca_certificate(ca_pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ca_pem)
