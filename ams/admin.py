"""`ams-admin`: the operator's certificates and their revocations, and the sessions the trainers keep.

    ams-admin init --dir pki --trainer-host ams.example.com      # CA + trainer/teacher certificates
    ams-admin issue-device cam-042 --dir pki                     # pki/devices/cam-042.{pem,key}
    ams-admin issue-service grafana-probe --dir pki              # another service/operator client
    ams-admin issue-proxy lb --dir pki --host lb                 # only where a load balancer runs: prints its SHA-256
    ams-admin fingerprint pki/lb.pem                             # the SHA-256 services trust (AMS_TRUSTED_PROXY_SHA256)
    ams-admin renew cam-042 --dir pki                            # new key + certificate, same role and hosts
    ams-admin revoke cam-042 --dir pki --redis-url redis://:PASSWORD@host:6379/0   # every certificate of cam-042
    ams-admin revoke --serial 5f3a... --redis-url ...            # one certificate
    ams-admin unrevoke --serial 5f3a... --redis-url ...  |  ams-admin revoked --redis-url ...
    ams-admin sessions --redis-url ... [--json]                  # every stored session: version, live mIoU, lag
    ams-admin schema --redis-url ...                             # the state's schema version, and this release's
    ams-admin backup --redis-url ...                             # Redis writes a fresh dump.rdb (copy it off)

`init` never overwrites an existing CA or certificate (safe to run twice); `issue-*` refuse an existing
name unless `--force`. Every certificate issued is recorded in `<dir>/issued.jsonl`; revocations are
by certificate serial (Redis hash ams:revoked:certs), so a certificate issued after a revocation works
and the revoked one never does again unless its own serial is unrevoked.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import redis

from ams import revocation, schema, sessions_report
from ams.pki import CertificateAuthority, init_pki

DEFAULT_HOSTS = {"trainer": ["localhost", "127.0.0.1", "trainer"], "teacher": ["localhost", "127.0.0.1", "teacher"]}
PROXY_HOSTS = ["localhost", "127.0.0.1", "trainer", "teacher", "lb"]
_REDIS_URL = os.environ.get("AMS_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ams-admin", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the CA and the trainer's and teacher's certificates")
    init.add_argument("--dir", default="pki")
    init.add_argument("--trainer-host", action="append", default=None,
                      help="host name or IP devices use to reach the trainer (repeat; default localhost, 127.0.0.1, trainer)")
    init.add_argument("--teacher-host", action="append", default=None,
                      help="host name or IP the trainer uses to reach the teacher (repeat)")
    for name, help_ in (("issue-device", "write a device's key and certificate (CN = device id)"),
                        ("issue-service", "write a service/operator client certificate"),
                        ("issue-proxy", "write the load balancer's certificate, key and bundle; print its SHA-256"),
                        ("renew", "re-issue NAME's latest certificate (same role and hosts) with a new key")):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("name")
        cmd.add_argument("--dir", default="pki")
        cmd.add_argument("--days", type=int, default=825, help="validity (default 825 days)")
        if name == "renew":
            cmd.add_argument("--role", default="", help="ams-device, ams-service or ams-proxy, when NAME has several")
        else:
            cmd.add_argument("--force", action="store_true", help="replace an existing certificate of that name")
        if name == "issue-proxy":
            cmd.add_argument("--host", action="append", default=None,
                             help=f"name or IP clients reach the balancer by (repeat; default {', '.join(PROXY_HOSTS)})")
    fp = sub.add_parser("fingerprint", help="print a certificate's SHA-256 (lowercase hex, no colons)")
    fp.add_argument("file")
    revoke = sub.add_parser("revoke", help="refuse every certificate issued to NAME, or one --serial, from now on")
    who = revoke.add_mutually_exclusive_group(required=True)
    who.add_argument("name", nargs="?", help="revoke every certificate the index lists for NAME (any role)")
    who.add_argument("--serial", help="revoke one certificate by serial (hex)")
    revoke.add_argument("--dir", default="pki")
    revoke.add_argument("--redis-url", default=_REDIS_URL)
    unrevoke = sub.add_parser("unrevoke", help="accept one revoked certificate again (by serial only)")
    unrevoke.add_argument("--serial", required=True)
    unrevoke.add_argument("--redis-url", default=_REDIS_URL)
    listing = sub.add_parser("revoked", help="list revoked certificates")
    listing.add_argument("--redis-url", default=_REDIS_URL)
    report = sub.add_parser("sessions", help="list the sessions stored in Redis: device, student, version, live mIoU "
                                             "trend, loss, clips waiting, last update, rate, T_update, codec, owner")
    report.add_argument("--redis-url", default=_REDIS_URL)
    report.add_argument("--json", action="store_true", help="one JSON object per session, one per line")
    version = sub.add_parser("schema", help="the schema version of the state in Redis, and the one this release "
                                            "reads (exit 1 if Redis holds a newer one)")
    version.add_argument("--redis-url", default=_REDIS_URL)
    backup = sub.add_parser("backup", help="have Redis write a snapshot of all AMS state (BGSAVE) and wait for it: "
                                           "dump.rdb in Redis's data directory, to copy off (deploy/redis/restore.sh)")
    backup.add_argument("--redis-url", default=_REDIS_URL)
    backup.add_argument("--timeout-s", type=float, default=600.0)
    return p.parse_args(argv)


def _issue(args: argparse.Namespace) -> int:
    ca = CertificateAuthority(args.dir)
    if args.command == "issue-device":
        files = ca.issue_device(args.name, force=args.force, days=args.days)
    elif args.command == "issue-service":
        files = ca.issue_service(args.name, [], force=args.force, days=args.days)
    else:
        files = ca.issue_proxy(args.name, args.host or PROXY_HOSTS, force=args.force, days=args.days)
        print(f"{files.cert}\n{files.key}\n{ca.path(args.name + '.bundle.pem')}")
        print(f"sha256 {revocation.fingerprint(files.cert)}   (AMS_TRUSTED_PROXY_SHA256 of the trainers, "
              f"AMS_TEACHER_TRUSTED_PROXY_SHA256 of the teachers behind it)")
        return 0
    print(f"{files.cert}\n{files.key}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    if args.serial:
        serial = revocation.normalize_serial(args.serial)
        try:
            known = [i for i in revocation.read_index(args.dir) if i.serial == serial]
        except OSError:
            known = []
        issued = known[-1:] or [revocation.Issued(serial, "?", "?", "", "", "")]
    else:
        issued = CertificateAuthority(args.dir).issued_to(args.name)
        if not issued:
            raise ValueError(f"no certificate issued to {args.name!r} in {args.dir} (its index: issued.jsonl)")
    for serial in revocation.revoke(_redis(args.redis_url), issued):
        entry = next(i for i in issued if i.serial == serial)
        print(f"revoked {serial}\t{entry.name}\t{entry.role}")
    return 0


def _backup(client: redis.Redis, timeout_s: float) -> int:
    """BGSAVE, then wait until Redis has written it (its count of snapshots moves, none in progress)."""
    deadline = time.monotonic() + timeout_s
    while True:
        before = client.info("persistence")["rdb_saves"]
        try:
            client.bgsave()
            break
        except redis.ResponseError as exc:       # a save already running: let it end, then take ours
            if "in progress" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    while True:
        state = client.info("persistence")
        if state["rdb_saves"] > before and not state["rdb_bgsave_in_progress"]:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"Redis has not finished the snapshot in {timeout_s:.0f} s")
        time.sleep(0.2)
    if state["rdb_last_bgsave_status"] != "ok":
        raise OSError("Redis could not write the snapshot (rdb_last_bgsave_status: err): see its log")
    print(f"snapshot written at {client.lastsave().isoformat()} ({client.dbsize()} keys, schema "
          f"v{schema.stored_version(client) or 0}): copy dump.rdb from Redis's data directory now (/data in the "
          "images; docs/operations.md, \"State: backup, restore, upgrade\")")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "init":
            ca = init_pki(args.dir, args.trainer_host or DEFAULT_HOSTS["trainer"], args.teacher_host or DEFAULT_HOSTS["teacher"])
            print(f"CA and service certificates in {ca.dir}/ (ca.pem, trainer.pem, teacher.pem and their keys; "
                  f"a load balancer's: ams-admin issue-proxy)")
        elif args.command in ("issue-device", "issue-service", "issue-proxy"):
            return _issue(args)
        elif args.command == "renew":
            old, files = CertificateAuthority(args.dir).renew(args.name, args.role, args.days)
            print(f"{files.cert}\n{files.key}\nrenewed {old.role} {old.name}: the previous certificate (serial "
                  f"{old.serial}) stays valid until revoked: ams-admin revoke --serial {old.serial}")
        elif args.command == "fingerprint":
            print(revocation.fingerprint(args.file))
        elif args.command == "revoke":
            return _revoke(args)
        elif args.command == "sessions":
            records = sessions_report.sessions(_redis(args.redis_url))
            print("\n".join(json.dumps(r) for r in records) if args.json else sessions_report.table(records))
        elif args.command == "schema":
            client = _redis(args.redis_url)
            stored = schema.stored_version(client)
            print(f"stored v{stored if stored is not None else '0 (none stored: before versioning, or empty)'}; "
                  f"this release reads v{schema.SCHEMA_VERSION}")
            try:
                schema.check(client)
            except schema.SchemaTooNew as exc:
                print(f"ams-admin: {exc}", file=sys.stderr)
                return 1
        elif args.command == "backup":
            return _backup(_redis(args.redis_url), args.timeout_s)
        elif args.command == "unrevoke":
            serial = revocation.normalize_serial(args.serial)
            if not revocation.unrevoke(_redis(args.redis_url), serial):
                raise ValueError(f"certificate {serial} is not revoked")
            print(f"unrevoked {serial}")
        else:
            for serial, info in sorted(revocation.list_revoked(_redis(args.redis_url)).items()):
                print(f"{serial}\t{info.get('name', '?')}\t{info.get('role', '?')}\trevoked {info.get('revoked_at', '?')}")
    except (ValueError, OSError, TimeoutError, redis.RedisError) as exc:
        print(f"ams-admin: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
