"""AMS_LOG_LEVEL / AMS_LOG_FORMAT, and the session and device ids on the records of a session's work."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from ams import logs
from ams.grpc_common import device_metadata
from ams.v1 import streaming_pb2, streaming_pb2_grpc
from tests.conftest import TINY_STUDENT


@pytest.fixture
def root_restored():
    """setup_logging replaces the root logger's handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_records_carry_the_ids_bound_in_a_task_and_on_a_worker_thread(capsys, root_restored, monkeypatch):
    monkeypatch.setenv("AMS_LOG_FORMAT", "json")
    monkeypatch.setenv("AMS_LOG_LEVEL", "debug")
    logs.setup_logging()
    log = logging.getLogger("ams.test")
    log.debug("before any id")
    with ThreadPoolExecutor(1) as pool:
        pool.submit(logs.bound(lambda: log.info("in a phase"), "s" * 100, "dev-7")).result()
    log.info("after")                            # the worker's binding did not leak here
    try:
        raise KeyError("boom")
    except KeyError:
        log.exception("failed")
    records = _json_lines(capsys.readouterr().err)
    assert [r["message"] for r in records] == ["before any id", "in a phase", "after", "failed"]
    assert records[0]["level"] == "DEBUG" and records[0]["logger"] == "ams.test" and records[0]["session_id"] == ""
    assert records[1]["session_id"] == "s" * logs.MAX_ID and records[1]["device_id"] == "dev-7"
    assert records[2]["session_id"] == records[2]["device_id"] == ""
    assert "KeyError" in records[3]["exc_info"] and "time" in records[3]


def test_text_records_name_the_ids_and_the_level_filters(capsys, root_restored):
    logs.setup_logging("warning", "text")
    log = logging.getLogger("ams.test")
    logs.bind(session="abc", device="cam-1")
    try:
        log.info("hidden")
        log.warning("shown")
    finally:
        logs.bind(session="", device="")
    err = capsys.readouterr().err
    assert "hidden" not in err and err.rstrip().endswith("WARNING ams.test: shown [session=abc device=cam-1]")


@pytest.mark.parametrize("level,fmt,bad", [("LOUD", "text", "AMS_LOG_LEVEL"), ("INFO", "xml", "AMS_LOG_FORMAT")])
def test_a_bad_setting_is_refused_naming_the_variable(level, fmt, bad, root_restored):
    with pytest.raises(ValueError, match=bad):
        logs.setup_logging(level, fmt)


def test_a_trainer_call_and_its_phase_log_the_session_and_the_device(local_trainer, capsys, root_restored):
    logs.setup_logging("INFO", "json")
    address, manager = local_trainer
    with grpc.insecure_channel(address) as channel:
        stub = streaming_pb2_grpc.ModelStreamingStub(channel)
        spec = streaming_pb2.StudentSpec(architecture="deeplabv3_mnv2", config_json=json.dumps(TINY_STUDENT))
        sid = stub.OpenSession(streaming_pb2.OpenSessionRequest(student=spec), metadata=device_metadata("cam-9"),
                               timeout=30).session_id
    opened = [r for r in _json_lines(capsys.readouterr().err) if r["message"].startswith("opened session")]
    assert opened and opened[0]["session_id"] == sid and opened[0]["device_id"] == "cam-9"
