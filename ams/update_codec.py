"""The model-update codec shared by trainer and edge: sparse updates and full snapshots.

A sparse update carries new *absolute* float16 values at a set of coordinates of the flattened
parameter vector (torch `parameters_to_vector` order), the set as a gzip-compressed bitmask, the
version it applies to and a SHA-256 of the parameters it produces. Applying it twice is harmless;
applying it to the wrong base, or a corrupted one, is refused.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ams.errors import InvalidArgument
from ams.tensors import from_tensor, to_tensor
from ams.v1 import streaming_pb2


class UpdateRejected(Exception):
    """The edge refuses an update: wrong base version, corrupt payload or checksum mismatch."""


@dataclass(frozen=True)
class SparseUpdate:
    session_id: str
    base_version: int
    new_version: int
    num_params: int
    indices: np.ndarray       # (n,) int64, strictly increasing
    values: np.ndarray        # (n,) float16
    params_sha256: bytes
    phase: int = 0
    video_time_s: float = 0.0


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
    """Build an update from the sender's parameters; `flat_after[indices]` must already be float16-exact."""
    indices = np.unique(np.asarray(indices, dtype=np.int64))
    values = flat_after[indices].astype(np.float16)
    if not np.array_equal(values.astype(np.float32), flat_after[indices]):
        raise ValueError("values at the update's indices must be rounded to float16 before sending")
    return SparseUpdate(session_id, base_version, new_version, int(flat_after.size), indices, values,
                        parameter_checksum(flat_after), phase, video_time_s)


def round_to_float16(flat: np.ndarray, indices: np.ndarray) -> None:
    """Round the chosen coordinates to float16 in place, so sender and receiver hold identical bits."""
    flat[indices] = flat[indices].astype(np.float16).astype(np.float32)


def encode_update(update: SparseUpdate) -> streaming_pb2.ModelUpdate:
    """SparseUpdate -> wire message (packbits bitmask, gzip, float16 values)."""
    mask = np.zeros(update.num_params, dtype=bool)
    mask[update.indices] = True
    return streaming_pb2.ModelUpdate(
        session_id=update.session_id, base_version=update.base_version, new_version=update.new_version,
        num_params=update.num_params, index_mask_gz=gzip.compress(np.packbits(mask).tobytes(), compresslevel=9, mtime=0),
        values_f16=update.values.astype("<f2").tobytes(), params_sha256=update.params_sha256,
        phase=update.phase, video_time_s=update.video_time_s)


def decode_update(msg: streaming_pb2.ModelUpdate) -> SparseUpdate:
    """Wire message -> SparseUpdate; raise UpdateRejected when the payload is inconsistent."""
    if msg.num_params <= 0:
        raise UpdateRejected("update has no parameter count")
    try:
        packed = gzip.decompress(msg.index_mask_gz)
    except (OSError, EOFError, zlib.error) as exc:
        raise UpdateRejected(f"index mask is not valid gzip: {exc}") from exc
    if len(packed) != (msg.num_params + 7) // 8:
        raise UpdateRejected(f"index mask has {len(packed)} bytes, expected {(msg.num_params + 7) // 8}")
    mask = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=msg.num_params).astype(bool)
    indices = np.flatnonzero(mask).astype(np.int64)
    if len(msg.values_f16) != 2 * indices.size:
        raise UpdateRejected(f"{indices.size} indices but {len(msg.values_f16) // 2} values")
    if len(msg.params_sha256) != 32:
        raise UpdateRejected("update carries no SHA-256 of the resulting parameters")
    values = np.frombuffer(msg.values_f16, dtype="<f2")
    return SparseUpdate(msg.session_id, msg.base_version, msg.new_version, msg.num_params, indices, values,
                        bytes(msg.params_sha256), msg.phase, msg.video_time_s)


def apply_update(flat: np.ndarray, held_version: int, update: SparseUpdate) -> np.ndarray:
    """Return the parameters after `update`; raise UpdateRejected on a mis-based or corrupt update."""
    if update.num_params != flat.size:
        raise UpdateRejected(f"update is for {update.num_params} parameters, model has {flat.size}")
    if update.base_version != held_version:
        raise UpdateRejected(f"update is based on version {update.base_version}, device holds {held_version}")
    out = flat.copy()
    out[update.indices] = update.values.astype(np.float32)
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
