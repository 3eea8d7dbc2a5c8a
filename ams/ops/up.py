"""`python -m ams.ops.up --out DIR [--insecure] [--devices a,b]` (`make up`): the AMS server side as
local processes, for operators without Docker and for tests and benchmarks.

Starts redis-server, the teacher and the trainer on free ports, with mutual TLS unless --insecure
(a CA, service certificates and one certificate per device, made with ams-admin's code in
DIR/pki), writes DIR/stack.json and runs until SIGTERM or SIGINT, then stops everything:

    {"trainer": "host:port", "teacher": "host:port", "trainer_metrics": url, "teacher_metrics": url,
     "trainer_pid": n, "teacher_pid": n, "redis_url": url,
     "tls": {"ca": path, "dir": path, "service": {"cert", "key"}, "devices": {"a": {"cert": path, "key": path}}}}

A device then runs: ams-edge --trainer <trainer> --ca <ca> --cert <cert> --key <key> --video ...
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

from ams.ops.procs import ams_stack

TEACHER_ENV = {"AMS_TEACHER_BACKEND": "litert", "AMS_TEACHER_MODEL_PATH": "assets/teacher/selfie_segmentation_landscape.tflite"}


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"ams.ops.up: {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ams.ops.up", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/stack", help="directory for stack.json, logs and pki/")
    p.add_argument("--insecure", action="store_true", help="plain text, device id from a header (local demo only)")
    p.add_argument("--devices", default="", help="comma-separated device ids to issue certificates for")
    p.add_argument("--redis-url", default="", help="use this Redis instead of starting one")
    p.add_argument("--teacher-env", action="append", default=[], help="KEY=VALUE for the teacher (repeat)")
    p.add_argument("--trainer-env", action="append", default=[], help="KEY=VALUE for the trainer (repeat)")
    args = p.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    devices = [d for d in args.devices.split(",") if d]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with ams_stack(out, {**TEACHER_ENV, **_pairs(args.teacher_env)}, _pairs(args.trainer_env), args.redis_url or None,
                   insecure=args.insecure, devices=devices, pki_dir=os.path.join(out, "pki")) as stack:
        path = os.path.join(out, "stack.json")
        with open(path + ".tmp", "w") as f:
            json.dump(stack, f, indent=2)
        os.replace(path + ".tmp", path)                # readers never see a half-written file
        print(f"AMS stack up ({'PLAIN TEXT' if args.insecure else 'mutual TLS'}): trainer {stack['trainer']}, "
              f"teacher {stack['teacher']}; {path}; logs in {out}. Ctrl-C or SIGTERM stops it.", flush=True)
        while not stop.wait(1.0):
            pass
        os.remove(path)
    print("AMS stack stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
