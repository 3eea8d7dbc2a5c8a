"""ams-admin and the CA: names that cannot overwrite the CA or leave --dir, keys that end 0600 on every
re-issue, the index of issued certificates, renew, fingerprints, revocation by serial, and the
trusted-balancer rule of `ams.tls.caller_identity` (issue 22: Medium 4 and 5, Low)."""
from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ams import cert_expiry, errors, revocation, tls
from ams.admin import main as ams_admin
from ams.pki import DEVICE_ROLE, PROXY_ROLE, SERVICE_ROLE, CertificateAuthority


def _cert(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def _mode(path: str) -> str:
    return oct(os.stat(path).st_mode & 0o777)


@pytest.fixture
def pki_dir(tmp_path) -> str:
    directory = str(tmp_path / "pki")
    assert ams_admin(["init", "--dir", directory]) == 0
    return directory


def test_init_makes_no_load_balancer_bundle(pki_dir):
    assert sorted(os.listdir(pki_dir)) == ["ca.key", "ca.pem", "issued.jsonl", "teacher.key", "teacher.pem",
                                           "trainer.key", "trainer.pem"]
    assert {_mode(os.path.join(pki_dir, f)) for f in ("ca.key", "teacher.key", "trainer.key")} == {"0o600"}


def test_an_existing_name_is_refused_without_force_and_a_0644_key_ends_0600(pki_dir, capsys):
    key = os.path.join(pki_dir, "devices", "cam-1.key")
    assert ams_admin(["issue-device", "cam-1", "--dir", pki_dir]) == 0
    first = _cert(os.path.join(pki_dir, "devices", "cam-1.pem")).serial_number
    os.chmod(key, 0o644)                                       # an operator's slip, or an old ams-admin
    capsys.readouterr()
    assert ams_admin(["issue-device", "cam-1", "--dir", pki_dir]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err
    assert _cert(os.path.join(pki_dir, "devices", "cam-1.pem")).serial_number == first    # nothing replaced
    old_umask = os.umask(0)                                    # not even a permissive umask widens it
    try:
        assert ams_admin(["issue-device", "cam-1", "--dir", pki_dir, "--force"]) == 0
    finally:
        os.umask(old_umask)
    assert _mode(key) == "0o600"
    assert _cert(os.path.join(pki_dir, "devices", "cam-1.pem")).serial_number != first
    assert not [f for f in os.listdir(os.path.join(pki_dir, "devices")) if f.endswith(".tmp")]
    assert ams_admin(["issue-service", "trainer", "--dir", pki_dir]) == 2              # services too


def test_names_that_would_overwrite_the_ca_or_leave_the_directory_are_refused(pki_dir, tmp_path):
    ca_pem = open(os.path.join(pki_dir, "ca.pem")).read()
    for name in ("ca", "CA", "lb", "../x", "..", "a/b", "x.bundle", ".hidden", ""):
        assert ams_admin(["issue-service", name, "--dir", pki_dir]) == 2, name
        assert ams_admin(["issue-service", name, "--dir", pki_dir, "--force"]) == 2, name
    for name in ("../x", "ca/../../y", "..", "lb.bundle"):
        assert ams_admin(["issue-device", name, "--dir", pki_dir, "--force"]) == 2, name
        assert ams_admin(["issue-proxy", name, "--dir", pki_dir, "--force"]) == 2, name
    assert ams_admin(["issue-proxy", "ca", "--dir", pki_dir, "--force"]) == 2
    assert open(os.path.join(pki_dir, "ca.pem")).read() == ca_pem
    assert not (tmp_path / "x.pem").exists() and not (tmp_path / "x.key").exists()
    # a name of one role is never re-issued as another, --force or not
    assert ams_admin(["issue-proxy", "trainer", "--dir", pki_dir, "--force"]) == 2
    assert _cert(os.path.join(pki_dir, "trainer.pem")).subject.rfc4514_string().count(SERVICE_ROLE) == 1


def test_issue_proxy_writes_a_0600_bundle_and_prints_its_fingerprint(pki_dir, capsys):
    capsys.readouterr()
    assert ams_admin(["issue-proxy", "lb", "--dir", pki_dir, "--host", "lb.example.com"]) == 0
    out = capsys.readouterr().out
    der = _cert(os.path.join(pki_dir, "lb.pem")).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    assert f"sha256 {digest}" in out
    assert _mode(os.path.join(pki_dir, "lb.bundle.pem")) == "0o600" and _mode(os.path.join(pki_dir, "lb.key")) == "0o600"
    assert ams_admin(["fingerprint", os.path.join(pki_dir, "lb.pem")]) == 0
    assert capsys.readouterr().out.strip() == digest
    assert ams_admin(["fingerprint", os.path.join(pki_dir, "lb.bundle.pem")]) == 0      # the bundle's certificate
    assert capsys.readouterr().out.strip() == digest
    assert ams_admin(["issue-proxy", "lb", "--dir", pki_dir]) == 2


def test_the_index_records_every_certificate_issued(pki_dir):
    ca = CertificateAuthority(pki_dir)
    ca.issue_device("cam-2")
    ca.issue_device("cam-2", force=True)
    ca.issue_proxy("lb", ["lb"])
    index = revocation.read_index(pki_dir)
    assert [(i.name, i.role) for i in index] == [("trainer", SERVICE_ROLE), ("teacher", SERVICE_ROLE),
                                                 ("cam-2", DEVICE_ROLE), ("cam-2", DEVICE_ROLE), ("lb", PROXY_ROLE)]
    current = _cert(os.path.join(pki_dir, "devices", "cam-2.pem"))
    assert index[3].serial == format(current.serial_number, "x") and index[3].stem == os.path.join("devices", "cam-2")
    assert index[3].sha256 == revocation.fingerprint(os.path.join(pki_dir, "devices", "cam-2.pem"))
    assert index[3].not_after == current.not_valid_after_utc.isoformat()
    assert index[0].hosts == ("localhost", "127.0.0.1", "trainer")
    assert len({i.serial for i in index}) == 5
    assert [i.serial for i in ca.issued_to("cam-2")] == [index[2].serial, index[3].serial]


def test_renew_keeps_role_and_hosts_with_a_new_key(pki_dir, capsys):
    before = _cert(os.path.join(pki_dir, "trainer.pem"))
    key_before = open(os.path.join(pki_dir, "trainer.key"), "rb").read()
    capsys.readouterr()
    assert ams_admin(["renew", "trainer", "--dir", pki_dir, "--days", "30"]) == 0
    out = capsys.readouterr().out
    after = _cert(os.path.join(pki_dir, "trainer.pem"))
    assert f"revoke --serial {format(before.serial_number, 'x')}" in out        # the hint: the old one still works
    assert after.serial_number != before.serial_number and after.subject == before.subject
    assert open(os.path.join(pki_dir, "trainer.key"), "rb").read() != key_before
    assert after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == \
        before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert 29 <= (after.not_valid_after_utc - after.not_valid_before_utc).days <= 30
    assert ams_admin(["issue-device", "cam-3", "--dir", pki_dir]) == 0
    assert ams_admin(["renew", "cam-3", "--dir", pki_dir]) == 0
    assert [i.role for i in CertificateAuthority(pki_dir).issued_to("cam-3")] == [DEVICE_ROLE, DEVICE_ROLE]
    assert _mode(os.path.join(pki_dir, "devices", "cam-3.key")) == "0o600"
    assert ams_admin(["renew", "nobody", "--dir", pki_dir]) == 2


def test_revocation_is_by_serial_and_unrevoke_takes_only_a_serial(pki_dir, redis_url, capsys):
    ca = CertificateAuthority(pki_dir)
    ca.issue_device("cam-4")
    old = revocation.read_index(pki_dir)[-1].serial
    assert ams_admin(["revoke", "cam-4", "--dir", pki_dir, "--redis-url", redis_url]) == 0
    ca.issue_device("cam-4", force=True)
    new = revocation.read_index(pki_dir)[-1].serial
    client = redis.Redis.from_url(redis_url)
    assert revocation.revoked_serials(client, [old, new]) == {old}
    assert json.loads(client.hget(revocation.REVOKED_CERTS_KEY, old))["name"] == "cam-4"
    assert not client.exists("ams:revoked")                                   # the name-keyed hash is gone
    with pytest.raises(SystemExit) as exit_:                                    # unrevoking a name is impossible
        ams_admin(["unrevoke", "cam-4", "--redis-url", redis_url])
    assert exit_.value.code == 2
    assert ams_admin(["revoke", "cam-4", "--dir", pki_dir, "--redis-url", redis_url]) == 0   # both of them now
    assert ams_admin(["unrevoke", "--serial", "0x" + new.upper(), "--redis-url", redis_url]) == 0
    assert revocation.revoked_serials(client, [old, new]) == {old}
    capsys.readouterr()
    assert ams_admin(["revoked", "--redis-url", redis_url]) == 0
    assert capsys.readouterr().out.startswith(f"{old}\tcam-4\t{DEVICE_ROLE}\trevoked ")
    assert ams_admin(["unrevoke", "--serial", new, "--redis-url", redis_url]) == 2      # not revoked
    assert ams_admin(["revoke", "--serial", "not-hex", "--redis-url", redis_url]) == 2
    assert ams_admin(["revoke", "nobody", "--dir", pki_dir, "--redis-url", redis_url]) == 2
    ca.issue_service("probe", [])                                              # service certificates too
    assert ams_admin(["revoke", "probe", "--dir", pki_dir, "--redis-url", redis_url]) == 0
    assert revocation.revoked_serials(client, [revocation.read_index(pki_dir)[-1].serial])


def test_a_redis_outage_is_unavailable_never_not_revoked():
    dead = redis.Redis(port=1, socket_connect_timeout=0.5)
    with pytest.raises(errors.Unavailable):
        revocation.revoked_serials(dead, ["ab"])
    assert revocation.revoked_serials(dead, []) == set()


class _Context:
    """What caller_identity reads of a grpc ServicerContext."""

    def __init__(self, pem: bytes, metadata=()):
        self.pem, self.metadata = pem, tuple(metadata)

    def auth_context(self):
        return {"x509_pem_cert": [self.pem]}

    def invocation_metadata(self):
        return self.metadata


def test_only_a_trusted_balancer_may_forward_an_identity(pki_dir):
    ca = CertificateAuthority(pki_dir)
    lb, other, device = ca.issue_proxy("lb", ["lb"]), ca.issue_proxy("lb2", ["lb"]), ca.issue_device("cam-5")
    ca_pem, lb_pem = open(ca.path("ca.pem"), "rb").read(), open(lb.cert, "rb").read()
    header = (("ams-client-cert", base64.b64encode(_cert(device.cert).public_bytes(serialization.Encoding.DER)).decode()),)
    trusted = frozenset({revocation.fingerprint(lb.cert)})
    with pytest.raises(errors.PermissionDenied, match="trusts no load balancer"):
        tls.caller_identity(_Context(lb_pem, header), ca_pem, frozenset())
    with pytest.raises(errors.PermissionDenied, match="not a trusted balancer"):
        tls.caller_identity(_Context(open(other.cert, "rb").read(), header), ca_pem, trusted)
    with pytest.raises(errors.Unauthenticated, match="forwarded no client certificate"):
        tls.caller_identity(_Context(lb_pem), ca_pem, trusted)
    identity = tls.caller_identity(_Context(lb_pem, header), ca_pem, trusted)
    lb_serial, device_serial = (format(_cert(p).serial_number, "x") for p in (lb.cert, device.cert))
    assert (identity.role, identity.name, identity.serials) == (DEVICE_ROLE, "cam-5", (device_serial, lb_serial))
    direct = tls.caller_identity(_Context(open(device.cert, "rb").read(), header), ca_pem, trusted)
    assert direct.serials == (device_serial,)       # a device's own header is ignored on a direct connection


def test_trusted_proxy_fingerprints_are_parsed_strictly():
    class Config:
        trusted_proxy_sha256 = " " + "AB" * 32 + ", " + "cd:" * 31 + "cd"
    assert tls.trusted_proxies_of(Config()) == frozenset({"ab" * 32, "cd" * 32})
    Config.trusted_proxy_sha256 = "deadbeef"
    with pytest.raises(ValueError, match="SHA-256"):
        tls.trusted_proxies_of(Config())


def test_the_expiry_gauge_holds_the_certificates_not_after(pki_dir):
    path = os.path.join(pki_dir, "teacher.pem")
    assert cert_expiry.record("teacher", path) == _cert(path).not_valid_after_utc.timestamp()
    value = cert_expiry.CERT_EXPIRY.labels("teacher", SERVICE_ROLE, "teacher")._value.get()
    assert value == _cert(path).not_valid_after_utc.timestamp()
