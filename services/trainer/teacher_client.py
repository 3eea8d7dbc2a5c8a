"""Async client of the teacher service, used by the trainer's inference phase."""
from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ams import errors
from ams.grpc_common import channel_options
from ams.pki import CertFiles
from ams.tls import aio_channel
from ams.tensors import encode_frame, from_tensor
from ams.v1 import common_pb2, teacher_pb2, teacher_pb2_grpc

log = logging.getLogger(__name__)
TEACHER_SERVICE = teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name


class TeacherClient:
    def __init__(self, address: str, files: CertFiles | None, timeout_s: float = 30.0, chunk: int = 32):
        """`files`: the trainer's CA, certificate and key for mutual TLS (None: plain text)."""
        self.address, self.timeout_s, self.chunk = address, timeout_s, chunk
        self._channel = aio_channel(address, files, options=channel_options())
        self._stub = teacher_pb2_grpc.TeacherStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._classes: tuple[list[str], float] | None = None    # (the teacher's classes or [], when asked)

    async def classes(self, max_age_s: float = 60.0, retry_s: float = 10.0, timeout_s: float = 2.0) -> list[str] | None:
        """The teacher's class names (DescribeTeacher), remembered for `max_age_s`; None while it cannot
        be asked, remembered for `retry_s` so that opens during a teacher outage do not each wait
        `timeout_s` (the caller goes on without: the clips' labels are checked again when they arrive)."""
        if self._classes is not None and time.monotonic() - self._classes[1] < (max_age_s if self._classes[0] else retry_s):
            return self._classes[0] or None
        try:
            reply = await self._stub.DescribeTeacher(teacher_pb2.DescribeTeacherRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            log.warning("could not ask the teacher at %s its classes: %s", self.address, exc.code().name)
            self._classes = ([], time.monotonic())
            return None
        self._classes = (list(reply.classes), time.monotonic())
        return self._classes[0] or None

    async def close(self) -> None:
        await self._channel.close()

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """True iff the teacher answers grpc.health.v1 with SERVING within `timeout_s`."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=TEACHER_SERVICE), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def label(self, frames: list[np.ndarray], timestamps: list[float]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """(class map, probabilities) per frame, or None for a frame the teacher could not label.
        Raises Unavailable when the teacher cannot be reached (the caller's request may be retried)."""
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for start in range(0, len(frames), self.chunk):
            request = teacher_pb2.LabelFramesRequest(want_probabilities=True, frames=[
                encode_frame(f, t, common_pb2.Frame.RAW_RGB8)
                for f, t in zip(frames[start:start + self.chunk], timestamps[start:start + self.chunk])])
            try:
                reply = await self._stub.LabelFrames(request, timeout=self.timeout_s, wait_for_ready=False)
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise errors.Unavailable(f"teacher at {self.address}: {exc.code().name}: {exc.details()}") from exc
                raise errors.Unavailable(f"teacher failed: {exc.code().name}: {exc.details()}") from exc
            for label in reply.labels:
                if label.error:
                    log.warning("teacher could not label a frame: %s", label.error)
                    out.append(None)
                else:
                    # probabilities stay float16, as sent: a clip's are held until it is ingested
                    out.append((from_tensor(label.class_map), from_tensor(label.probabilities)))
        return out


class LocalTeacher:
    """The teacher run in this process: a loaded backend (services/teacher/backends.py, or anything with
    `infer_batch` and `classes`) behind TeacherClient's interface, for the evaluation harness and the
    core's tests. Labelling runs on the calling thread pool, not the loop."""

    def __init__(self, backend):
        self.backend = backend

    async def classes(self) -> list[str] | None:
        return list(self.backend.classes) or None

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    async def label(self, frames: list[np.ndarray], timestamps: list[float]) -> list[tuple[np.ndarray, np.ndarray] | None]:
        items = [SimpleNamespace(rgb=f, timestamp_s=t) for f, t in zip(frames, timestamps)]
        outputs = await asyncio.get_running_loop().run_in_executor(None, self.backend.infer_batch, items)
        return [None if isinstance(o, Exception) or o.probabilities is None else (o.class_map, o.probabilities)
                for o in outputs]
