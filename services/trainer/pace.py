"""Fast start and scene changes (issue 23): the session's pace from how well its student does on new frames.

Before a phase trains on the clips that arrived since the last one, the student the device holds is
scored on them against the teacher's labels (mIoU of the newest frames: an honest, held-out figure,
as JIT's accuracy check). From it:

- the device uploads a clip every `t_fast_s` (the Control's update interval), so the trainer sees new
  frames every few seconds whatever the session's state;
- *fast start*: while that accuracy is below `settle_miou` the session is *unsettled* and every clip
  gets a phase (an update every `t_fast_s`, from the first clip on); once it reaches the threshold a
  phase runs only when the paper's T_update (ATR's, longer on still scenes) has passed since the last;
- *scene change*: a drop of `jump` below the accuracy's running level (or below the threshold from
  settled) marks a change at the first new frame: the session is unsettled again (a phase per clip:
  ATR both ways, detected within one short clip) and a share `recent_share` of every mini-batch is
  drawn from the frames captured since the change, so the horizon's older scenes do not drown the new one.

Pure logic, no torch: the session measures, this decides. `t_fast_s = 0` turns it all off (the paper).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PaceController:
    t_fast_s: float = 0.0          # update interval while unsettled (0 = off: the paper's fixed T_update)
    settle_miou: float = 0.8       # newest-frames mIoU at or above which the session is settled
    jump: float = 0.15             # a drop this far below the running level is a scene change
    recent_share: float = 0.5      # share of each mini-batch drawn from frames since the latest change
    unsettled: bool = True
    level: float | None = None     # running level (EMA) of the newest-frames mIoU
    change_t: float | None = None  # capture time of the first frame after the latest change
    last_miou: float | None = None
    changes: int = 0
    scored: int = 0                # phases that scored new frames
    seen_t: float = float("-inf")  # newest capture time a phase has listed (frames after it are new)
    trained_t: float = float("-inf")   # newest capture time of the last phase that trained

    @property
    def enabled(self) -> bool:
        return self.t_fast_s > 0

    def observe(self, miou: float, first_new_t: float) -> bool:
        """The held model's mIoU on the frames new since the last phase (the first captured at
        `first_new_t`). Returns True when it marks a scene change."""
        self.last_miou = miou
        self.scored += 1
        if not self.enabled:
            return False
        changed = False
        if self.level is not None and (miou < self.level - self.jump or (not self.unsettled and miou < self.settle_miou)):
            changed, self.change_t, self.level = True, first_new_t, miou
            self.changes += 1
        self.level = miou if self.level is None else 0.5 * self.level + 0.5 * miou
        self.unsettled = miou < self.settle_miou
        return changed

    def interval(self, paper_interval_s: float) -> float:
        """How often the device uploads a clip: every t_fast_s when on, else the paper's T_update."""
        return min(self.t_fast_s, paper_interval_s) if self.enabled else paper_interval_s

    def due(self, newest_t: float, paper_interval_s: float, relaxed: bool = False) -> bool:
        """Whether a phase trains now (the frames up to `newest_t` observed): always when off or
        unsettled (unless `relaxed`: the device is shown label hints meanwhile), else once the paper's
        T_update has passed since the last phase that trained (the first phase is always due)."""
        return (not self.enabled or (self.unsettled and not relaxed)
                or newest_t - self.trained_t >= paper_interval_s - 1e-6)

    def recent_from(self, oldest_t: float) -> float | None:
        """Capture time from which the recent share of a mini-batch is drawn (None: uniform over B)."""
        if not self.enabled or self.recent_share <= 0 or self.change_t is None or self.change_t <= oldest_t:
            return None
        return self.change_t

    def state(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("t_fast_s", "settle_miou", "jump", "recent_share")}

    def restore(self, state: dict) -> None:
        kept = self.state().keys()
        for k, v in state.items():
            if k in kept:
                setattr(self, k, v)


def draw_batches(rng: np.random.Generator, times: list[float], shape: tuple[int, int], recent_from: float | None,
                 recent_share: float) -> np.ndarray:
    """(K, B) indices into `times` (capture order): uniform over the buffer, except that with a
    `recent_from` the first ⌈share × B⌉ of each row are drawn from the frames captured since then."""
    k, b = shape
    picks = rng.integers(0, len(times), size=shape)
    if recent_from is None:
        return picks
    start = int(np.searchsorted(np.asarray(times), recent_from, side="left"))
    if start >= len(times):
        return picks
    n_recent = min(b, int(np.ceil(recent_share * b)))
    picks[:, :n_recent] = rng.integers(start, len(times), size=(k, n_recent))
    return picks
