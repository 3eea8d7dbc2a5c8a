"""The model-update codec shared by trainer and edge: sparse updates and full snapshots.

A sparse update changes a set of coordinates of the flattened parameter vector (torch
`parameters_to_vector` order); it names the version it applies to and carries a SHA-256 of the
parameters it produces, so an update for the wrong base, or a corrupted one, is refused. Codecs
(negotiated per session, `UpdateCodec` in ams.v1):

- float16 — new *absolute* float16 values at the set bits of a gzip'd bitmask (the paper's);
- int8 / int4 — each chosen coordinate's change quantised per block (`ams.delta_codec`), the
  positions as entropy-coded gaps (`ams.index_coding`).

The sender builds an update with `sparse_update(held, trained, indices, codec)`, which also returns
the parameters both sides hold after it: the sender adopts those (float16 rounding or quantisation
error included), so trainer and edge stay bit-identical and the next phase trains from them.
"""
from __future__ import annotations

from typing import Any, cast

import gzip
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ams.delta_codec import QuantisedDeltas, applied, quantise
from ams.errors import InvalidArgument
from ams.index_coding import decode_indices, encode_indices
from ams.tensors import from_tensor, to_tensor
from ams.v1 import streaming_pb2

FLOAT16, INT8, INT4 = (streaming_pb2.UPDATE_CODEC_FLOAT16, streaming_pb2.UPDATE_CODEC_INT8_DELTA,
                       streaming_pb2.UPDATE_CODEC_INT4_DELTA)
CODECS: dict[str, int] = {"float16": FLOAT16, "int8": INT8, "int4": INT4}          # name -> wire value
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODECS.items()}
# quantised codecs: (bits, chosen coordinates per float16 scale); the block sizes trade scale bytes
# against error (`python -m benchmarks.codec_sizes`), the codecs' mIoU is `make bench-codec`'s
QUANTISED: dict[int, tuple[int, int]] = {INT8: (8, 256), INT4: (4, 64)}


class UpdateRejected(Exception):
    """The edge refuses an update: wrong base version, corrupt payload or checksum mismatch."""


@dataclass(frozen=True)
class SparseUpdate:
    session_id: str
    base_version: int
    new_version: int
    num_params: int
    indices: np.ndarray       # (n,) int64, strictly increasing
    values: np.ndarray | None  # (n,) float16 new values (FLOAT16), else None
    params_sha256: bytes
    phase: int = 0
    video_time_s: float = 0.0
    codec: int = FLOAT16
    deltas: QuantisedDeltas | None = None   # the quantised changes (INT8 / INT4)

    def new_values(self, held: np.ndarray) -> np.ndarray:
        """The float32 values of the chosen coordinates after this update, from those held before it."""
        if self.deltas is not None:
            return applied(held, self.deltas)
        assert self.values is not None
        return self.values.astype(np.float32)


def flat_parameters(model: torch.nn.Module) -> np.ndarray:
    """The model's parameters as one float32 vector (a copy)."""
    with torch.no_grad():
        return torch.nn.utils.parameters_to_vector(model.parameters()).detach().cpu().numpy().astype(np.float32)


def load_flat_parameters(model: torch.nn.Module, flat: np.ndarray) -> None:
    """Write a flat float32 vector into the model's parameters, in place."""
    device = next(model.parameters()).device
    with torch.no_grad():
        vector = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)).to(device)
        torch.nn.utils.vector_to_parameters(vector, model.parameters())


def parameter_checksum(flat: np.ndarray) -> bytes:
    """SHA-256 of the float32 little-endian bytes of a flat parameter vector."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f4").tobytes()).digest()


def make_update(session_id: str, base_version: int, new_version: int, flat_after: np.ndarray,
                indices: np.ndarray, phase: int = 0, video_time_s: float = 0.0) -> SparseUpdate:
    """A float16 update from parameters already rounded at `indices` (`round_to_float16`); senders use
    `sparse_update`, which does both for any codec."""
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    values = flat_after[indices].astype(np.float16)
    if not np.array_equal(values.astype(np.float32), flat_after[indices]):
        raise ValueError("values at the update's indices must be rounded to float16 before sending")
    return SparseUpdate(session_id, base_version, new_version, int(flat_after.size), indices, values,
                        parameter_checksum(flat_after), phase, video_time_s)


def sparse_update(session_id: str, base_version: int, new_version: int, held: np.ndarray, trained: np.ndarray,
                  indices: np.ndarray, codec: int = FLOAT16, phase: int = 0,
                  video_time_s: float = 0.0) -> tuple[SparseUpdate, np.ndarray]:
    """The update that takes `held` towards `trained` at `indices`, and the parameters both sides hold
    after it (`held` elsewhere; float16-rounded or quantised values at `indices`)."""
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    after = np.array(held, dtype=np.float32, copy=True)
    values = deltas = None
    if codec == FLOAT16:
        values = trained[indices].astype(np.float16)
        after[indices] = values.astype(np.float32)
    elif codec in QUANTISED:
        deltas = quantise(trained[indices] - held[indices], *QUANTISED[codec])
        after[indices] = applied(held[indices], deltas)
    else:
        raise ValueError(f"unknown update codec {codec}")
    return SparseUpdate(session_id, base_version, new_version, int(after.size), indices, values,
                        parameter_checksum(after), phase, video_time_s, codec, deltas), after


def round_to_float16(flat: np.ndarray, indices: np.ndarray) -> None:
    """Round the chosen coordinates to float16 in place, so sender and receiver hold identical bits."""
    flat[indices] = flat[indices].astype(np.float16).astype(np.float32)


def encode_update(update: SparseUpdate) -> streaming_pb2.ModelUpdate:
    """SparseUpdate -> wire message."""
    msg = streaming_pb2.ModelUpdate(
        session_id=update.session_id, base_version=update.base_version, new_version=update.new_version,
        num_params=update.num_params, params_sha256=update.params_sha256, phase=update.phase,
        video_time_s=update.video_time_s, codec=cast(Any, update.codec))   # an UpdateCodec value
    if update.deltas is None:
        assert update.values is not None
        mask = np.zeros(update.num_params, dtype=bool)
        mask[update.indices] = True
        msg.index_mask_gz = gzip.compress(np.packbits(mask).tobytes(), compresslevel=9, mtime=0)
        msg.values_f16 = update.values.astype("<f2").tobytes()
    else:
        q_ans, scales = update.deltas.to_bytes()
        msg.index_ans = encode_indices(update.indices, update.num_params)
        msg.delta.CopyFrom(streaming_pb2.QuantisedDelta(bits=update.deltas.bits, block=update.deltas.block,
                                                        scales_f16=scales, q_ans=q_ans))
    return msg


def decode_update(msg: streaming_pb2.ModelUpdate, num_params: int | None = None) -> SparseUpdate:
    """Wire message -> SparseUpdate; raise UpdateRejected when the payload is inconsistent or its codec
    is not one this side decodes. `num_params`: the size of the model it must be for (checked before
    anything is decoded, so a forged count cannot make the receiver allocate more)."""
    if msg.num_params <= 0:
        raise UpdateRejected("update has no parameter count")
    if num_params is not None and msg.num_params != num_params:
        raise UpdateRejected(f"update is for {msg.num_params} parameters, model has {num_params}")
    if len(msg.params_sha256) != 32:
        raise UpdateRejected("update carries no SHA-256 of the resulting parameters")
    codec = msg.codec or FLOAT16
    values = deltas = None
    if codec == FLOAT16:
        indices = _mask_indices(msg)
        if len(msg.values_f16) != 2 * indices.size:
            raise UpdateRejected(f"{indices.size} indices but {len(msg.values_f16) // 2} values")
        values = np.frombuffer(msg.values_f16, dtype="<f2")
    elif codec in QUANTISED:
        try:
            indices, num_params = decode_indices(msg.index_ans)
            if num_params != msg.num_params:
                raise InvalidArgument(f"index set is over {num_params} parameters, update over {msg.num_params}")
            if msg.delta.bits != QUANTISED[codec][0]:
                raise InvalidArgument(f"{CODEC_NAMES[codec]} update with {msg.delta.bits}-bit changes")
            deltas = QuantisedDeltas.from_bytes(msg.delta.bits, msg.delta.block, indices.size, msg.delta.q_ans,
                                                msg.delta.scales_f16)
        except InvalidArgument as exc:
            raise UpdateRejected(str(exc)) from exc
    else:
        raise UpdateRejected(f"update codec {codec} is not one this edge decodes ({', '.join(CODECS)})")
    return SparseUpdate(msg.session_id, msg.base_version, msg.new_version, msg.num_params, indices, values,
                        bytes(msg.params_sha256), msg.phase, msg.video_time_s, codec, deltas)


def _mask_indices(msg: streaming_pb2.ModelUpdate) -> np.ndarray:
    expected = (msg.num_params + 7) // 8
    try:   # inflate no further than the mask's size: a gzip bomb stops there
        packed = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(msg.index_mask_gz, expected + 1)
    except zlib.error as exc:
        raise UpdateRejected(f"index mask is not valid gzip: {exc}") from exc
    if len(packed) != (msg.num_params + 7) // 8:
        raise UpdateRejected(f"index mask has {len(packed)} bytes, expected {(msg.num_params + 7) // 8}")
    mask = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=msg.num_params).astype(bool)
    return np.flatnonzero(mask).astype(np.int64)


def apply_update(flat: np.ndarray, held_version: int, update: SparseUpdate) -> np.ndarray:
    """Return the parameters after `update`; raise UpdateRejected on a mis-based or corrupt update."""
    if update.num_params != flat.size:
        raise UpdateRejected(f"update is for {update.num_params} parameters, model has {flat.size}")
    if update.base_version != held_version:
        raise UpdateRejected(f"update is based on version {update.base_version}, device holds {held_version}")
    out = flat.copy()
    out[update.indices] = update.new_values(flat[update.indices])
    if parameter_checksum(out) != update.params_sha256:
        raise UpdateRejected("checksum of the updated parameters does not match; update refused")
    return out


def encode_snapshot(session_id: str, version: int, architecture: str, config: dict,
                    state: dict[str, torch.Tensor], param_names: list[str]) -> streaming_pb2.ModelSnapshot:
    """The whole model (state_dict as float32 tensors) with the config and version to rebuild it.
    `param_names` lists the parameters in `model.parameters()` order, for the checksum."""
    flat = np.concatenate([state[n].detach().cpu().numpy().astype(np.float32).ravel() for n in param_names])
    return streaming_pb2.ModelSnapshot(
        session_id=session_id, version=version,
        student=streaming_pb2.StudentSpec(architecture=architecture, config_json=json.dumps(config, sort_keys=True)),
        names=list(state.keys()),
        tensors=[to_tensor(t.detach().cpu().numpy()) for t in state.values()],
        params_sha256=parameter_checksum(flat))


def decode_snapshot(msg: streaming_pb2.ModelSnapshot) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """Wire snapshot -> (architecture, config, state_dict); raise InvalidArgument when malformed."""
    if len(msg.names) != len(msg.tensors):
        raise InvalidArgument("snapshot names and tensors differ in length")
    try:
        config = json.loads(msg.student.config_json or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"snapshot config is not JSON: {exc}") from exc
    state = {name: torch.from_numpy(from_tensor(t).copy()) for name, t in zip(msg.names, msg.tensors)}
    return msg.student.architecture, config, state


def edge_decodes(offered: Sequence[int]) -> set[int]:
    """The codecs an edge decodes, from what it offered: one that offers nothing predates negotiation
    and decodes FLOAT16."""
    return set(offered) or {FLOAT16}


def pick_codec(preferred: list[int], offered: Sequence[int]) -> int | None:
    """The first of the trainer's `preferred` codecs that the edge decodes; None when they share none."""
    decodes = edge_decodes(offered)
    return next((c for c in preferred if c in decodes), None)


def parse_codecs(names: str) -> list[int]:
    """'int4,int8,float16' -> wire values, in that order; ValueError naming an unknown one."""
    out: list[int] = []
    for name in filter(None, (n.strip().lower() for n in names.split(","))):
        if name not in CODECS:
            raise ValueError(f"unknown update codec {name!r} (known: {', '.join(CODECS)})")
        out.append(CODECS[name])
    if not out:
        raise ValueError("no update codec named")
    return out
