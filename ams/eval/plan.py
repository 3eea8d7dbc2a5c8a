"""What `make eval` and `make eval-quick` run, and how the runs become `results.json`.

Sections (issues 10, 23): every scheme on every playlist at its own pace for DeeplabV3-MobileNetV2 —
AMS as the paper sets it and as the system runs it (fast start and scene changes) —, the two other
students, the slow-motion sensitivity rows, every scheme in five classes (the parts teacher), the
student's ceiling and the teacher-vs-teacher check,
the Table 3 ablation, the Fig. 4 sweeps, the rate-control run, and the real-services check. Every
figure is over first-pass frames only; `miou_seen` reports repeated passes of a looped playlist apart.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from ams.eval.playlists import PLAYLISTS
from ams.eval.runs import ONE_TIME_ITERATIONS, ONE_TIME_SHARE, OURS, PAPER, RT_DELAY_S, RunSpec, spec
from ams.eval.schemes import UPDATE_DELAY_S

# "ams_paper": the paper's AMS (fixed T_update); "ams": the system's (OURS: fast start, scene changes)
SCHEMES = ("no_customization", "one_time", "remote_tracking", "just_in_time", "ams_paper", "ams")
HEADLINE = ("real", "real_people", "synthetic_shifts")     # every playlist at its own pace
SENSITIVITY = ("real_slow",)                                # slow motion: labelled rows, never a headline
LONG = "long_scene"         # `make eval-long`: every scheme on the 10-minute playlist (its own ≈ 40 min)
LONG_STUDENTS = ("lowlatency",)   # and No Customization / the system's AMS for this other student there
T_FASTS = (2.0, 4.0)
# 300 Adam steps of 8 frames (ceiling.py's default is 600): at 600, one core took 333 s (DLv3), 252 s (StreamDEQ),
# 967 s (low-latency) and 1273 s (DLv3 at 2×) in make eval, too long for its hour
CEILING_STEPS = 300
CPU_PHASE_S = 3.0     # README's benchmark: one phase, K 20, batch 4, 144×256, 2 threads: 2.9–3.5 s
SELECTIONS = ("gradient", "random", "first", "last", "first_last")
GAMMAS = (0.2, 0.05, 0.01)
JIT_THRESHOLDS = (0.55, 0.65, 0.75, 0.85)
JIT_DEFAULT = 0.75
T_UPDATES = (10.0, 20.0, 40.0)
STUDENTS = ("deeplabv3_mnv2", "streamdeq", "lowlatency")
# issue 23 item 6: the people clips in five classes (the parts teacher) for DLv3 with five outputs: does the
# comparison change with more classes than person / background?
PARTS = (("real_people_parts", "deeplabv3_mnv2_parts"),)
ABLATION_PLAYLIST = "real_people"   # also the sweeps', the three students' and the services check's

Runner = Callable[[RunSpec], dict]   # spec -> the run's "result" record


def playlist_seconds(name: str) -> float:
    """The playlist's length on the algorithm's clock (one pass), from its runs' own record when played."""
    from edge_client.video_source import file_duration
    from ams.synthetic import SyntheticScene

    playlist = PLAYLISTS[name]
    if playlist.teacher == "oracle" and not playlist.truth:
        return SyntheticScene.from_spec(playlist.sources[0]).duration
    if not all(os.path.exists(p) for p in playlist.sources):   # the long scene before `make long-scene`
        return float("nan")
    return sum(file_duration(p) for p in playlist.sources) * playlist.time_scale


def _seconds(name: str) -> float | None:
    seconds = playlist_seconds(name)
    return None if seconds != seconds else round(seconds, 1)   # NaN: its files are not made yet


def scheme_spec(scheme: str, playlist: str, student: str = "deeplabv3_mnv2") -> RunSpec:
    if scheme == "one_time":
        return spec(scheme, playlist, student, seconds=round(ONE_TIME_SHARE * playlist_seconds(playlist), 1),
                    iterations=ONE_TIME_ITERATIONS)
    if scheme == "remote_tracking":
        return spec(scheme, playlist, student, rate_fps=PAPER["r_max"], delay_s=RT_DELAY_S)
    if scheme == "just_in_time":
        return spec(scheme, playlist, student, threshold=JIT_DEFAULT)
    if scheme == "ams":
        return spec(scheme, playlist, student, trainer=OURS)
    if scheme == "ams_paper":
        return spec("ams", playlist, student)
    return spec(scheme, playlist, student)


def kbps(nbytes: int, seconds: float) -> float:
    return round(nbytes * 8 / 1000 / max(seconds, 1e-9), 1)


def row(name: str, run: RunSpec, res: dict, base: dict | None) -> dict:
    """One `schemes` row: headline mIoU (first passes), gain over No Customization, traffic."""
    t = res["traffic"]
    out = {"scheme": name, "student": run.student, "playlist": run.playlist, "miou": res["miou"],
           "miou_seen": res["miou_seen"], "better_frames": None, "uplink_kbps": kbps(t["uplink"], res["video_seconds"]),
           "downlink_kbps": kbps(t["downlink"], res["video_seconds"]), "updates": t["updates"],
           "delta_vs_nc": None, "frames": res["frames_scored"]}
    if base is not None and name != "no_customization":
        out["delta_vs_nc"] = res["miou"] - base["miou"]
        gain = np.array(res["series_miou"]) - np.array(base["series_miou"])
        out["better_frames"] = float(np.mean(gain > 1e-9)) if gain.size else None
    return out


def per_frame_gain(res: dict, base: dict) -> list[float]:
    return (np.nan_to_num(np.array(res["series_miou"]), nan=1.0)
            - np.nan_to_num(np.array(base["series_miou"]), nan=1.0)).round(4).tolist()


def schemes_section(run: Runner, playlists: list[str], students: list[str], looped: bool,
                    sensitivity: tuple[str, ...] = (), students_on: str = ABLATION_PLAYLIST,
                    student_schemes: tuple[str, ...] = ("no_customization", "ams_paper", "ams"),
                    parts: tuple[tuple[str, str], ...] = ()) -> tuple[list, dict]:
    """(rows, per-frame gains by playlist and scheme) for every scheme on every playlist (DLv3),
    `student_schemes` for each of `students` on `students_on` (the ablation's playlist of people), the
    slow-motion `sensitivity` playlists (no One-Time), and every scheme on each (playlist, student) of `parts`."""
    rows: list[dict] = []
    gains: dict[str, dict[str, list[float]]] = {}

    def rows_of(playlist: str, schemes, student: str = "deeplabv3_mnv2", keep_gains: bool = False) -> None:
        base = run(scheme_spec("no_customization", playlist, student))
        for scheme in schemes:
            s = scheme_spec(scheme, playlist, student)
            res = run(s)
            rows.append(row(scheme, s, res, base))
            if keep_gains and scheme != "no_customization":
                gains.setdefault(playlist, {})[scheme] = per_frame_gain(res, base)

    for playlist in playlists:
        rows_of(playlist, SCHEMES, keep_gains=True)
    for student in students:
        rows_of(students_on, student_schemes, student)
    if looped:
        rows_of("real_looped", ("no_customization", "ams"))
    for playlist in sensitivity:
        rows_of(playlist, [s for s in SCHEMES if s != "one_time"])
    for playlist, student in parts:
        rows_of(playlist, SCHEMES, student)
    return rows, gains


def ceiling_section(run: Runner, students: list[str], large: bool) -> list[dict]:
    """Issue 23 item 2: each student fitted offline to the people playlist's labels (ceiling.py), at 2×
    the input size for DLv3 (`large`), and the teacher against itself on uploaded frames."""
    out = []
    for student, scale in [(s, 1) for s in students] + ([("deeplabv3_mnv2", 2)] if large else []):
        params: dict[str, Any] = {"steps": CEILING_STEPS, **({"scale": scale} if scale > 1 else {})}
        res = run(spec("ceiling", ABLATION_PLAYLIST, student, **params))
        nc = run(scheme_spec("no_customization", ABLATION_PLAYLIST, student))
        ams = run(ams_spec(ABLATION_PLAYLIST, student=student))   # the student's online learning, no hints
        out.append({"check": "ceiling", "student": student, "scale": scale, "miou": res["miou"],
                    "nc_miou": nc["miou"], "ams_miou": ams["miou"], "fit": res["extra"].get("fit", {})})
    res = run(spec("teacher_on_uploads", ABLATION_PLAYLIST))
    out.append({"check": "teacher_on_uploads", "student": None, "scale": 1, "miou": res["miou"], "nc_miou": None,
                "ams_miou": None, "fit": {}})
    return out


# The system's pace without what hides the student's own learning (label hints) and with the paper's float16
# downlink, so that the ablation's and the sweeps' figures measure the coordinates and the schedule
LEARNING = {**OURS, "hint_miou": 0.0, "update_codecs": PAPER["update_codecs"]}
HINT_MIOUS = (0.0, 0.95)    # label hints off / stopped at 0.95 (before the edge's judge), against the default (always)


def ams_spec(playlist: str, paper: bool = False, student: str = "deeplabv3_mnv2", **trainer) -> RunSpec:
    """The system's AMS learning alone (LEARNING; the paper's with `paper`) with the given departures."""
    values = {**({} if paper else LEARNING), **trainer}
    return spec("ams", playlist, student, trainer={k: v for k, v in values.items() if PAPER.get(k, "gradient") != v} or None)


def ablation_section(run: Runner, selections, gammas) -> tuple[list[dict], dict]:
    """Table 3: (each selection × γ as mIoU difference from training every parameter, that full-model run)."""
    def ablation_spec(selection: str, gamma: float) -> RunSpec:
        return ams_spec(ABLATION_PLAYLIST, gamma=gamma, selection=selection)

    res = run(ablation_spec("gradient", 1.0))
    full = {"playlist": ABLATION_PLAYLIST, "gamma": 1.0, "miou": res["miou"],
            "downlink_kbps": kbps(res["traffic"]["downlink"], res["video_seconds"])}
    rows = []
    for selection in selections:
        for gamma in gammas:
            res = run(ablation_spec(selection, gamma))
            rows.append({"selection": selection, "gamma": gamma, "miou": res["miou"],
                         "miou_delta_vs_full": res["miou"] - full["miou"],
                         "downlink_kbps": kbps(res["traffic"]["downlink"], res["video_seconds"])})
    return rows, full


def sweeps_section(run: Runner, playlists: list[str]) -> list[dict]:
    """Fig. 4: AMS's learning over T_update (γ 5 %), its fast interval t_fast_s and γ (T_update 10 s), the
    system's AMS over hint_miou, JIT over its threshold, Remote+Tracking over its label rate: mIoU vs downlink."""
    out = []

    def point(s: RunSpec, scheme: str, param: str, value: float) -> None:
        res = run(s)
        out.append({"scheme": scheme, "playlist": s.playlist, "param": param, "value": value, "miou": res["miou"],
                    "downlink_kbps": kbps(res["traffic"]["downlink"], res["video_seconds"]),
                    "uplink_kbps": kbps(res["traffic"]["uplink"], res["video_seconds"])})

    for playlist in playlists:
        for t_update in T_UPDATES:
            point(ams_spec(playlist, t_update_s=t_update), "ams", "t_update_s", t_update)
        for t_fast in (*T_FASTS, OURS["t_fast_s"]):
            point(ams_spec(playlist, t_fast_s=t_fast), "ams", "t_fast_s", t_fast)
        for hint_miou in HINT_MIOUS:   # the whole system's AMS (int4) with label hints off / stopped at 0.95
            point(spec("ams", playlist, trainer={**OURS, "hint_miou": hint_miou}), "ams", "hint_miou", hint_miou)
        # ... with the edge always showing a fresh hint (no HintJudge), and at the paper's γ while hinted
        point(spec("ams", playlist, trainer=OURS, judge=False), "ams", "judge", 0.0)
        point(spec("ams", playlist, trainer={**OURS, "hint_gamma": PAPER["gamma"]}), "ams", "hint_gamma", PAPER["gamma"])
        for gamma in (0.01, 0.2):
            point(ams_spec(playlist, gamma=gamma), "ams", "gamma", gamma)
        # a compute-bound trainer (a phase of K 20 at batch 4 takes ≈ 3 s on this 2-core box), both paces
        point(spec("ams", playlist, trainer=OURS, phase_s=CPU_PHASE_S), "ams", "phase_s", CPU_PHASE_S)
        point(spec("ams", playlist, phase_s=CPU_PHASE_S), "ams_paper", "phase_s", CPU_PHASE_S)
        for threshold in JIT_THRESHOLDS:
            point(spec("just_in_time", playlist, threshold=threshold), "just_in_time", "threshold", threshold)
        for rate in (PAPER["r_max"], PAPER["r_max"] / 2):
            point(spec("remote_tracking", playlist, rate_fps=rate, delay_s=RT_DELAY_S), "remote_tracking", "rate_fps", rate)
    return out


SEEDS = (0, 1, 2)


def variance_section(run: Runner) -> list[dict]:
    """Run-to-run spread: AMS and JIT with other trainer seeds (I_1, mini-batches), the figure below
    which a difference between two schemes is noise."""
    out = []
    for scheme, playlist in (("ams", ABLATION_PLAYLIST), ("just_in_time", ABLATION_PLAYLIST)):
        base = scheme_spec(scheme, playlist)
        mious = [run(base if seed == 0 else dataclasses.replace(base, trainer=tuple(sorted({**dict(base.trainer),
                                                                                            "seed": seed}.items()))))["miou"]
                 for seed in SEEDS]
        out.append({"scheme": scheme, "playlist": playlist, "seeds": list(SEEDS), "miou": mious,
                    "mean": float(np.mean(mious)), "std": float(np.std(mious, ddof=1))})
    return out


def rate_control_section(run: Runner, playlist: str) -> dict:
    """The paper's ASR + ATR against a fixed 1 fps / T_update 10 s on a playlist with a long still part."""
    adaptive_spec = ams_spec(playlist, paper=True)
    fixed_spec = ams_spec(playlist, paper=True, r_min=PAPER["r_max"], atr=False)
    adaptive, fixed = run(adaptive_spec), run(fixed_spec)

    def summary(res: dict) -> dict:
        t = res["traffic"]
        return {"miou": res["miou"], "uplink_kbps": kbps(t["uplink"], res["video_seconds"]),
                "downlink_kbps": kbps(t["downlink"], res["video_seconds"]), "updates": t["updates"],
                "control": t["control"]}

    a, f = summary(adaptive), summary(fixed)
    return {"playlist": playlist, "note": PLAYLISTS[playlist].note, "adaptive": a, "fixed": f,
            "uplink_saved": 1 - a["uplink_kbps"] / f["uplink_kbps"] if f["uplink_kbps"] else None,
            "downlink_saved": 1 - a["downlink_kbps"] / f["downlink_kbps"] if f["downlink_kbps"] else None,
            "miou_delta": a["miou"] - f["miou"]}


def sections(run: Runner, quick: bool, long: bool = False) -> dict:
    """Every section of results.json but the services check, running what it needs through `run`
    (with `long`, only the long-scene playlist's schemes)."""
    if long:
        # the other student: No Customization and the system's AMS only (each AMS run here is 25-40 min)
        rows, gains = schemes_section(run, [LONG], list(LONG_STUDENTS), looped=False, students_on=LONG,
                                      student_schemes=("no_customization", "ams"))
        return {"schemes": rows, "per_frame_gain": gains, "ablation": [], "ablation_full": {}, "sweeps": [],
                "variance": [], "ceiling": [], "rate_control": None}
    if quick:
        rows, gains = schemes_section(run, ["real_people"], [], looped=False)
        ablation, full = ablation_section(run, ("gradient", "random"), (0.05,))
        return {"schemes": rows, "per_frame_gain": gains, "ablation": ablation, "ablation_full": full,
                "sweeps": [], "variance": [], "ceiling": [],
                "rate_control": rate_control_section(run, "synthetic_still_quick")}
    rows, gains = schemes_section(run, list(HEADLINE), [s for s in STUDENTS if s != "deeplabv3_mnv2"], looped=True,
                                  sensitivity=SENSITIVITY, parts=PARTS)
    ablation, full = ablation_section(run, SELECTIONS, GAMMAS)
    return {"schemes": rows, "per_frame_gain": gains, "ablation": ablation, "ablation_full": full,
            "sweeps": sweeps_section(run, [ABLATION_PLAYLIST]), "variance": variance_section(run),
            "ceiling": ceiling_section(run, list(STUDENTS), large=True),
            "rate_control": rate_control_section(run, "synthetic_still")}


def protocol() -> dict:
    return {
        "scoring": "every frame of a playlist's first pass scored once, when it arrives, against the teacher's label, "
                   "by the model the device holds at that moment (trained only on earlier frames); repeated passes of "
                   "a looped playlist are reported apart as miou_seen and never in the headline",
        "miou": "per-class IoU from the confusion matrix over all scored frames, mean over classes; a fraction in [0, 1]",
        "clock": "video seconds at the video's own pace (time_scale 1) for every headline playlist; the *_slow "
                 "playlists play the files in slow motion and are sensitivity rows only; Kbps are per second of "
                 "the playlist's clock",
        "update_delay_s": UPDATE_DELAY_S,
        "settings": PAPER, "ours": OURS, "ablation_playlist": ABLATION_PLAYLIST,
        "one_time": {"share": ONE_TIME_SHARE, "iterations": ONE_TIME_ITERATIONS},
        "remote_tracking": {"rate_fps": PAPER["r_max"], "delay_s": RT_DELAY_S, "uplink": "JPEG quality 95"},
        "just_in_time": {"threshold": JIT_DEFAULT, "max_updates": 8, "stride_s": [8 / 30, 64 / 30], "optimizer":
                         "momentum SGD 0.9, lr 0.01", "gamma": 0.05, "uplink": "JPEG quality 95"},
        "playlists": {name: {"note": p.note, "seconds": _seconds(name), "teacher": p.teacher,
                             "time_scale": p.time_scale, "eval_every": p.eval_every}
                      for name, p in PLAYLISTS.items()},
    }
