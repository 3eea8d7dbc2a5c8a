"""TrainerLink against the real trainer service on a loopback port (in-memory store, oracle teacher in
process): open, upload, updates applied, a refused update resynced by snapshot, uploads given up, and the
parameter-only mode the load generator and chaos runs emulate their devices with."""
from __future__ import annotations

import json
import socket
import threading
import time

import numpy as np

from ams.synthetic import SyntheticScene
from ams.update_codec import parameter_checksum
from ams.v1 import common_pb2, streaming_pb2
from ams.video import encode_clip
from edge_client.link import TrainerLink
from edge_client.model_holder import ModelHolder, ParameterHolder
from tests.conftest import LOCAL_SCENE, TINY_STUDENT

SCENE = SyntheticScene.from_spec(LOCAL_SCENE)
SPEC = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))


def _clip(start: float, n: int = 4) -> common_pb2.EncodedClip:
    times = [start + i / SCENE.fps for i in range(n)]
    return common_pb2.EncodedClip(codec="h264", data=encode_clip([SCENE.render(t)[0] for t in times]),
                                  timestamps_s=times, width=SCENE.w, height=SCENE.h)


def _link(address: str, **kwargs) -> TrainerLink:
    return TrainerLink(address, "dev-link", SPEC, None, timeout_s=30, **kwargs)


def _wait(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_link_opens_uploads_and_applies_the_update_that_answers_its_clip(local_trainer):
    address, _ = local_trainer
    link = _link(address, label_hints=False)
    seen: list[tuple[str, int, bool]] = []
    link.listener = lambda message, before, accepted: seen.append((message.WhichOneof("body"), before, accepted))
    try:
        holder = link.open()
        assert isinstance(holder, ModelHolder) and holder.version == 0 and link.session_id
        assert link.upload_clip(1, _clip(0.0))
        assert link.wait_processed(1, timeout_s=60)
        _wait(lambda: link.held.version >= 1)
        assert link.stats.updates >= 1 and link.stats.refused == 0 and link.stats.clips == 1
        assert ("update", 0, True) in seen and seen[0][0] == "control"   # the control values come first
        assert holder.predict(SCENE.render(0.0)[0]).shape == (TINY_STUDENT["input_height"], TINY_STUDENT["input_width"])
    finally:
        link.close()


def test_without_inference_the_link_holds_checked_parameters_only(local_trainer):
    address, manager = local_trainer
    link = _link(address, label_hints=False, inference=False)
    try:
        holder = link.open()
        assert type(holder) is ParameterHolder and not hasattr(holder, "active")
        assert link.upload_clip(1, _clip(0.0)) and link.wait_processed(1, timeout_s=60)
        _wait(lambda: link.held.version >= 1)
        session = manager.sessions[link.session_id]
        _wait(lambda: session.version == link.held.version)
        assert parameter_checksum(link.held.flat) == parameter_checksum(session.flat)   # bit-exact with the trainer
    finally:
        link.close()


def test_a_refused_update_is_named_and_the_trainer_resyncs_the_device_by_snapshot(local_trainer):
    address, manager = local_trainer
    link = _link(address, label_hints=False, inference=False)
    verdicts: list[bool] = []
    link.listener = lambda message, before, accepted: verdicts.append(accepted)
    try:
        link.open()
        link.held.flat = link.held.flat + np.float32(1.0)   # out of step: the next update's checksum cannot match
        assert link.upload_clip(1, _clip(0.0))
        _wait(lambda: link.stats.refused >= 1 and link.stats.snapshots >= 1)
        assert False in verdicts and link.resyncs >= 1
        session = manager.sessions[link.session_id]
        _wait(lambda: link.held.version == session.version)
        assert parameter_checksum(link.held.flat) == parameter_checksum(session.flat)
        assert not link.stats.stream_errors     # our own cancel of the refused stream is not an error
    finally:
        link.close()


def test_an_upload_is_retried_while_the_failure_may_heal_and_given_up_when_it_cannot(local_trainer):
    address, _ = local_trainer
    link = _link(address, label_hints=False)
    try:
        link.open()
        link.session_id = "expired-session"     # NOT_FOUND: the link reopens a session and the retry lands there
        assert link.upload_clip(1, _clip(0.0), retry_s=30)
        assert link.stats.upload_errors == {"NOT_FOUND": 1} and link.session_id != "expired-session"
        assert not link.upload_clip(0, _clip(1.0), retry_s=30)   # clip_seq 0: INVALID_ARGUMENT, not retried
        assert link.stats.upload_errors["INVALID_ARGUMENT"] == 1
        stop = threading.Event()
        stop.set()
        link.session_id = "expired-session"
        assert not link.upload_clip(2, _clip(1.0), retry_s=60, stop=stop)   # a set stop gives up at once
    finally:
        link.close()


def test_an_unreachable_trainer_is_retried_until_the_deadline():
    with socket.socket() as s:            # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    link = _link(f"127.0.0.1:{port}", label_hints=False)
    link.timeout_s = 0.5                  # gRPC retries UNAVAILABLE within an attempt's deadline
    try:
        started = time.monotonic()
        assert not link.upload_clip(1, _clip(0.0), retry_s=1.5)
        assert time.monotonic() - started >= 1.5
        errors = link.stats.upload_errors
        assert sum(errors.values()) >= 2 and set(errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"} and link.stats.clips == 0
    finally:
        link.close()
