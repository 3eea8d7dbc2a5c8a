"""The operator's certificate authority (built on `cryptography`): a CA, service certificates and
one certificate per device. `ams-admin` (ams/admin.py) is its command line.

Every certificate names its role in the subject's organizational unit: `ams-service` for the
teacher, the trainer and operator tools, `ams-device` for edge devices, whose device id is the
subject's common name, `ams-proxy` for the gRPC load balancer (it verifies each device's
certificate itself and forwards it; a service believes that only from a balancer whose certificate
fingerprint it is configured with, ams/tls.py). Keys are ECDSA P-256, written 0600 through a new
file (O_EXCL) that replaces the old one. Each certificate issued is recorded in the CA's index
(ams/revocation.py), where revocation by serial finds it.
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

from ams.revocation import Issued, append_index, read_index, san_hosts, serial_hex, sha256_hex

DEVICE_ROLE, SERVICE_ROLE, PROXY_ROLE = "ams-device", "ams-service", "ams-proxy"
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
RESERVED_NAMES = {"ca", "lb"}     # the CA's own files, and the load balancer's (ams-admin issue-proxy lb)


@dataclass(frozen=True)
class Identity:
    """Who a verified peer certificate says it is: role and name, and the certificate's serial
    (lowercase hex) and SHA-256 fingerprint; `via`: the serials of the certificates that vouched
    for it on the way (the load balancer's, for a forwarded certificate)."""

    role: str
    name: str
    serial: str = ""
    sha256: str = ""
    via: tuple[str, ...] = ()

    @property
    def serials(self) -> tuple[str, ...]:
        """Every certificate this identity rests on: each must be unrevoked."""
        return tuple(s for s in (self.serial, *self.via) if s)


@dataclass(frozen=True)
class CertFiles:
    ca: str
    cert: str
    key: str


class CertificateExists(ValueError):
    """A certificate of that name exists already (re-issue with force=True / --force)."""


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID.match(device_id or "") or device_id.endswith(".bundle"):
        raise ValueError(f"name {device_id[:80]!r} must be 1-64 of [A-Za-z0-9._-], starting alphanumeric "
                         f"(not ending .bundle)")
    return device_id


def check_service_name(name: str, proxy: bool = False) -> str:
    """A service or proxy certificate's name: a device id that is not one of the CA's own files
    (`ca`) nor, for a service, the load balancer's (`lb`)."""
    check_device_id(name)
    if name.lower() == "ca" or (not proxy and name.lower() in RESERVED_NAMES):
        raise ValueError(f"{name!r} is reserved (the CA's or the load balancer's files); choose another name")
    return name


def _name(cn: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "AMS"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: str, data: bytes, private: bool = False) -> None:
    """Write `path` whole or not at all: a new file (O_EXCL, mode 0600 for keys, fchmod'd so no umask
    or earlier file's mode survives) that then replaces the old one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    mode = 0o600 if private else 0o644
    tmp = f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        append_index(self.dir, Issued.of(cert, cn, role, os.path.relpath(out_stem, self.dir), hosts))
        return files

    def _check_new(self, stem: str, role: str, force: bool) -> None:
        """Refuse to replace a certificate without `force`, and one of another role ever."""
        if not os.path.exists(stem + ".pem"):
            return
        with open(stem + ".pem", "rb") as f:
            held = identity_of(f.read()).role
        if held != role:
            raise CertificateExists(f"{stem}.pem is an {held or 'unknown'} certificate, not {role}: choose another name")
        if not force:
            raise CertificateExists(f"{stem}.pem exists: --force issues a new key and certificate in its place "
                                    f"(the old one stays valid until revoked: ams-admin revoke --serial)")

    def issue_service(self, name: str, hosts: list[str], force: bool = False, days: int = 825) -> CertFiles:
        self._check_new(self.path(check_service_name(name)), SERVICE_ROLE, force)
        return self.issue(name, SERVICE_ROLE, hosts, self.path(name), days)

    def issue_proxy(self, name: str, hosts: list[str], force: bool = False, days: int = 825) -> CertFiles:
        """The load balancer's certificate (served to devices and services, presented to the
        replicas), and `name`.bundle.pem (0600), certificate + key in one file as HAProxy reads it."""
        self._check_new(self.path(check_service_name(name, proxy=True)), PROXY_ROLE, force)
        files = self.issue(name, PROXY_ROLE, hosts, self.path(name), days)
        with open(files.cert, "rb") as cert, open(files.key, "rb") as key:
            _write(self.path(name + ".bundle.pem"), cert.read() + key.read(), private=True)
        return files

    def issue_device(self, device_id: str, force: bool = False, days: int = 825) -> CertFiles:
        self._check_new(self.path("devices", check_device_id(device_id)), DEVICE_ROLE, force)
        return self.issue(device_id, DEVICE_ROLE, [], self.path("devices", device_id), days)

    def issued_to(self, name: str) -> list[Issued]:
        """Every certificate issued to `name` (any role), oldest first: the index, plus any
        certificate on disk under that name that predates it."""
        found = [i for i in read_index(self.dir) if i.name == check_device_id(name)]
        for stem in (os.path.join("devices", name), name):
            path = self.path(stem + ".pem")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    cert = x509.load_pem_x509_certificate(f.read())
                ident = identity_of(cert.public_bytes(serialization.Encoding.PEM))
                if ident.name == name and ident.serial not in {i.serial for i in found}:
                    found.insert(0, Issued.of(cert, name, ident.role, stem, san_hosts(cert)))
        return found

    def renew(self, name: str, role: str = "", days: int = 825) -> tuple[Issued, CertFiles]:
        """A new key and certificate for `name`'s latest certificate (same role, same hosts, fresh
        validity) in its place; the old one stays valid until revoked. Returns (old, new files)."""
        held = [i for i in self.issued_to(name) if not role or i.role == role]
        if not held:
            raise ValueError(f"no certificate issued to {name!r}{f' as {role}' if role else ''} in {self.dir}")
        if len({i.role for i in held}) > 1:
            raise ValueError(f"{name!r} has certificates of roles {sorted({i.role for i in held})}: say which (--role)")
        old = held[-1]
        if old.role == DEVICE_ROLE:
            return old, self.issue_device(name, force=True, days=days)
        if old.role == PROXY_ROLE:
            return old, self.issue_proxy(name, list(old.hosts), force=True, days=days)
        return old, self.issue(name, old.role, list(old.hosts), self.path(check_service_name(name)), days)


def init_pki(directory: str, trainer_hosts: list[str], teacher_hosts: list[str]) -> CertificateAuthority:
    """CA plus the trainer's and the teacher's certificates (made when missing; existing ones kept).
    No load balancer certificate: that is `issue_proxy`, only where a balancer runs."""
    ca = CertificateAuthority.init(directory)
    for name, hosts in (("trainer", trainer_hosts), ("teacher", teacher_hosts)):
        if not os.path.exists(ca.path(name + ".pem")):
            ca.issue_service(name, hosts)
    return ca


@functools.lru_cache(maxsize=4096)
def identity_of(pem: bytes) -> Identity:
    """Role and name from a peer certificate that TLS has already verified against the CA."""
    cert = x509.load_pem_x509_certificate(pem)
    attrs = {a.oid: a.value for a in cert.subject}
    return Identity(str(attrs.get(NameOID.ORGANIZATIONAL_UNIT_NAME, "")), str(attrs.get(NameOID.COMMON_NAME, "")),
                    serial_hex(cert), sha256_hex(cert))


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
