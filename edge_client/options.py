"""The edge client's configuration and value types: how an `EdgeClient` runs (`EdgeOptions`), what it answers
per frame (`Result`), and the one error it raises (`EdgeError`). Re-exported by edge_client.client and the
edge_client package."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ams.video import CLIP_CRF
from edge_client.label_carrier import HINT_TTL_S
from edge_client.model_holder import ModelHolder
from edge_client.segmenters import make_segmenter

DEFAULT_STUDENT = "deeplabv3_mnv2_selfie"


class EdgeError(RuntimeError):
    """The trainer refused this device or its student, or no model can be had: retrying will not help."""


@dataclass
class EdgeOptions:
    mode: str = "live"                   # live: uploads on a background thread; replay: each interval's clip is
                                         # uploaded in line and its update awaited (deterministic runs)
    eval_every: int = 1                  # evaluate every n-th frame (0 = off; needs a teacher to score against)
    clip_bitrate: int = 0                # > 0: an average bit rate instead of constant quality
    clip_crf: int = CLIP_CRF
    progress: bool = False
    overlay_path: str | None = None
    baseline: bool = True                # also run the never-updated w0 on evaluated frames
    segmenter: str = "auto"              # auto | frame | streamdeq | lowlatency
    update_delay_s: float = 0.0          # replay: video seconds from a clip's interval end to its update applying
    hint_delay_s: float = 0.0            # replay: video seconds from a clip's upload to its label hint arriving
    hint_ttl_s: float = HINT_TTL_S       # a carried label hint is shown while at most this old (0: never shown)
    hint_judge: bool = True              # show the student over a fresh hint while it scores better (HintJudge)
    # per student architecture: streamdeq: iters, solver, budget_ms, cut_threshold; lowlatency: scheme, threshold,
    # interval (the options of the student's own architecture apply)
    segmenter_options: dict[str, dict] = field(default_factory=dict)

    def segmenter_for(self, holder: ModelHolder):
        """The segmenter these options ask for, over `holder`'s model."""
        return make_segmenter(holder, self.segmenter, **self.segmenter_options.get(holder.architecture, {}))


@dataclass(frozen=True)
class Result:
    """One frame's output."""

    mask: np.ndarray          # (h, w) uint8 class per pixel at the student's input size
    timestamp_s: float        # the frame's capture time on the client's clock
    model_version: int        # the model that made it (0: w0)
    hinted: bool              # the trainer's label hint carried to this frame, not the student's own output
    latency_ms: float
