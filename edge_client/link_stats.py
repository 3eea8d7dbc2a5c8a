"""What a TrainerLink counts: bytes each way, updates and their sizes, uploads and their failures, refusals
and stream errors. The per-update records keep the last PER_UPDATE_KEPT (a device that runs forever keeps
bounded state); the runtime's summary and the load generator read them."""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

PER_UPDATE_KEPT = 10_000      # per-update records kept (a device that runs forever keeps bounded state)
def _recent() -> deque:
    return deque(maxlen=PER_UPDATE_KEPT)


@dataclass
class LinkStats:
    uplink_bytes: int = 0
    downlink_bytes: int = 0          # updates + control after the first snapshot
    snapshot_bytes: int = 0          # full models (first contact, catch-up)
    updates: int = 0
    # the last PER_UPDATE_KEPT updates:
    update_bytes: deque = field(default_factory=_recent)        # whole ServerMessage per applied update
    update_index_bytes: deque = field(default_factory=_recent)  # its index set (gzip'd bitmask or ANS gaps)
    update_values: deque = field(default_factory=_recent)       # its number of chosen coordinates
    update_times: deque = field(default_factory=_recent)        # video time of the frame each update arrived at
    clips: int = 0
    upload_failures: int = 0                     # upload attempts that failed
    upload_errors: Counter = field(default_factory=Counter)   # ... by status code
    snapshots: int = 0                           # snapshots loaded on the update stream (catch-up, resync)
    refused: int = 0                             # updates and snapshots refused (wrong base, corrupt, checksum)
    stream_errors: Counter = field(default_factory=Counter)   # update streams ended by an error, by status code
