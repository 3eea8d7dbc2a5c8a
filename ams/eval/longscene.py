"""The long-scene playlist (issue 23 item 5): Big Buck Bunny with people pasted in, and its exact labels.

Big Buck Bunny (the whole film, 9 min 56 s, 24 fps, CC-BY 3.0 Blender Foundation; moviepy 2.2.1's source
distribution, tools/fetch_eval_videos.sh) gives minutes-long scenes with real camera motion, lighting
and scenery. People cut out of our three people clips with the selfie teacher's masks walk into it
along smooth paths, stay 25-80 s, drift and change size slowly, and leave; now and then two overlap,
and between visits the scene has nobody in it. What is pasted is exactly the mask, so the pasted
masks are the exact labels (an oracle teacher, `labels:` in services/teacher/backends.py).

    python -m ams.eval.longscene        # -> data/videos/eval/longscene.mp4 + longscene_labels.npz

Deterministic from SEED; about 3 minutes on 2 cores, once (make eval-videos).
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import av
import cv2
import numpy as np

from ams import label_track
from ams.ops.procs import ROOT

BBB = "data/videos/eval/bbb.mp4"
SIZE_WH = (512, 288)
SEED = 23
CUTOUT_HEIGHT = 240          # the people clips are downscaled to this height before cutting out
EDGE_S = 2.5                 # walking in from the frame's edge (and out again) takes this long


@dataclass
class Cutout:
    """One people clip's frames cut out with the teacher's mask, cropped to the mask's box."""

    name: str
    fps: float
    rgb: list[np.ndarray]
    mask: list[np.ndarray]    # uint8 0/1, the same size as rgb


def cutouts(paths: list[str], min_area: float = 0.02) -> list[Cutout]:
    """Each clip's frames with the selfie teacher's person mask, cropped to the union box of the clip's
    masks (so the person keeps still relative to the crop); frames with almost no person are dropped."""
    from ams.eval.playlists import TEACHER_MODEL
    from services.teacher.backends import TeacherInput, make_backend
    from edge_client.video_source import _file_frames

    teacher = make_backend("litert", os.path.join(ROOT, TEACHER_MODEL), threads=2)
    teacher.load()
    out = []
    for path in paths:
        with av.open(path) as c:
            fps = float(c.streams.video[0].average_rate or 25)
        frames, masks = [], []
        for _, rgb in _file_frames(path):
            h, w = rgb.shape[:2]
            rgb = cv2.resize(rgb, (round(w * CUTOUT_HEIGHT / h), CUTOUT_HEIGHT), interpolation=cv2.INTER_AREA)
            result = teacher.infer_batch([TeacherInput(rgb, 0.0)])[0]
            if isinstance(result, Exception):
                raise result
            if result.class_map.mean() >= min_area:
                frames.append(rgb)
                masks.append(result.class_map)
        union = np.any(np.stack(masks), axis=0)
        ys, xs = np.nonzero(union)
        box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
        out.append(Cutout(os.path.basename(path), fps, [f[box] for f in frames], [m[box] for m in masks]))
    teacher.close()
    return out


@dataclass(frozen=True)
class Visit:
    """One person's stay: in from one edge at `t_in`, out at `t_out`, drifting about `x` (a fraction of
    the width), `height` of the frame high (±12 % slowly), playing the cutout's frames back and forth."""

    cutout: int
    t_in: float
    t_out: float
    x: float
    height: float
    enter_left: bool
    leave_left: bool
    drift: float
    period: float
    phase: float

    def position(self, t: float) -> tuple[float, float] | None:
        """(centre x as a fraction of the width, height as a fraction of the frame's) at t, or None."""
        if not self.t_in <= t < self.t_out:
            return None
        height = self.height * (1 + 0.12 * math.sin(2 * math.pi * (t - self.t_in) / (1.7 * self.period) + self.phase))
        x = self.x + self.drift * math.sin(2 * math.pi * (t - self.t_in) / self.period + self.phase)
        off_left, off_right = -0.45 * height, 1 + 0.45 * height   # just out of the frame
        a, b = (t - self.t_in) / EDGE_S, (self.t_out - t) / EDGE_S
        if a < 1:
            x = _smooth(off_left if self.enter_left else off_right, x, a)
        elif b < 1:
            x = _smooth(off_left if self.leave_left else off_right, x, b)
        return x, height


def _smooth(start: float, end: float, a: float) -> float:
    a = a * a * (3 - 2 * a)
    return start + (end - start) * a


def schedule(duration: float, n_cutouts: int, seed: int = SEED) -> list[Visit]:
    """Visits over [0, duration): one person at a time, a second one joining a third of the time,
    gaps of 3-15 s with nobody."""
    rng = np.random.default_rng(seed)
    visits: list[Visit] = []
    t = float(rng.uniform(1, 4))
    while t < duration - 10:
        stay = float(rng.uniform(25, 80))

        def visit(t_in: float, t_out: float, x: float) -> Visit:
            return Visit(int(rng.integers(n_cutouts)), t_in, min(t_out, duration), x, float(rng.uniform(0.45, 0.95)),
                         bool(rng.random() < 0.5), bool(rng.random() < 0.5), float(rng.uniform(0.03, 0.15)),
                         float(rng.uniform(18, 40)), float(rng.uniform(0, 2 * math.pi)))

        first = visit(t, t + stay, float(rng.uniform(0.25, 0.75)))
        visits.append(first)
        if rng.random() < 1 / 3:
            join = t + float(rng.uniform(0.2, 0.6)) * stay
            other_x = 1 - first.x + float(rng.uniform(-0.1, 0.1))
            visits.append(visit(join, join + float(rng.uniform(15, 40)), min(max(other_x, 0.15), 0.85)))
        t = max(v.t_out for v in visits) + float(rng.uniform(3, 15))
    return visits


def composite(background: np.ndarray, t: float, visits: list[Visit], bank: list[Cutout]) -> tuple[np.ndarray, np.ndarray]:
    """(frame, label) at t: each visiting person pasted over `background` (later visits in front),
    the label 1 exactly where a person's pixels were pasted."""
    frame, label = background.copy(), np.zeros(background.shape[:2], np.uint8)
    H, W = background.shape[:2]
    for v in visits:
        pos = v.position(t)
        if pos is None:
            continue
        c = bank[v.cutout]
        n = len(c.rgb)
        k = int((t - v.t_in) * c.fps) % (2 * n - 2 if n > 1 else 1)
        k = k if k < n else 2 * n - 2 - k                 # back and forth, no jump at the end
        h = max(2, round(pos[1] * H))
        w = max(2, round(c.rgb[k].shape[1] * h / c.rgb[k].shape[0]))
        rgb = cv2.resize(c.rgb[k], (w, h), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(c.mask[k], (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
        x0, y0 = round(pos[0] * W - w / 2), H - h + round(0.04 * h)   # standing on the bottom edge
        fx, fy = slice(max(x0, 0), min(x0 + w, W)), slice(max(y0, 0), min(y0 + h, H))
        if fx.start >= fx.stop or fy.start >= fy.stop:
            continue
        cx, cy = slice(fx.start - x0, fx.stop - x0), slice(fy.start - y0, fy.stop - y0)
        m = mask[cy, cx]
        frame[fy, fx][m] = rgb[cy, cx][m]
        label[fy, fx][m] = 1
    return frame, label


def render(bbb: str, video: str, labels: str, people: list[str], seed: int = SEED) -> dict:
    """Write the composited clip (H.264, CRF 18) and its label track; returns the schedule's summary."""
    from edge_client.video_source import _file_frames, file_duration

    bank = cutouts(people)
    duration = file_duration(bbb)
    visits = schedule(duration, len(bank), seed)
    w, h = SIZE_WH
    fps = 24
    out_labels: list[np.ndarray] = []
    with av.open(video + ".part", "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        stream.options = {"crf": "18", "preset": "veryfast"}
        for i, (_, rgb) in enumerate(_file_frames(bbb)):
            frame, label = composite(cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA), i / fps, visits, bank)
            out_labels.append(label)
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    person = float(np.mean([label.mean() for label in out_labels]))
    present = float(np.mean([label.any() for label in out_labels]))
    meta = {"seed": seed, "visits": len(visits), "people": [c.name for c in bank], "person_share": person,
            "frames_with_people": present, "seconds": len(out_labels) / fps}
    label_track.write(labels + ".part", fps, ["background", "person"], out_labels, meta)
    os.replace(labels + ".part", labels)
    os.replace(video + ".part", video)
    return meta


def main() -> None:
    from ams.eval.playlists import LONG_SCENE, LONG_SCENE_LABELS, PEOPLE_CLIPS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="render again even when both files are there")
    args = ap.parse_args()
    video, labels = os.path.join(ROOT, LONG_SCENE), os.path.join(ROOT, LONG_SCENE_LABELS)
    if not args.force and os.path.exists(video) and os.path.exists(labels):
        return
    meta = render(os.path.join(ROOT, BBB), video, labels, [os.path.join(ROOT, p) for p in PEOPLE_CLIPS])
    print(f"long scene -> {LONG_SCENE} + {LONG_SCENE_LABELS}: {meta['seconds']:.1f} s, {meta['visits']} visits, people in "
          f"{meta['frames_with_people']:.0%} of frames, {meta['person_share']:.1%} of pixels")


if __name__ == "__main__":
    main()
