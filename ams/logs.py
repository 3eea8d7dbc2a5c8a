"""Logging for every AMS process: level and format from the environment, session and device on each record.

- `AMS_LOG_LEVEL`: DEBUG, INFO (default), WARNING, ERROR or CRITICAL.
- `AMS_LOG_FORMAT`: `text` (default; `time LEVEL logger: message [session=… device=…]`) or `json` (one object
  per line from python-json-logger: `time`, `level`, `logger`, `message`, `session_id`, `device_id`, and
  `exc_info` for a traceback), for Loki, Elasticsearch or Cloud Logging.
- `bind(session=…, device=…)` puts the ids on every record logged afterwards by this asyncio task or thread
  (context variables: each gRPC call's task has its own); `bound(fn, session, device)` runs `fn` on a worker
  thread with them. Records carry ids, never request payloads: clips, models and certificates stay out.
"""
from __future__ import annotations

import contextvars
import logging
import os
from typing import Callable, TypeVar

from pythonjsonlogger.json import JsonFormatter

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s"
MAX_ID = 64          # a session or device id longer than this is cut (ids come from callers)

_session: contextvars.ContextVar[str] = contextvars.ContextVar("ams_session_id", default="")
_device: contextvars.ContextVar[str] = contextvars.ContextVar("ams_device_id", default="")
T = TypeVar("T")


def bind(session: str | None = None, device: str | None = None) -> None:
    """Label this task's (or thread's) later records with a session and/or device id."""
    if session is not None:
        _session.set(session[:MAX_ID])
    if device is not None:
        _device.set(device[:MAX_ID])


def bound(fn: Callable[[], T], session: str, device: str) -> Callable[[], T]:
    """`fn` to run on an executor thread, its records labelled with `session` and `device`."""
    def run() -> T:
        bind(session, device)
        return fn()
    return lambda: contextvars.copy_context().run(run)


class _Ids(logging.Filter):
    """Adds `session_id`, `device_id` and the text form `ids` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        session = getattr(record, "session_id", None) or _session.get()
        device = getattr(record, "device_id", None) or _device.get()
        record.session_id, record.device_id = session, device
        parts = [f"session={session}"] * bool(session) + [f"device={device}"] * bool(device)
        record.ids = f" [{' '.join(parts)}]" if parts else ""
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(session_id)s %(device_id)s",
                             rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger from the arguments or AMS_LOG_LEVEL / AMS_LOG_FORMAT; a bad value is a
    ValueError naming the variable and what it takes (the process refuses to start)."""
    level = (level or os.environ.get("AMS_LOG_LEVEL") or "INFO").upper()
    fmt = (fmt or os.environ.get("AMS_LOG_FORMAT") or "text").lower()
    if level not in LEVELS:
        raise ValueError(f"AMS_LOG_LEVEL={level!r}: want one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"AMS_LOG_FORMAT={fmt!r}: want one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(fmt))
    handler.addFilter(_Ids())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
