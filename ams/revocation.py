"""Revocation by certificate, and the CA's index of every certificate it issued.

`CertificateAuthority.issue` (ams/pki.py) appends each certificate it signs to `<dir>/issued.jsonl`
(`Issued`: serial, name, role, SHA-256 fingerprint, notAfter, file stem, SAN hosts), so `ams-admin
revoke NAME` can revoke every certificate ever issued to NAME, not only the one on disk now.

Revocations live in the Redis hash `REVOKED_CERTS_KEY`: field = the certificate's serial number in
lowercase hex, value = JSON {"name", "role", "revoked_at"}. A revocation names one certificate, so
issuing a new one for the same name gives a working certificate while the old stays refused, and
`unrevoke` (by serial only) can never revive another certificate than the one meant. The trainer
and the teacher look up the caller's serials on every call (`revoked_serials`; behind the load
balancer, the forwarded certificate's and the balancer's own); an unreachable Redis is UNAVAILABLE,
never a call served unchecked. The name-keyed hash `ams:revoked` of earlier versions is not read.
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ams import errors, keys, schema

log = logging.getLogger(__name__)
REVOKED_CERTS_KEY = keys.REVOKED_CERTS
INDEX_FILE = "issued.jsonl"
_HEX = re.compile(r"^[0-9a-f]{1,64}$")


def serial_hex(cert: x509.Certificate) -> str:
    """The certificate's serial number as lowercase hex, no 0x (the field of REVOKED_CERTS_KEY)."""
    return format(cert.serial_number, "x")


def sha256_hex(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex without colons (AMS_TRUSTED_PROXY_SHA256)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def san_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IPs a certificate is valid for (its subjectAltName)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def fingerprint(path: str) -> str:
    """SHA-256 fingerprint (lowercase hex) of the first certificate in a PEM file (a bundle too)."""
    with open(path, "rb") as f:
        return sha256_hex(x509.load_pem_x509_certificate(f.read()))


def normalize_serial(serial: str) -> str:
    """A serial as an operator may type it (0x prefix, colons, capitals) in the form stored."""
    text = serial.strip().lower().removeprefix("0x").replace(":", "").lstrip("0") or "0"
    if not _HEX.match(text):
        raise ValueError(f"serial {serial[:80]!r} is not hexadecimal")
    return text


def normalize_fingerprint(fingerprint: str) -> str:
    text = fingerprint.strip().lower().replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ValueError(f"{fingerprint[:100]!r} is not a SHA-256 fingerprint (64 hex digits; ams-admin fingerprint FILE)")
    return text


# --- the CA's index ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Issued:
    """One certificate the CA signed, as recorded in its index."""

    serial: str
    name: str
    role: str
    sha256: str
    not_after: str           # ISO 8601, UTC
    stem: str                # path of .pem/.key without the suffix, relative to the CA directory
    hosts: tuple[str, ...] = ()

    @classmethod
    def of(cls, cert: x509.Certificate, name: str, role: str, stem: str, hosts: Iterable[str]) -> "Issued":
        return cls(serial_hex(cert), name, role, sha256_hex(cert), cert.not_valid_after_utc.isoformat(), stem,
                   tuple(hosts))


def append_index(directory: str, issued: Issued) -> None:
    """Add one line to `<directory>/issued.jsonl` (O_APPEND: concurrent issuers never interleave)."""
    line = json.dumps({**asdict(issued), "hosts": list(issued.hosts)}, sort_keys=True) + "\n"
    fd = os.open(os.path.join(directory, INDEX_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_index(directory: str) -> list[Issued]:
    """Every certificate in the index, oldest first ([] when there is none yet)."""
    try:
        with open(os.path.join(directory, INDEX_FILE)) as f:
            lines = [line for line in f if line.strip()]
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        entry = json.loads(line)
        out.append(Issued(**{**entry, "hosts": tuple(entry.get("hosts", ()))}))
    return out


# --- revocations in Redis ---------------------------------------------------------------------

def revoked_serials(client: redis.Redis, serials: Iterable[str]) -> set[str]:
    """Those of `serials` that are revoked (one HMGET); Unavailable when Redis cannot answer, so a
    caller fails closed."""
    wanted = sorted({s for s in serials if s})
    if not wanted:
        return set()
    try:
        flags: Any = client.hmget(REVOKED_CERTS_KEY, wanted)
    except redis.RedisError as exc:
        raise errors.Unavailable(f"cannot check revocations (redis: {exc})") from exc
    return {s for s, flag in zip(wanted, flags) if flag is not None}


def revoke(client: redis.Redis, issued: Iterable[Issued]) -> list[str]:
    """Revoke these certificates; returns their serials."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    mapping: dict[Any, Any] = {i.serial: json.dumps({"name": i.name, "role": i.role, "revoked_at": now}) for i in issued}
    if mapping:
        client.hset(REVOKED_CERTS_KEY, mapping=mapping)
    return sorted(mapping)


def unrevoke(client: redis.Redis, serial: str) -> bool:
    """Accept this one certificate again; False when it was not revoked."""
    return bool(client.hdel(REVOKED_CERTS_KEY, normalize_serial(serial)))


def list_revoked(client: redis.Redis) -> dict[str, dict]:
    """Serial -> {"name", "role", "revoked_at"} of every revoked certificate."""
    raw: Any = client.hgetall(REVOKED_CERTS_KEY)
    out = {}
    for serial, value in raw.items():
        key = serial.decode() if isinstance(serial, bytes) else str(serial)
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = {"name": "?", "role": "?", "revoked_at": "?"}
    return out


class RevocationChecker:
    """Revocation checks for an asyncio server: the Redis call runs on a small pool of its own (never
    the loop's default executor, which other work may fill), raising Unauthenticated for a revoked
    certificate and Unavailable when Redis is down."""

    def __init__(self, url: str, threads: int = 2, timeout_s: float = 2.0):
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="revocation")
        weakref.finalize(self, self._executor.shutdown, wait=False)    # with the server that held it

    def check_schema(self) -> None:
        """At start: Redis holds no state of a later release (SchemaTooNew). Redis unreachable: not checked
        again (the teacher only reads revocations, and every call fails closed until Redis answers)."""
        try:
            schema.check(self.client)
        except redis.RedisError as exc:
            log.warning("Redis unreachable at start (%s): revocation checks fail closed until it answers", exc)

    async def check(self, serials: Iterable[str]) -> None:
        wanted = tuple(serials)
        revoked = await asyncio.get_running_loop().run_in_executor(self._executor, revoked_serials, self.client, wanted)
        if revoked:
            raise errors.Unauthenticated(f"certificate {sorted(revoked)[0]} has been revoked")

    def close(self) -> None:
        self._executor.shutdown(wait=False)
        self.client.close()
