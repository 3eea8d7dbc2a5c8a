"""A few of `make eval`'s runs alone, without the rest of its hour: the same specs, cache and scoring.

    python -m ams.eval.rows [--scheme ams remote_tracking] [--playlist real real_people] \\
        [--student deeplabv3_mnv2 streamdeq] [--out out/eval]

Each scheme × playlist × student is `plan.scheme_spec`'s run (the one `make eval` reports), executed
or read from <out>/runs; prints one JSON line per run (mIoU, Kbps up and down, updates). A way to
re-measure rows after a change between full evaluations, never a replacement for one: the README's
tables come from `make eval`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

from ams.eval import plan
from ams.eval.runs import cached
from ams.ops.procs import ROOT, redis_server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scheme", nargs="+", default=["ams"], help="no_customization one_time remote_tracking "
                   "just_in_time ams ams_paper")
    p.add_argument("--playlist", nargs="+", default=["real"])
    p.add_argument("--student", nargs="+", default=["deeplabv3_mnv2"])
    p.add_argument("--out", default="out/eval")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("services").setLevel(logging.WARNING)
    out = os.path.join(ROOT, args.out)
    with redis_server(os.path.join(out, "logs")) as url:
        for playlist in args.playlist:
            for student in args.student:
                for scheme in args.scheme:
                    r = cached(plan.scheme_spec(scheme, playlist, student), url, out)["result"]
                    t = r["traffic"]
                    print(json.dumps({"scheme": scheme, "playlist": playlist, "student": student,
                                      "miou": round(r["miou"], 4), "uplink_kbps": plan.kbps(t["uplink"], r["video_seconds"]),
                                      "downlink_kbps": plan.kbps(t["downlink"], r["video_seconds"]),
                                      "updates": t["updates"], **r["extra"]}), flush=True)


if __name__ == "__main__":
    main()
