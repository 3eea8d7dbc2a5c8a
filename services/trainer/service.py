"""ModelStreaming gRPC servicer (thin: decode request, call SessionManager, encode reply) and create_server."""
from __future__ import annotations

from typing import Any, cast

import logging
import os
import socket
import uuid

import grpc

from ams import errors
from ams import tls
from ams.grpc_common import (add_health_and_reflection, add_servicer, check_well_formed, device_id_of, error_details,
                             grpc_errors, server_options, set_serving, status_code_for)
from ams.pki import DEVICE_ROLE
from ams.update_codec import encode_snapshot
from ams.v1 import streaming_pb2, streaming_pb2_grpc
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.leases import SessionLeases
from services.trainer.manager import Event, SessionManager
from services.trainer.session import Control, Session
from services.trainer.store import RedisSessionStore, SessionStore
from services.trainer.teacher_client import TeacherClient

log = logging.getLogger(__name__)
SERVICE_NAME = streaming_pb2.DESCRIPTOR.services_by_name["ModelStreaming"].full_name


def control_pb(control: Control) -> streaming_pb2.Control:
    return streaming_pb2.Control(sampling_rate_fps=control.sampling_rate_fps, update_interval_s=control.update_interval_s)


def snapshot_pb(session: Session) -> streaming_pb2.ModelSnapshot:
    version, state = session.state_dict_copy()
    names = [n for n, _ in session.model.named_parameters()]
    return encode_snapshot(session.sid, version, session.architecture, session.student_config, state, names)


class ModelStreamingServicer(streaming_pb2_grpc.ModelStreamingServicer):
    def __init__(self, manager: SessionManager, insecure: bool, ca_pem: bytes = b""):
        self.manager, self.insecure, self.ca_pem = manager, insecure, ca_pem

    async def device(self, context) -> str:
        """The caller's device id: the subject of its verified client certificate, directly or as
        forwarded by the load balancer (or, only in insecure mode, the ams-device-id header);
        revoked devices are refused."""
        if self.insecure:
            return device_id_of(context)
        identity = tls.caller_identity(context, self.ca_pem)
        if identity.role != DEVICE_ROLE:
            raise errors.PermissionDenied(f"an {identity.role or 'unknown'} certificate cannot act as a device")
        await self.manager.check_not_revoked(identity.name)
        return identity.name

    @grpc_errors
    async def OpenSession(self, request: streaming_pb2.OpenSessionRequest, context) -> streaming_pb2.OpenSessionResponse:
        device_id = await self.device(context)
        session, resumed = await self.manager.open(device_id, request.student, request.resume_session_id,
                                                   list(request.update_codecs))
        reply = streaming_pb2.OpenSessionResponse(session_id=session.sid, control=control_pb(session.control()),
                                                  resumed=resumed, update_codec=cast(Any, session.codec))
        if not resumed:
            reply.snapshot.CopyFrom(snapshot_pb(session))
        metrics.UPDATE_BYTES.labels("snapshot").inc(reply.ByteSize())
        return reply

    @grpc_errors
    async def UploadClip(self, request: streaming_pb2.UploadClipRequest, context) -> streaming_pb2.UploadClipResponse:
        session = await self.manager.get(request.session_id, await self.device(context))
        accepted, buffered = await self.manager.upload(session, request.clip_seq, request.clip.codec,
                                                       request.clip.data, list(request.clip.timestamps_s))
        return streaming_pb2.UploadClipResponse(frames_accepted=accepted, frames_buffered=buffered)

    async def StreamUpdates(self, request: streaming_pb2.StreamUpdatesRequest, context):
        try:
            check_well_formed(request)
            session = await self.manager.get(request.session_id, await self.device(context))
            async for event in self.manager.subscribe(session, request.held_version, request.refused_version):
                message = self._message(session, event)
                metrics.UPDATE_BYTES.labels(event.kind).inc(message.ByteSize())
                yield message
        except errors.AMSError as exc:
            await context.abort(status_code_for(exc), error_details(exc))

    @staticmethod
    def _message(session: Session, event: Event) -> streaming_pb2.ServerMessage:
        message = streaming_pb2.ServerMessage(processed_clip_seq=event.processed_clip_seq)
        if event.kind == "update":
            message.update.CopyFrom(event.update)
        elif event.kind == "snapshot":
            message.snapshot.CopyFrom(snapshot_pb(session))
        else:
            assert event.control is not None
            message.control.CopyFrom(control_pb(event.control))
        return message

    @grpc_errors
    async def CloseSession(self, request: streaming_pb2.CloseSessionRequest, context) -> streaming_pb2.CloseSessionResponse:
        await self.manager.close(request.session_id, await self.device(context))
        return streaming_pb2.CloseSessionResponse()


async def create_server(config: TrainerConfig, store: SessionStore | None = None,
                        teacher: TeacherClient | None = None) -> tuple[grpc.aio.Server, int, SessionManager]:
    """Build and start the trainer on config.host:config.port; returns (server, bound port, manager)."""
    store = store or RedisSessionStore(config.redis_url, config.session_ttl_s, config.updates_kept)
    teacher = teacher or TeacherClient(config.teacher_addr, tls.files_of(config))
    leases = None
    if isinstance(store, RedisSessionStore):
        owner = f"{config.replica_id or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        leases = SessionLeases(store.r, owner, config.lease_ttl_s, counter_ttl_s=config.session_ttl_s)
    manager = SessionManager(config, store, teacher, leases)
    server = grpc.aio.server(options=server_options(config.max_message_mb * 1024 * 1024),
                             interceptors=[metrics.RPC.interceptor()])
    health = add_health_and_reflection(server, [SERVICE_NAME], config.reflection)
    add_servicer(server, ModelStreamingServicer(manager, config.insecure, tls.ca_pem_of(config)),
                 streaming_pb2.DESCRIPTOR.services_by_name["ModelStreaming"])
    tls.warn_if_insecure(config, log, "trainer")
    port = tls.bind(server, f"{config.host}:{config.port}", tls.files_of(config))
    manager.start()
    await server.start()
    manager.watch(lambda ok: set_serving(health, [SERVICE_NAME], ok))
    return server, port, manager
