"""`make eval` / `make eval-quick` / `make eval-long`: the paper's schemes, ablation, sweeps and rate
control on our data; `--long`: every scheme on the 10-minute long-scene playlist.

    python -m ams.eval [--quick | --long] [--out out/eval] [--readme]

Writes <out>/results.json and <out>/report.md (+ PNG plots); resumes from the runs cached under
<out>/runs. `--readme` only rewrites README's results table from <out>/results.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time

from ams.eval import plan
from ams.eval.report import findings, readme_table, write_report
from ams.eval.harness import STUDENTS
from ams.eval.runs import EVAL_VERSION, PLACEHOLDER, RunSpec, cached, run_all
from ams.eval.schemes import UPDATE_DELAY_S
from ams.ops.procs import ROOT, redis_server
from ams.docblocks import write_block

log = logging.getLogger("ams-eval")


def services_check(run, students: list[str], out_dir: str) -> list[dict]:
    """AMS through the real services vs in-process, per student, on the people playlist (cached)."""
    from ams.eval.services import run_services

    rows = []
    for student in students:
        spec = plan.scheme_spec("ams", plan.ABLATION_PLAYLIST, student)   # the system's AMS, as in-process
        key = hashlib.sha1(json.dumps([EVAL_VERSION, student, spec.config(), plan.ABLATION_PLAYLIST, STUDENTS[student],
                                       UPDATE_DELAY_S], sort_keys=True).encode()).hexdigest()[:10]
        path = os.path.join(out_dir, "runs", f"services-{student}-{key}.json")
        if not os.path.exists(path):
            log.info("running AMS through the services for %s", student)
            summary = run_services(student, out_dir, plan.ABLATION_PLAYLIST, settings=spec.config())
            with open(path, "w") as f:
                json.dump({k: summary[k] for k in ("ams", "no_customization", "updates", "uplink_kbps", "downlink_kbps",
                                                   "frames", "wall_seconds")}, f)
        with open(path) as f:
            services = json.load(f)
        local = run(spec)
        rows.append({"student": student, "in_process_miou": local["miou"], "services_miou": services["ams"]["miou"],
                     "difference_points": round(100 * (services["ams"]["miou"] - local["miou"]), 2),
                     "in_process_updates": local["traffic"]["updates"], "services_updates": services["updates"],
                     "services_nc_miou": services["no_customization"]["miou"]})
    return rows


def evaluate(quick: bool, out_dir: str, with_services: bool, jobs: int, long: bool = False) -> dict:
    """Plan every run (a dry pass), execute the missing ones in parallel, then assemble the results."""
    started = time.time()
    wanted: list[RunSpec] = []

    def plan_only(spec: RunSpec) -> dict:
        wanted.append(spec)
        return PLACEHOLDER

    plan.sections(plan_only, quick, long)
    students = list(plan.STUDENTS) if with_services else []
    wanted += [plan.scheme_spec("ams", plan.ABLATION_PLAYLIST, s) for s in students]
    with redis_server(os.path.join(out_dir, "logs")) as url:
        run_all(wanted, url, out_dir, jobs)

        def run(spec: RunSpec) -> dict:
            return cached(spec, url, out_dir)["result"]

        results = plan.sections(run, quick, long)
        services = services_check(run, students, out_dir)
        compute = sum(run(spec)["wall_seconds"] for spec in set(wanted))
    return {"protocol": plan.protocol(), "quick": quick, "long": long, **results, "services_check": services,
            "runs": len(set(wanted)), "runs_wall_seconds": round(compute, 1),
            "wall_seconds": round(time.time() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the schemes on the people clips, a 2-row ablation, a short "
                                                        "rate-control run")
    p.add_argument("--long", action="store_true", help="every scheme on the long-scene playlist (its own ≈ 40 min)")
    p.add_argument("--out", default=None, help="default out/eval (out/eval-quick with --quick, out/eval-long with --long)")
    p.add_argument("--services", action=argparse.BooleanOptionalAction, default=None,
                   help="also run AMS through the real services per student (default: on, off with --quick)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each (default 2)")
    p.add_argument("--readme", action="store_true", help="only rewrite README's results block from <out>/results.json")
    args = p.parse_args(argv)
    out_dir = os.path.join(ROOT, args.out or ("out/eval-quick" if args.quick else "out/eval-long" if args.long
                                              else "out/eval"))
    results_path = os.path.join(out_dir, "results.json")
    if args.readme:
        with open(results_path) as f:
            write_block("eval-long" if args.long else "eval", readme_table(json.load(f)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("services", "ams.ops.procs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.makedirs(out_dir, exist_ok=True)
    services = not (args.quick or args.long) if args.services is None else args.services
    results = evaluate(args.quick, out_dir, services, args.jobs, args.long)
    results["findings"] = findings(results)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    write_report(results, out_dir)
    print(readme_table(results))
    print(f"wrote {results_path} and {os.path.join(out_dir, 'report.md')} in {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
