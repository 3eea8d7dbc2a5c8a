"""report.md, its plots and README's results table, all from results.json; and the paper's findings
checked against our figures."""
from __future__ import annotations

import contextlib
import os

import numpy as np

NAMES = {"no_customization": "No Customization", "one_time": "One-Time", "remote_tracking": "Remote+Tracking",
         "just_in_time": "Just-In-Time", "ams_paper": "AMS (paper)", "ams": "AMS"}


SWEEP_SYMBOL = {"t_update_s": "T", "t_fast_s": "f", "gamma": "γ", "threshold": "θ", "rate_fps": "r", "phase_s": "cpu"}


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pts(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.0f} %"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def schemes_table(rows: list[dict]) -> str:
    return _table(["playlist", "student", "scheme", "mIoU", "Δ vs NC (points)", "frames better than NC", "uplink Kbps",
                   "downlink Kbps", "updates"],
                  [[r["playlist"], r["student"], NAMES[r["scheme"]], _f(r["miou"]), _pts(r["delta_vs_nc"]),
                    _pct(r["better_frames"]), r["uplink_kbps"], r["downlink_kbps"], r["updates"]] for r in rows])


def ablation_table(rows: list[dict], full: dict) -> str:
    gammas = sorted({r["gamma"] for r in rows}, reverse=True)
    cell = {(r["selection"], r["gamma"]): r for r in rows}
    order = [s for s in ("last", "first", "first_last", "random", "gradient") if any(k[0] == s for k in cell)]
    body = [[s] + [_pts(cell[(s, g)]["miou_delta_vs_full"]) if (s, g) in cell else "–" for g in gammas] for s in order]
    body.append(["downlink Kbps (gradient)"] + [cell[("gradient", g)]["downlink_kbps"] if ("gradient", g) in cell else "–"
                                                for g in gammas])
    body.append([f"full model (γ = 100 %): mIoU {_f(full['miou'])}, {full['downlink_kbps']} Kbps"] + [""] * len(gammas))
    return _table(["selection \\ γ"] + [f"{100 * g:g} %" for g in gammas], body)


def ceiling_table(rows: list[dict]) -> str:
    return _table(["check", "student", "input", "mIoU", "No Customization", "AMS", "fit seconds"],
                  [[c["check"], c["student"] or "–", f"{c['scale']}×", _f(c["miou"]), _f(c["nc_miou"]), _f(c["ams_miou"]),
                    c["fit"].get("train_seconds", "–")] for c in rows])


def findings(results: dict) -> list[dict]:
    """The paper's claims (AMS §4.2), each with whether it holds on our figures and why."""
    out = []
    rows = [r for r in results["schemes"] if r["student"] == "deeplabv3_mnv2"]
    spread = results.get("variance") or []
    stds = ", ".join(f"{100 * v['std']:.1f}" for v in spread)
    noise = f"; run-to-run std over seeds {stds} points" if spread else ""

    def get(playlist: str, scheme: str) -> dict:
        for r in rows:
            if r["playlist"] == playlist and r["scheme"] == scheme:
                return r
        raise KeyError(f"no {scheme} row for {playlist}")

    for playlist in dict.fromkeys(r["playlist"] for r in rows if r["scheme"] == "one_time"):
        ams, once, rt, nc, jit, paper = (get(playlist, s) for s in ("ams", "one_time", "remote_tracking",
                                                                     "no_customization", "just_in_time", "ams_paper"))
        out.append({"claim": f"AMS ≥ +8 points over No Customization at real time ({playlist}; issue 23)",
                    "holds": ams["delta_vs_nc"] >= 0.08,
                    "evidence": f"{_pts(ams['delta_vs_nc'])} points ({_f(ams['miou'])} vs {_f(nc['miou'])}); the paper's "
                                f"settings {_pts(paper['delta_vs_nc'])}"})
        best = max((rt, jit), key=lambda r: r["miou"])
        out.append({"claim": f"AMS within 2 points of the best baseline or above ({playlist}; issue 23)",
                    "holds": ams["miou"] >= best["miou"] - 0.02,
                    "evidence": f"{_f(ams['miou'])} vs {NAMES[best['scheme']]} {_f(best['miou'])} "
                                f"({ams['uplink_kbps'] + ams['downlink_kbps']:.0f} vs "
                                f"{best['uplink_kbps'] + best['downlink_kbps']:.0f} Kbps up + down)"})
        if not playlist.startswith("real"):   # the long scene (and the synthetic): at or above both, at ≤ their bytes
            kbps = {r["scheme"]: r["uplink_kbps"] + r["downlink_kbps"] for r in (ams, rt, jit)}
            out.append({"claim": f"AMS ≥ Remote+Tracking and Just-In-Time at no more bandwidth than each ({playlist}; "
                                 "issue 23)",
                        "holds": ams["miou"] >= max(rt["miou"], jit["miou"]) and kbps["ams"] <= min(kbps["remote_tracking"],
                                                                                                    kbps["just_in_time"]),
                        "evidence": f"{_f(ams['miou'])} at {kbps['ams']:.0f} Kbps vs Remote+Tracking {_f(rt['miou'])} at "
                                    f"{kbps['remote_tracking']:.0f}, Just-In-Time {_f(jit['miou'])} at "
                                    f"{kbps['just_in_time']:.0f} (up + down)"})
        out.append({"claim": f"AMS > One-Time ({playlist})", "holds": ams["miou"] > once["miou"],
                    "evidence": f"{_f(ams['miou'])} vs {_f(once['miou'])}"})
        out.append({"claim": f"AMS > Remote+Tracking ({playlist})", "holds": ams["miou"] > rt["miou"],
                    "evidence": f"{_f(ams['miou'])} vs {_f(rt['miou'])}"})
        out.append({"claim": f"AMS > No Customization ({playlist})", "holds": ams["miou"] > nc["miou"],
                    "evidence": f"{_f(ams['miou'])} vs {_f(nc['miou'])}, better on {_pct(ams['better_frames'])} of frames"})
    for playlist in dict.fromkeys(s["playlist"] for s in results.get("sweeps", [])):
        pts = [s for s in results["sweeps"] if s["playlist"] == playlist]
        ams_at_10 = [s for s in pts if s["scheme"] == "ams" and s["param"] == "t_update_s" and s["value"] == 10.0]
        jit_by_miou = sorted((s for s in pts if s["scheme"] == "just_in_time"), key=lambda s: s["miou"])
        if not ams_at_10 or not jit_by_miou:
            continue
        target = ams_at_10[0]["miou"]
        reach = [s for s in jit_by_miou if s["miou"] >= target]
        if reach:
            ratio = reach[0]["downlink_kbps"] / max(ams_at_10[0]["downlink_kbps"], 1e-9)
            out.append({"claim": f"JIT needs ≈ 10× AMS's downlink for equal mIoU ({playlist})", "holds": ratio >= 5,
                        "evidence": f"the cheapest JIT at ≥ AMS's {_f(target)} mIoU ({_f(reach[0]['miou'])}, threshold "
                                    f"{reach[0]['value']}) uses {reach[0]['downlink_kbps']} Kbps = {ratio:.1f}× AMS's "
                                    f"{ams_at_10[0]['downlink_kbps']} Kbps"})
        else:
            out.append({"claim": f"JIT needs ≈ 10× AMS's downlink for equal mIoU ({playlist})", "holds": False,
                        "evidence": f"no JIT threshold reached AMS's {_f(target)} (best {_f(jit_by_miou[-1]['miou'])} at "
                                    f"{jit_by_miou[-1]['downlink_kbps']} Kbps)"})
    ablation = results.get("ablation", [])
    mean = {s: float(np.mean([r["miou_delta_vs_full"] for r in ablation if r["selection"] == s]))
            for s in dict.fromkeys(r["selection"] for r in ablation)}
    if {"gradient", "random", "first", "last"} <= set(mean):
        order = sorted(mean, key=lambda s: mean[s], reverse=True)
        holds = mean["gradient"] > mean["random"] > max(mean["first"], mean["last"], mean.get("first_last", -1))
        out.append({"claim": "gradient-guided > random > first/last layers (Table 3)", "holds": holds,
                    "evidence": "mean Δ vs full model over γ: " + ", ".join(f"{s} {_pts(mean[s])}" for s in order)
                                + noise})
    for c in results.get("ceiling") or []:
        if c["check"] == "ceiling" and c["scale"] == 1:
            out.append({"claim": f"the student's capacity does not limit AMS ({c['student']}; ceiling, issue 23)",
                        "holds": c["miou"] - c["ams_miou"] > 0.1,
                        "evidence": f"fitted offline to every label {_f(c['miou'])}, AMS online {_f(c['ams_miou'])}, "
                                    f"No Customization {_f(c['nc_miou'])}"})
    for playlist in dict.fromkeys(r["playlist"] for r in results["schemes"] if r["playlist"].endswith("_parts")):
        five = {r["scheme"]: r for r in results["schemes"] if r["playlist"] == playlist}
        two = {r["scheme"]: r for r in rows if r["playlist"] == playlist.removesuffix("_parts")}
        if not {"ams", "remote_tracking", "just_in_time", "no_customization"} <= set(five) & set(two):
            continue
        gaps = [t["ams"]["miou"] - max(t["remote_tracking"]["miou"], t["just_in_time"]["miou"]) for t in (five, two)]
        out.append({"claim": f"in five classes AMS stays within 2 points of the best baseline or above ({playlist}; "
                             "issue 23)", "holds": gaps[0] >= -0.02,
                    "evidence": f"AMS {_f(five['ams']['miou'])}, Remote+Tracking {_f(five['remote_tracking']['miou'])}, "
                                f"Just-In-Time {_f(five['just_in_time']['miou'])}, No Customization "
                                f"{_f(five['no_customization']['miou'])}: AMS {_pts(gaps[0])} points from the best "
                                f"baseline, {_pts(gaps[1])} in two classes"})
    rc = results.get("rate_control")
    if rc:
        out.append({"claim": "ASR/ATR save uplink on a still scene at no mIoU cost",
                    "holds": rc["uplink_saved"] > 0 and rc["miou_delta"] > -0.005,
                    "evidence": f"uplink {_pct(rc['uplink_saved'])} lower, downlink {_pct(rc['downlink_saved'])} lower, "
                                f"mIoU {_pts(rc['miou_delta'])} points vs a fixed 1 fps / 10 s"})
    return out


@contextlib.contextmanager
def _figure(path: str, **subplots):
    """(figure, axes) from matplotlib's headless backend, laid out, saved to `path` and closed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(**subplots)
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cdf(results: dict, path: str) -> None:
    gains = results["per_frame_gain"]
    with _figure(path, ncols=len(gains), figsize=(5 * len(gains), 3.6), squeeze=False) as (fig, axes):
        _cdf_axes(axes[0], gains)


def _cdf_axes(axes, gains: dict) -> None:
    for ax, (playlist, by_scheme) in zip(axes, gains.items()):
        for scheme, g in by_scheme.items():
            x = np.sort(np.array(g)) * 100
            ax.plot(x, np.arange(1, len(x) + 1) / len(x), label=NAMES[scheme])
        ax.axvline(0, color="0.6", lw=0.8)
        ax.set_xlabel("per-frame mIoU gain over No Customization (points)")
        ax.set_ylabel("fraction of frames")
        ax.set_title(playlist)
        ax.legend(fontsize=8)


def plot_sweeps(results: dict, path: str) -> None:
    with _figure(path, figsize=(6.5, 4)) as (fig, ax):
        _sweep_axes(ax, results["sweeps"])


def _sweep_axes(ax, sweeps: list[dict]) -> None:
    colours = dict(zip(dict.fromkeys(s["playlist"] for s in sweeps), ("tab:blue", "tab:green", "tab:red")))
    for s in sweeps:
        marker = {"ams": "o", "ams_paper": "D", "just_in_time": "^", "remote_tracking": "s"}[s["scheme"]]
        colour = colours[s["playlist"]]
        ax.scatter(s["downlink_kbps"], s["miou"], marker=marker, edgecolors=colour,
                   facecolors="none" if s["param"] == "gamma" else colour)
        ax.annotate(f"{SWEEP_SYMBOL.get(s['param'], s['param'])}={s['value']:.3g}", (s["downlink_kbps"], s["miou"]), fontsize=6)
    for playlist, colour in colours.items():
        ax.scatter([], [], color=colour, marker="s", label=playlist)
    ax.scatter([], [], color="k", marker="o", label="AMS (T_update, t_fast, cpu phase; hollow: γ)")
    ax.scatter([], [], color="k", marker="D", label="AMS (paper), cpu phase")
    ax.scatter([], [], color="k", marker="^", label="Just-In-Time (threshold)")
    ax.scatter([], [], color="k", marker="s", label="Remote+Tracking (labels per second)")
    ax.set_xscale("log")
    ax.set_xlabel("downlink (Kbps)")
    ax.set_ylabel("mIoU")
    ax.legend(fontsize=7)


def plot_rate_control(results: dict, path: str) -> None:
    rc = results["rate_control"]
    with _figure(path, figsize=(8, 3.4)) as (fig, ax):
        _rate_axes(ax, rc)


def _rate_axes(ax, rc: dict) -> None:
    control = np.array(rc["adaptive"]["control"]) if rc["adaptive"]["control"] else np.zeros((0, 3))
    ax.step(control[:, 0], control[:, 1], where="post", color="tab:blue", label="sampling rate (fps)")
    ax.set_xlabel("video time (s)")
    ax.set_ylabel("fps", color="tab:blue")
    ax2 = ax.twinx()
    ax2.step(control[:, 0], control[:, 2], where="post", color="tab:orange", label="T_update (s)")
    ax2.set_ylabel("T_update (s)", color="tab:orange")
    ax.set_title(f"ASR + ATR on {rc['playlist']}: {rc['note']}", fontsize=8)


def write_report(results: dict, out_dir: str) -> None:
    plot_cdf(results, os.path.join(out_dir, "cdf_gain.png"))
    if results["rate_control"]:
        plot_rate_control(results, os.path.join(out_dir, "rate_control.png"))
    title = " (quick)" if results["quick"] else " (the long scene)" if results.get("long") else ""
    parts = ["# AMS evaluation" + title, "",
             "Protocol: " + results["protocol"]["scoring"] + ". " + results["protocol"]["clock"] + ".", "",
             "## Playlists", ""]
    parts += [f"- **{name}**: {p['note']}" for name, p in results["protocol"]["playlists"].items()]
    parts += ["", "## Schemes (paper §4.1, Table 1)", "", "AMS (paper): the paper's fixed T_update; AMS: the system's "
              f"defaults ({', '.join(f'{k} {v}' for k, v in results['protocol'].get('ours', {}).items())}: fast start "
              "and scene changes, services/trainer/pace.py). Every update (AMS, One-Time, Just-In-Time) applies "
              f"{results['protocol'].get('update_delay_s', 0)} s of video after it was made; Remote+Tracking's labels "
              "0.4 s after their frame. Playlists ending in _slow are slow motion: a sensitivity row, never a headline.",
              "", schemes_table(results["schemes"]), "",
              "miou_seen (repeated passes, never a headline): " + ", ".join(
                  f"{r['scheme']} on {r['playlist']}: {_f(r['miou_seen'])}" for r in results["schemes"]
                  if r["miou_seen"] is not None) or "none", "",
              "![CDF of per-frame gain](cdf_gain.png)", ""]
    if results["ablation"]:
        parts += ["## Coordinate selection (Table 3)", "", "mIoU difference from training every parameter, in points, on "
                  f"{results['protocol'].get('ablation_playlist', 'real_people')}.",
                  "", ablation_table(results["ablation"], results["ablation_full"]), ""]
    if results.get("ceiling"):
        parts += ["## The student's ceiling and the teacher against itself (issue 23)", "",
                  "ceiling: w0 fitted offline, every parameter, to the teacher's labels of the very frames it is scored "
                  "on (ams/eval/ceiling.py; it breaks the protocol on purpose: never a headline). "
                  "teacher_on_uploads: the teacher's label of each frame after the trip to the trainer (an H.264 "
                  "frame at the edge's bit rate) against its label of the pristine frame.", "",
                  ceiling_table(results["ceiling"]), ""]
    if results["sweeps"]:
        plot_sweeps(results, os.path.join(out_dir, "miou_vs_downlink.png"))
        parts += ["## Sweeps (Fig. 4)", "", _table(["playlist", "scheme", "parameter", "value", "mIoU", "downlink Kbps",
                                                    "uplink Kbps"],
                                                   [[s["playlist"], NAMES[s["scheme"]], s["param"], s["value"], _f(s["miou"]),
                                                     s["downlink_kbps"], s["uplink_kbps"]] for s in results["sweeps"]]),
                  "", "![mIoU vs downlink](miou_vs_downlink.png)", ""]
    if results.get("variance"):
        parts += ["## Run-to-run spread", "", "The same run with other trainer seeds (I_1 and the mini-batches); "
                  "a difference between schemes smaller than about two of these standard deviations is noise.", "",
                  _table(["scheme", "playlist", "mIoU per seed", "mean", "std (points)"],
                         [[NAMES[v["scheme"]], v["playlist"], ", ".join(_f(m) for m in v["miou"]), _f(v["mean"]),
                           f"{100 * v['std']:.1f}"] for v in results["variance"]]), ""]
    rc = results["rate_control"]
    if rc:
        parts += ["## Rate control (ASR + ATR)", "", rc["note"], "",
                  _table(["run", "mIoU", "uplink Kbps", "downlink Kbps", "updates"],
                         [[k, _f(rc[k]["miou"]), rc[k]["uplink_kbps"], rc[k]["downlink_kbps"], rc[k]["updates"]]
                          for k in ("adaptive", "fixed")]), "",
                  f"Uplink saved: {_pct(rc['uplink_saved'])}; downlink saved: {_pct(rc['downlink_saved'])}; mIoU "
                  f"{_pts(rc['miou_delta'])} points.", "", "![rate control](rate_control.png)", ""]
    if results["services_check"]:
        parts += ["## In-process harness vs the real services (AMS, the people playlist)", "",
                  _table(["student", "in-process mIoU", "services mIoU", "difference (points)",
                          "updates (in-process / services)"],
                         [[r["student"], _f(r["in_process_miou"]), _f(r["services_miou"]), f"{r['difference_points']:+.2f}",
                           f"{r['in_process_updates']} / {r['services_updates']}"] for r in results["services_check"]]), ""]
    parts += ["## The paper's findings on our data", "",
              _table(["claim", "holds", "evidence"], [[f["claim"], "yes" if f["holds"] else "**no**", f["evidence"]]
                                                     for f in results["findings"]]), "",
              f"{results.get('runs', '?')} in-process runs, {results.get('runs_wall_seconds', 0):.0f} s of run time "
              f"(two at a time, one thread each); this invocation {results['wall_seconds']:.0f} s (runs cached under "
              "runs/ are not re-run)."]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(parts) + "\n")


def readme_table(results: dict) -> str:
    main = [r for r in results["schemes"] if r["student"] == "deeplabv3_mnv2" and r["playlist"] != "real_looped"
            and not r["playlist"].endswith("_slow")]
    others = [r for r in results["schemes"] if r not in main]
    text = [schemes_table(main), ""]
    if others:
        text += ["Other students, the looped playlist and the slow-motion sensitivity rows (never a headline):", "",
                 schemes_table(others), ""]
    if results.get("ablation"):
        text += [f"Coordinate selection (Table 3) on {results['protocol'].get('ablation_playlist', '')}, mIoU points "
                 "against training every parameter:", "", ablation_table(results["ablation"], results["ablation_full"]), ""]
    if results.get("ceiling"):
        text += ["The ceiling (offline fit to every label of real_people, a diagnostic) and the teacher against itself:",
                 "", ceiling_table(results["ceiling"]), ""]
    if results.get("services_check"):
        text += ["In-process vs the real services (AMS, per student): " + ", ".join(
            f"{r['student']} {_f(r['in_process_miou'])} / {_f(r['services_miou'])} ({r['difference_points']:+.2f} points)"
            for r in results["services_check"]), ""]
    text += ["Findings:", ""]
    text += [f"- {f['claim']}: {'holds' if f['holds'] else '**does not hold**'} ({f['evidence']})" for f in results["findings"]]
    return "\n".join(text)
