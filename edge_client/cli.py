"""`ams-edge`: run an edge device against an AMS trainer on a video file, a playlist, a live stream or a camera.

SIGTERM or SIGINT ends the run after the current frame: the session is closed, the overlay (if any) is
finalised and summary.json written, and the exit status is 0."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading

import torch
from prometheus_client import start_http_server

from ams import logs
from ams.device import resolve_device
from ams.pki import CertFiles, identity_of
from ams.update_codec import CODEC_NAMES, CODECS, parse_codecs
from ams.video import CLIP_CRF
from edge_client.evaluation import TeacherLabeler
from edge_client.label_carrier import HINT_TTL_S
from edge_client.client import EdgeClient, EdgeError, EdgeOptions
from edge_client.live_source import is_live
from edge_client.runtime import EdgeRuntime
from edge_client.sources import expand, open_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="ams-edge", description=__doc__)
    p.add_argument("--trainer", default=env("AMS_TRAINER_ADDR", "127.0.0.1:50052"), help="trainer host:port (AMS_TRAINER_ADDR)")
    p.add_argument("--ca", default=env("AMS_TLS_CA", ""), help="the operator's CA certificate (AMS_TLS_CA)")
    p.add_argument("--cert", default=env("AMS_TLS_CERT", ""),
                   help="this device's certificate from `ams-admin issue-device` (AMS_TLS_CERT); its subject is the device id")
    p.add_argument("--key", default=env("AMS_TLS_KEY", ""), help="this device's private key (AMS_TLS_KEY)")
    p.add_argument("--insecure", action="store_true", default=env("AMS_INSECURE", "") in ("1", "true"),
                   help="plain text to a trainer in insecure mode (local demo only; AMS_INSECURE)")
    p.add_argument("--device-id", default=env("AMS_DEVICE_ID", socket.gethostname()),
                   help="device identity sent as a header in --insecure mode (AMS_DEVICE_ID)")
    p.add_argument("--source", "--video", dest="source", action="append", required=True,
                   help="a video file, a directory of them, a playlist (.m3u/.txt), a synthetic scene 'synthetic:seed=1,"
                        "...', a stream (rtsp://, rtmp://, http(s)://, udp://, srt://) or a V4L2 camera /dev/videoN; "
                        "files repeat to play back to back; a stream or camera implies --mode live")
    p.add_argument("--source-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an FFmpeg input option of a live source, e.g. rtsp_transport=udp, video_size=640x480, "
                        "framerate=30, input_format=mjpeg (repeatable; RTSP defaults to rtsp_transport=tcp)")
    p.add_argument("--loops", type=int, default=1, help="play the playlist this many times (0 = forever)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this much video time")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="play video files this many times slower on the algorithm's clock (the evaluation's slow "
                        "motion: the paper's time constants over short clips); synthetic scenes keep their own time")
    p.add_argument("--mode", choices=["replay", "live"], default=None,
                   help="replay: files as fast as possible, each interval's update awaited (deterministic; the default "
                        "for files); live: at capture pace, frames the model cannot keep up with dropped (the default "
                        "for streams and cameras)")
    p.add_argument("--update-delay-s", type=float, default=0.0,
                   help="replay: apply each update this many seconds of video after the interval it was trained on "
                        "ended (the latency a live device sees; the evaluation uses 1.0); 0 = on arrival")
    p.add_argument("--hint-delay-s", type=float, default=0.0,
                   help="replay: a label hint arrives this many seconds of video after its clip's upload (the "
                        "evaluation uses 0.4: uplink, teacher, RTT); 0 = on arrival")
    p.add_argument("--hint-ttl-s", type=float, default=HINT_TTL_S,
                   help="show the trainer's label hint, carried by optical flow, instead of the student's output while "
                        "it is at most this old; 0 = never ask for hints")
    p.add_argument("--no-hint-judge", dest="hint_judge", action="store_false",
                   help="always show a fresh hint (by default the student is shown instead while it got fewer "
                        "pixels wrong than the carried label on the last 4 uploaded frames of the shot)")
    p.add_argument("--segmenter", choices=["auto", "frame", "streamdeq", "lowlatency"], default="auto",
                   help="how to run the student: frame = one pass per frame; streamdeq = warm-started M iterations "
                        "per frame; lowlatency = adaptive key frames + feature propagation; auto = by the student")
    p.add_argument("--checkpoint", default=env("AMS_STUDENT_CHECKPOINT"),
                   help="pretrained student the trainer should start from ('' = fresh weights from --arch/--config); "
                        "default deeplabv3_mnv2_selfie, or streamdeq_selfie with --segmenter streamdeq")
    p.add_argument("--deq-iters", type=int, default=2, help="StreamDEQ: solver iterations per frame (M)")
    p.add_argument("--deq-budget-ms", type=float, default=None, help="StreamDEQ: choose M per frame to fit this budget")
    p.add_argument("--deq-solver", choices=["unroll", "broyden"], default="unroll", help="StreamDEQ solver")
    p.add_argument("--deq-cut-threshold", type=float, default=0.15,
                   help="StreamDEQ: reset the state when consecutive thumbnails differ by more than this (0 = never)")
    p.add_argument("--ll-scheme", choices=["full", "fixed", "adaptive", "adaptive_lls"], default="adaptive_lls",
                   help="low-latency key-frame scheme")
    p.add_argument("--ll-threshold", type=float, default=0.02, help="low-latency: predicted deviation for a key frame")
    p.add_argument("--ll-interval", type=int, default=5, help="low-latency: key-frame interval of the fixed scheme")
    p.add_argument("--arch", default="deeplabv3_mnv2", help="student architecture")
    p.add_argument("--config", default="", help="student config JSON (with --checkpoint '' )")
    p.add_argument("--eval-teacher", default=env("AMS_EVAL_TEACHER_ADDR", ""),
                   help="teacher host:port to score mIoU against (off when empty)")
    p.add_argument("--eval-cert", default=env("AMS_EVAL_TLS_CERT", ""),
                   help="service certificate for --eval-teacher (the teacher does not serve devices)")
    p.add_argument("--eval-key", default=env("AMS_EVAL_TLS_KEY", ""), help="its private key")
    p.add_argument("--eval-every", type=int, default=1, help="score every n-th frame")
    p.add_argument("--no-baseline", action="store_true", help="do not run the never-updated model for comparison")
    p.add_argument("--update-codecs", default=env("AMS_EDGE_UPDATE_CODECS", ",".join(CODECS)),
                   help="update codecs this edge offers the trainer, comma-separated (AMS_EDGE_UPDATE_CODECS; "
                        f"known: {', '.join(CODECS)}); the trainer picks one per session")
    p.add_argument("--metrics-port", type=int, default=int(env("AMS_EDGE_METRICS_PORT", "0")),
                   help="serve Prometheus metrics on this port (AMS_EDGE_METRICS_PORT; 0 = off)")
    p.add_argument("--clip-bitrate", type=int, default=0, help="H.264 average bitrate of uploaded clips (bit/s); "
                   "0: constant quality (--clip-crf)")
    p.add_argument("--clip-crf", type=int, default=CLIP_CRF, help="H.264 constant quality of uploaded clips (x264 CRF)")
    p.add_argument("--out", default="out/edge", help="directory for summary.json and overlay.mp4")
    p.add_argument("--overlay", dest="overlay", action="store_true", default=None,
                   help="write overlay.mp4 (the default in replay; in live mode only when asked: it grows with the run)")
    p.add_argument("--no-overlay", dest="overlay", action="store_false")
    p.add_argument("--export-dir", default="",
                   help="at the end of the run, write the adapted student there as ONNX and TorchScript with its card "
                        "(student.onnx, student.ts, student.json: config, version, input/output contract)")
    p.add_argument("--connect-timeout-s", type=float, default=10.0,
                   help="wait this long for the trainer before serving the local checkpoint and retrying in the "
                        "background")
    p.add_argument("--log-level", default=env("AMS_LOG_LEVEL", "INFO"), help="logging level (AMS_LOG_LEVEL)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--threads", type=int, default=int(env("AMS_EDGE_THREADS", "2")), help="torch threads")
    p.add_argument("--device", default=env("AMS_EDGE_DEVICE", "cpu"),
                   help="where the segmenter runs: cpu, cuda, cuda:N or auto (AMS_EDGE_DEVICE)")
    return p.parse_args(argv)


def _segmenter_options(args: argparse.Namespace) -> dict:
    """The segmenter options of each streaming architecture (the client takes its student's)."""
    return {"streamdeq": {"iters": args.deq_iters, "solver": args.deq_solver, "budget_ms": args.deq_budget_ms,
                          "cut_threshold": args.deq_cut_threshold or None},
            "lowlatency": {"scheme": args.ll_scheme, "threshold": args.ll_threshold, "interval": args.ll_interval}}


def _codecs(names: str) -> tuple[str, ...]:
    try:
        return tuple(CODEC_NAMES[c] for c in parse_codecs(names))
    except ValueError as exc:
        raise SystemExit(f"ams-edge: --update-codecs: {exc}") from exc


def _tls(args: argparse.Namespace) -> tuple[CertFiles | None, CertFiles | None]:
    """(device files for the trainer, service files for the evaluation teacher); None, None when --insecure."""
    if args.insecure:
        logging.getLogger("ams-edge").warning("plain text to the trainer (--insecure): local demo only")
        return None, None
    missing = [flag for flag in ("ca", "cert", "key") if not getattr(args, flag)]
    if missing:
        raise SystemExit(f"ams-edge: --{', --'.join(missing)} needed (a device certificate from `ams-admin "
                         "issue-device`), or --insecure against a local plain-text trainer")
    device = CertFiles(args.ca, args.cert, args.key)
    with open(args.cert, "rb") as f:
        args.device_id = identity_of(f.read()).name
    if args.eval_teacher and not (args.eval_cert and args.eval_key):
        raise SystemExit("ams-edge: --eval-teacher needs --eval-cert/--eval-key (a service certificate)")
    return device, CertFiles(args.ca, args.eval_cert, args.eval_key) if args.eval_teacher else None


def _source_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"ams-edge: --source-option {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def _stop_on_signals() -> threading.Event:
    """SIGTERM / SIGINT set the event: the run ends after the current frame. A second signal exits at once."""
    stop = threading.Event()

    def handler(signum, _frame):
        if stop.is_set():
            raise SystemExit(128 + signum)
        logging.getLogger("ams-edge").warning("%s: finishing the current frame, then closing the session",
                                              signal.Signals(signum).name)
        stop.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        logs.setup_logging(args.log_level)     # AMS_LOG_FORMAT=json for one JSON object per line
    except ValueError as exc:
        print(f"ams-edge: error: {exc}", file=sys.stderr)
        return 2
    device_tls, eval_tls = _tls(args)
    try:
        device = str(resolve_device(args.device))
    except (RuntimeError, ValueError) as exc:
        raise SystemExit(f"ams-edge: --device: {exc}") from exc
    try:
        sources = expand(args.source)
    except ValueError as exc:
        raise SystemExit(f"ams-edge: --source: {exc}") from exc
    live_source = any(is_live(s) for s in sources)
    mode = args.mode or ("live" if live_source else "replay")
    if live_source and mode == "replay":
        raise SystemExit("ams-edge: a stream or camera runs in --mode live")
    if args.checkpoint is None:
        args.checkpoint = {"streamdeq": "streamdeq_selfie", "lowlatency": "lowlatency_selfie"}.get(
            args.segmenter, "deeplabv3_mnv2_selfie")
    torch.set_num_threads(args.threads)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    os.makedirs(args.out, exist_ok=True)
    overlay = args.overlay if args.overlay is not None else mode == "replay"
    options = EdgeOptions(mode=mode, eval_every=args.eval_every if args.eval_teacher else 0,
                          clip_bitrate=args.clip_bitrate, clip_crf=args.clip_crf, progress=not args.quiet,
                          baseline=not args.no_baseline,
                          overlay_path=os.path.join(args.out, "overlay.mp4") if overlay else None,
                          segmenter=args.segmenter, update_delay_s=args.update_delay_s,
                          hint_delay_s=args.hint_delay_s, hint_ttl_s=args.hint_ttl_s, hint_judge=args.hint_judge,
                          segmenter_options=_segmenter_options(args))
    stop = _stop_on_signals()
    try:
        client = EdgeClient(args.trainer, device_tls, args.checkpoint, device_id=args.device_id,
                            architecture=args.arch, config_json=args.config, options=options,
                            update_codecs=_codecs(args.update_codecs), device=device,
                            connect_timeout_s=args.connect_timeout_s)
    except EdgeError as exc:
        raise SystemExit(f"ams-edge: {exc}") from None
    labeler = TeacherLabeler(args.eval_teacher, eval_tls) if args.eval_teacher else None
    try:
        source = open_source(sources, client.input_size, loops=args.loops, max_seconds=args.max_seconds,
                             time_scale=args.time_scale, options=_source_options(args.source_option), stop=stop)
        summary = EdgeRuntime(client, source, labeler, stop=stop).run()
        if args.export_dir:
            card = client.export(args.export_dir)
            summary["export"] = {"dir": args.export_dir, "version": card["version"]}
    finally:
        client.close()
        if labeler:
            labeler.close()
    summary.update({"device_id": args.device_id, "session_id": client.link.session_id, "videos": args.source})
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    keys = ("frames", "updates", "uplink_kbps", "downlink_kbps", "edge_fps")
    scores = {k: summary[k]["miou"] for k in ("ams", "no_customization") if k in summary}
    print(json.dumps({k: summary[k] for k in keys} | scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
