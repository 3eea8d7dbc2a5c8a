"""Synthetic videos with exact ground truth: moving blobs over a textured background, with a domain shift.

A scene is fully described by a short spec string, e.g. "synthetic:seed=1,w=128,h=72,fps=10,duration=40,shift=20",
so the edge's video source and the teacher's oracle backend render the same frame and label for a
capture time. After `shift` seconds the palette changes (the "domain shift"): the background takes
on colours close to the objects' old colours, which a model fit to the first half gets wrong.
With `period` > 0 the palette instead changes every `period` seconds to a new one drawn from the
seed (a long video of scheduled, non-repeating domain shifts); between `still_from` and `still_to`
the scene stands still (blobs and texture frozen, sensor noise only), for rate-control runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ["background", "object"]


@dataclass(frozen=True)
class SyntheticScene:
    seed: int = 0
    w: int = 128
    h: int = 72
    fps: float = 10.0
    duration: float = 40.0
    shift: float = 20.0
    blobs: int = 3
    period: float = 0.0      # > 0: a new palette every `period` seconds (replaces the single `shift`)
    still_from: float = 0.0  # the scene is frozen for still_from <= t < still_to
    still_to: float = 0.0

    @classmethod
    def from_spec(cls, spec: str) -> "SyntheticScene":
        """Parse "synthetic:k=v,..." (the prefix is optional)."""
        body = spec.split(":", 1)[1] if spec.startswith("synthetic:") else spec
        kwargs: dict = {}
        for part in filter(None, body.split(",")):
            key, _, value = part.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown synthetic scene field {key!r}")
            kwargs[key] = type(getattr(cls(), key))(float(value)) if key != "fps" else float(value)
        return cls(**kwargs)

    def spec(self) -> str:
        return "synthetic:" + ",".join(f"{k}={getattr(self, k)}" for k in self.__dataclass_fields__)

    @property
    def num_frames(self) -> int:
        return int(round(self.duration * self.fps))

    def _palette(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.period > 0:
            return self._drawn_palette(int(t // self.period))
        if t < self.shift:  # domain A: cool grey-blue background, warm red objects
            return np.array([70, 90, 130]), np.array([40, 50, 60]), np.array([210, 60, 50])
        # domain B: warm red-brown background, cool green objects
        return np.array([190, 80, 60]), np.array([60, 40, 30]), np.array([60, 170, 90])

    def _drawn_palette(self, domain: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Domain `domain`'s (background, stripe, object) colours: random, the object ≥ 120 apart
        from the background in RGB so the task stays solvable."""
        rng = np.random.default_rng((self.seed, 7919, domain))
        base = rng.uniform(30, 225, 3)
        obj = rng.uniform(30, 225, 3)
        while np.linalg.norm(obj - base) < 120:
            obj = rng.uniform(30, 225, 3)
        return base.round(), (base * rng.uniform(0.3, 0.7)).round(), obj.round()

    def motion_time(self, t: float) -> float:
        """The time the scene's motion has reached at capture time t (it stops while still)."""
        if self.still_to <= self.still_from or t < self.still_from:
            return t
        return self.still_from if t < self.still_to else t - (self.still_to - self.still_from)

    def render(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 RGB frame and (H, W) uint8 label at capture time t."""
        rng = np.random.default_rng(self.seed)
        yy, xx = np.mgrid[0:self.h, 0:self.w].astype(np.float32)
        base, stripe, obj = self._palette(t)
        noise_t, t = t, self.motion_time(t)
        phase = rng.uniform(0, 2 * np.pi)
        texture = 0.5 + 0.5 * np.sin(xx / 5.0 + yy / 9.0 + phase + 0.3 * t)  # slow-moving stripes
        img = base[None, None, :] * (1 - 0.5 * texture[..., None]) + stripe[None, None, :] * 0.5 * texture[..., None]
        label = np.zeros((self.h, self.w), dtype=np.uint8)
        for _ in range(self.blobs):
            cx0, cy0 = rng.uniform(0.2, 0.8) * self.w, rng.uniform(0.25, 0.75) * self.h
            ax, ay = rng.uniform(0.08, 0.16) * self.w, rng.uniform(0.15, 0.3) * self.h
            fx, fy, ph = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi)
            cx = cx0 + 0.25 * self.w * np.sin(2 * np.pi * fx * t + ph)
            cy = cy0 + 0.15 * self.h * np.cos(2 * np.pi * fy * t + ph)
            inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0
            shade = 0.8 + 0.2 * np.cos((xx - cx) / ax * 2)[..., None]
            img = np.where(inside[..., None], obj[None, None, :] * shade, img)
            label[inside] = 1
        noise = np.random.default_rng((self.seed, int(round(noise_t * 1000)))).normal(0, 6, img.shape)
        return np.clip(img + noise, 0, 255).astype(np.uint8), label

    def frame_index(self, t: float) -> int:
        return int(round(t * self.fps))
