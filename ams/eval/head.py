"""A quick look at the long scene: No Customization, Remote+Tracking and AMS on its first seconds only.

    python -m ams.eval.head [--seconds 150] [--trainer gamma=0.02 ...] [--out out/eval-head]

A diagnostic for working on the long scene between `make eval-long` runs (its AMS run alone takes
25–40 min; 150 s take ≈ 4), never a headline: the head is part of the evaluated playlist. The first
`--seconds` of `data/videos/eval/longscene.mp4` are copied (packets, no re-encoding) and played as
`long_scene` is, against the same exact labels. `--trainer` overrides the system's AMS settings
(TrainerConfig fields). Prints each scheme's mIoU and bytes, and, per 10 s, AMS against
Remote+Tracking; runs are cached under <out>/runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os

import av
import numpy as np

from ams.eval.playlists import LONG_SCENE, PLAYLISTS
from ams.eval.runs import OURS, RT_DELAY_S, cached, spec
from ams.ops.procs import ROOT, redis_server


def cut(src: str, dst: str, seconds: float) -> None:
    """The first `seconds` of `src`, its packets copied."""
    with av.open(src) as inp, av.open(dst + ".tmp.mp4", "w") as out:
        stream = inp.streams.video[0]
        time_base = stream.time_base
        if time_base is None:
            raise ValueError(f"{src}: its video stream has no time base")
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            if packet.pts is not None and float(packet.pts * time_base) >= seconds:
                break
            packet.stream = copy
            out.mux(packet)
    os.replace(dst + ".tmp.mp4", dst)


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=150.0)
    p.add_argument("--trainer", action="append", default=[], metavar="FIELD=VALUE", help="AMS setting (repeatable)")
    p.add_argument("--out", default="out/eval-head")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("services").setLevel(logging.WARNING)
    out = os.path.join(ROOT, args.out)
    os.makedirs(out, exist_ok=True)
    video = os.path.join(out, f"longscene-head-{args.seconds:g}s.mp4")
    if not os.path.exists(video):
        cut(os.path.join(ROOT, LONG_SCENE), video, args.seconds)
    name = f"long_scene_head_{args.seconds:g}"
    PLAYLISTS[name] = dataclasses.replace(PLAYLISTS["long_scene"], name=name, sources=(video,),
                                          note=f"the long scene's first {args.seconds:g} s (a diagnostic)")
    overrides = dict(kv.split("=", 1) for kv in args.trainer)
    runs = {"no_customization": spec("no_customization", name),
            "remote_tracking": spec("remote_tracking", name, rate_fps=1.0, delay_s=RT_DELAY_S),
            "ams": spec("ams", name, trainer={**OURS, **{k: _value(v) for k, v in overrides.items()}})}
    with redis_server(os.path.join(out, "logs")) as url:
        results = {scheme: cached(run, url, out)["result"] for scheme, run in runs.items()}
    for scheme, r in results.items():
        t = r["traffic"]
        print(f"{scheme}: mIoU {r['miou']:.3f}, up {t['uplink'] / 1e3:.0f} KB, down {t['downlink'] / 1e3:.0f} KB, "
              f"{t['updates']} updates {r.get('extra') or ''}")
    a, b = (np.array(results[s]["series_miou"]) for s in ("ams", "remote_tracking"))
    t = np.array(results["ams"]["series_t"])
    print("per 10 s, AMS vs Remote+Tracking:", " ".join(
        f"{s:.0f}:{a[(t >= s) & (t < s + 10)].mean():.2f}/{b[(t >= s) & (t < s + 10)].mean():.2f}"
        for s in np.arange(0, args.seconds, 10)))
    print(f"frames where AMS is 0.05 below / above Remote+Tracking: {(a < b - 0.05).sum()} / {(a > b + 0.05).sum()} "
          f"of {len(a)}")


if __name__ == "__main__":
    main()
