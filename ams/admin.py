"""`ams-admin`: the operator's certificates and device revocations.

    ams-admin init --dir pki --trainer-host ams.example.com      # CA + trainer/teacher/load balancer certificates
    ams-admin issue-device cam-042 --dir pki                     # pki/devices/cam-042.{pem,key}
    ams-admin issue-service grafana-probe --dir pki              # another service/operator client
    ams-admin revoke cam-042 --redis-url redis://:PASSWORD@host:6379/0
    ams-admin unrevoke cam-042 --redis-url ...   |   ams-admin revoked --redis-url ...

`init` never overwrites an existing CA or certificate (safe to run twice); delete a file to remake it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import redis

from ams.pki import REVOKED_KEY, CertificateAuthority, check_device_id, init_pki

DEFAULT_HOSTS = {"trainer": ["localhost", "127.0.0.1", "trainer"], "teacher": ["localhost", "127.0.0.1", "teacher"]}


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
                        ("issue-service", "write a service/operator client certificate")):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("name")
        cmd.add_argument("--dir", default="pki")
    for name, help_ in (("revoke", "refuse a device from now on (its open sessions are closed)"),
                        ("unrevoke", "accept a revoked device again")):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("device_id")
        cmd.add_argument("--redis-url", default=os.environ.get("AMS_REDIS_URL", "redis://127.0.0.1:6379/0"))
    listing = sub.add_parser("revoked", help="list revoked devices")
    listing.add_argument("--redis-url", default=os.environ.get("AMS_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "init":
            ca = init_pki(args.dir, args.trainer_host or DEFAULT_HOSTS["trainer"], args.teacher_host or DEFAULT_HOSTS["teacher"])
            print(f"CA and service certificates in {ca.dir}/ (ca.pem, trainer.pem, teacher.pem and their keys; "
                  f"lb.bundle.pem for the load balancer)")
        elif args.command in ("issue-device", "issue-service"):
            ca = CertificateAuthority(args.dir)
            files = ca.issue_device(args.name) if args.command == "issue-device" else ca.issue_service(args.name, [])
            print(f"{files.cert}\n{files.key}")
        elif args.command == "revoke":
            _redis(args.redis_url).hset(REVOKED_KEY, check_device_id(args.device_id), f"{time.time():.0f}")
            print(f"revoked {args.device_id}")
        elif args.command == "unrevoke":
            _redis(args.redis_url).hdel(REVOKED_KEY, args.device_id)
            print(f"unrevoked {args.device_id}")
        else:
            for device_id, when in sorted(_redis(args.redis_url).hgetall(REVOKED_KEY).items()):
                name = device_id.decode() if isinstance(device_id, bytes) else device_id
                print(f"{name}\trevoked {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(int(when)))}")
    except (ValueError, FileNotFoundError, redis.RedisError) as exc:
        print(f"ams-admin: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
