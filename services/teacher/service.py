"""Teacher gRPC servicer (thin: decode, call the batcher, encode) and `create_server`."""
from __future__ import annotations

from typing import NamedTuple

import grpc

from ams import errors
import logging

from ams import cert_expiry, tls
from ams.grpc_common import add_health_and_reflection, add_servicer, grpc_errors, server_options, set_serving
from ams.pki import SERVICE_ROLE
from ams.revocation import RevocationChecker
from ams.tensors import decode_frame, to_tensor
from ams.v1 import teacher_pb2, teacher_pb2_grpc
from services.teacher import metrics
from services.teacher.backends import TeacherBackend, TeacherInput
from services.teacher.batcher import MicroBatcher
from services.teacher.config import TeacherConfig

log = logging.getLogger(__name__)
SERVICE_NAME = teacher_pb2.DESCRIPTOR.services_by_name["Teacher"].full_name


class TeacherServicer(teacher_pb2_grpc.TeacherServicer):
    def __init__(self, backend: TeacherBackend, batcher: MicroBatcher, max_frames: int, insecure: bool,
                 ca_pem: bytes = b"", trusted_proxies: frozenset[str] = frozenset(),
                 revocations: RevocationChecker | None = None):
        self.backend, self.batcher, self.max_frames, self.insecure = backend, batcher, max_frames, insecure
        self.ca_pem, self.trusted_proxies, self.revocations = ca_pem, trusted_proxies, revocations

    async def _check_caller(self, context) -> None:
        """Only services (the trainer, operator tools) may call the teacher, never a device, directly
        or through a trusted load balancer; with `revocations`, none whose certificate (or the
        balancer's) is revoked, and none at all while Redis cannot say (UNAVAILABLE)."""
        if self.insecure:
            return
        identity = tls.caller_identity(context, self.ca_pem, self.trusted_proxies)
        if identity.role != SERVICE_ROLE:
            raise errors.PermissionDenied(f"the teacher serves AMS services, not an {identity.role or 'unknown'} certificate")
        if self.revocations is not None:
            await self.revocations.check(identity.serials)

    @grpc_errors
    async def LabelFrames(self, request: teacher_pb2.LabelFramesRequest, context) -> teacher_pb2.LabelFramesResponse:
        await self._check_caller(context)
        if not request.frames:
            raise errors.InvalidArgument("no frames in request")
        if len(request.frames) > self.max_frames:
            raise errors.ResourceExhausted(f"{len(request.frames)} frames in one request; limit is {self.max_frames}")
        items = [TeacherInput(decode_frame(f), f.timestamp_s) for f in request.frames]
        labels = []
        for result in await self.batcher.submit(items):
            if isinstance(result, Exception):
                labels.append(teacher_pb2.FrameLabel(error=f"{type(result).__name__}: {result}"))
                continue
            label = teacher_pb2.FrameLabel(class_map=to_tensor(result.class_map))
            if request.want_probabilities and result.probabilities is not None:
                label.probabilities.CopyFrom(to_tensor(result.probabilities.astype("float16")))
            labels.append(label)
        return teacher_pb2.LabelFramesResponse(labels=labels)

    @grpc_errors
    async def DescribeTeacher(self, request, context) -> teacher_pb2.DescribeTeacherResponse:
        await self._check_caller(context)
        h, w = self.backend.input_size
        return teacher_pb2.DescribeTeacherResponse(backend=self.backend.name, classes=self.backend.classes,
                                                   input_height=h, input_width=w)


class TeacherServer(NamedTuple):
    server: grpc.aio.Server
    port: int
    batcher: MicroBatcher
    health: object

    def drain(self) -> None:
        """Shutdown, first step: NOT_SERVING (callers go elsewhere); calls in flight go on."""
        set_serving(self.health, [SERVICE_NAME], False)
        metrics.READY.set(0)


async def create_server(config: TeacherConfig, backend: TeacherBackend) -> TeacherServer:
    """Load the backend, build and start the server on config.host:config.port; returns (server, port,
    batcher, health)."""
    server = grpc.aio.server(options=server_options(config.max_message_mb * 1024 * 1024),
                             interceptors=[metrics.RPC.interceptor()])
    health = add_health_and_reflection(server, [SERVICE_NAME], config.reflection)
    batcher = MicroBatcher(backend, config.max_batch, config.max_wait_ms / 1000.0, config.max_queue)
    revocations = None
    if not config.insecure:
        if config.redis_url:
            revocations = RevocationChecker(config.redis_url)
            revocations.check_schema()
        else:
            log.warning("teacher: no AMS_TEACHER_REDIS_URL: revoked certificates are NOT refused (ams-admin revoke "
                        "needs the Redis the trainers use)")
        cert_expiry.record_of(config, "teacher")
    add_servicer(server, TeacherServicer(backend, batcher, config.max_frames_per_request, config.insecure,
                                         tls.ca_pem_of(config), tls.trusted_proxies_of(config), revocations),
                 teacher_pb2.DESCRIPTOR.services_by_name["Teacher"])
    tls.warn_if_insecure(config, log, "teacher")
    port = tls.bind(server, f"{config.host}:{config.port}", tls.files_of(config))
    backend.load()  # health turns SERVING only after the weights load
    batcher.start()
    await server.start()
    set_serving(health, [SERVICE_NAME], True)
    metrics.READY.set(1)
    return TeacherServer(server, port, batcher, health)
