"""The trainer's one wire boundary: ams.v1 messages in and out of the core's dataclasses.

The core (sessions, ingest, engine, downlink, replica, session) takes and returns plain values; the
servicer and the evaluation harness convert here. Updates, snapshots and hints travel through the core
already serialized (bytes), so a message is encoded once and framed, never re-encoded per stream.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ams import errors
from ams.label_hint import make_hint
from ams.update_codec import SparseUpdate, decode_update, encode_snapshot, encode_update
from ams.v1 import streaming_pb2

if TYPE_CHECKING:
    import numpy as np

    from services.trainer.downlink import Event
    from services.trainer.session import Control, Session

SERVER_FIELDS = {name: streaming_pb2.ServerMessage.DESCRIPTOR.fields_by_name[name].number
                 for name in ("update", "snapshot", "hint")}
OPEN_SNAPSHOT_FIELD = streaming_pb2.OpenSessionResponse.DESCRIPTOR.fields_by_name["snapshot"].number


@dataclass(frozen=True)
class StudentSpec:
    """The student a device asks for: an installed checkpoint by name, or an architecture and its config."""

    architecture: str = ""
    checkpoint: str = ""
    config: dict | None = None

    @classmethod
    def from_pb(cls, spec: streaming_pb2.StudentSpec) -> StudentSpec:
        """INVALID_ARGUMENT for a config that is not a JSON object."""
        try:
            config = json.loads(spec.config_json) if spec.config_json else {}
        except json.JSONDecodeError as exc:
            raise errors.InvalidArgument(f"student config is not JSON: {exc}") from exc
        except RecursionError as exc:
            raise errors.InvalidArgument("student config is nested too deeply") from exc
        if not isinstance(config, dict):
            raise errors.InvalidArgument("student config must be a JSON object")
        return cls(spec.architecture, spec.checkpoint, config)


def embedded(field_number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) holding `payload`: appended to a serialized
    message, it sets that message field to the message `payload` serializes, without parsing it."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def control_pb(control: Control) -> streaming_pb2.Control:
    return streaming_pb2.Control(sampling_rate_fps=control.sampling_rate_fps, update_interval_s=control.update_interval_s)


def update_bytes(update: SparseUpdate) -> bytes:
    """A serialized ModelUpdate (what the store logs and the devices receive)."""
    return encode_update(update).SerializeToString()


def parse_update(raw: bytes, num_params: int | None = None) -> SparseUpdate:
    """A stored ModelUpdate back to its SparseUpdate (UpdateRejected when inconsistent)."""
    return decode_update(streaming_pb2.ModelUpdate.FromString(raw), num_params)


def update_versions(raw: bytes) -> tuple[int, int]:
    """(base_version, new_version) of a serialized ModelUpdate."""
    msg = streaming_pb2.ModelUpdate.FromString(raw)
    return msg.base_version, msg.new_version


def hint_bytes(clip_seq: int, capture_time_s: float, label: np.ndarray) -> bytes:
    """A serialized LabelHint: the teacher's label of a clip's newest frame."""
    return make_hint(clip_seq, capture_time_s, label).SerializeToString()


def snapshot_bytes(session: Session) -> tuple[int, bytes]:
    """(version, serialized ModelSnapshot) of the session's current model (blocking: run it off the loop)."""
    version, state = session.state_dict_copy()
    names = [n for n, _ in session.model.named_parameters()]
    return version, encode_snapshot(session.sid, version, session.architecture, session.student_config, state,
                                    names).SerializeToString()


def server_message(event: Event) -> bytes:
    """The serialized ServerMessage of a downlink event: the update, snapshot or hint bytes it holds are
    framed, not parsed; a control change is built."""
    head = streaming_pb2.ServerMessage(processed_clip_seq=event.processed_clip_seq)
    if event.kind == "control":
        assert event.control is not None
        head.control.CopyFrom(control_pb(event.control))
        return head.SerializeToString()
    payload = {"update": event.update, "snapshot": event.snapshot, "hint": event.hint}[event.kind]
    return head.SerializeToString() + embedded(SERVER_FIELDS[event.kind], payload)


def open_reply(session: Session, resumed: bool, snapshot: bytes = b"") -> bytes:
    """A serialized OpenSessionResponse; a new session's carries its snapshot (the shared bytes)."""
    codec: Any = session.codec          # an UpdateCodec value (the stubs type enums as their wrapper)
    reply = streaming_pb2.OpenSessionResponse(session_id=session.sid, control=control_pb(session.control()),
                                              resumed=resumed, update_codec=codec)
    data = reply.SerializeToString()
    return data + embedded(OPEN_SNAPSHOT_FIELD, snapshot) if snapshot else data
