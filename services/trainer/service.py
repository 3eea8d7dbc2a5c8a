"""ModelStreaming gRPC servicer (thin: decode request, call SessionManager, encode reply) and create_server."""
from __future__ import annotations

import logging
import os
import socket
import uuid

import grpc

from ams import cert_expiry, errors, logs
from ams import tls
from ams.grpc_common import (add_health_and_reflection, add_servicer, check_well_formed, device_id_of, error_details,
                             grpc_errors, server_options, set_serving, status_code_for)
from ams.pki import DEVICE_ROLE
from ams.v1 import streaming_pb2, streaming_pb2_grpc
from services.trainer import metrics, serde
from services.trainer.config import TrainerConfig
from services.trainer.sessions import SessionManager
from services.trainer.store import SessionStore, open_store
from services.trainer.teacher_client import TeacherClient

log = logging.getLogger(__name__)
SERVICE_NAME = streaming_pb2.DESCRIPTOR.services_by_name["ModelStreaming"].full_name


class ModelStreamingServicer(streaming_pb2_grpc.ModelStreamingServicer):
    def __init__(self, manager: SessionManager, insecure: bool, ca_pem: bytes = b"",
                 trusted_proxies: frozenset[str] = frozenset()):
        self.manager, self.insecure, self.ca_pem, self.trusted_proxies = manager, insecure, ca_pem, trusted_proxies

    async def device(self, context) -> str:
        """The caller's device id: the subject of its verified client certificate, directly or as
        forwarded by a trusted load balancer (or, only in insecure mode, the ams-device-id header);
        a revoked certificate (the device's, or the balancer's that forwarded it) is refused."""
        if self.insecure:
            device_id = device_id_of(context)
        else:
            identity = tls.caller_identity(context, self.ca_pem, self.trusted_proxies)
            if identity.role != DEVICE_ROLE:
                raise errors.PermissionDenied(f"an {identity.role or 'unknown'} certificate cannot act as a device")
            await self.manager.check_not_revoked(identity.name, identity.serials)
            device_id = identity.name
        logs.bind(device=device_id)          # this call's records carry the device (each call is its own task)
        return device_id

    @grpc_errors
    async def OpenSession(self, request: streaming_pb2.OpenSessionRequest, context) -> bytes:
        device_id = await self.device(context)
        with self.manager.calls.hold(device_id):
            session, resumed = await self.manager.open(device_id, serde.StudentSpec.from_pb(request.student),
                                                       request.resume_session_id, list(request.update_codecs),
                                                       request.label_hints)
            if resumed:
                return serde.open_reply(session, resumed=True)
            _, snapshot = await self.manager.downlink.snapshot(session)   # the shared snapshot bytes
            data = serde.open_reply(session, resumed=False, snapshot=snapshot)
            metrics.UPDATE_BYTES.labels("snapshot").inc(len(data))
            return data

    @grpc_errors
    async def UploadClip(self, request: streaming_pb2.UploadClipRequest, context) -> streaming_pb2.UploadClipResponse:
        device_id = await self.device(context)
        with self.manager.calls.hold(device_id):
            session = await self.manager.get(request.session_id, device_id)
            accepted, buffered = await self.manager.upload(session, request.clip_seq, request.clip.codec,
                                                           request.clip.data, list(request.clip.timestamps_s))
        return streaming_pb2.UploadClipResponse(frames_accepted=accepted, frames_buffered=buffered)

    async def StreamUpdates(self, request: streaming_pb2.StreamUpdatesRequest, context):
        try:
            check_well_formed(request)
            device_id = await self.device(context)
            with self.manager.calls.hold(device_id):    # for as long as the stream lives
                session = await self.manager.get(request.session_id, device_id)
                async for event in self.manager.subscribe(session, request.held_version, request.refused_version):
                    message = serde.server_message(event)
                    metrics.UPDATE_BYTES.labels(event.kind).inc(len(message))
                    yield message
        except errors.AMSError as exc:
            await context.abort(status_code_for(exc), error_details(exc))

    @grpc_errors
    async def CloseSession(self, request: streaming_pb2.CloseSessionRequest, context) -> streaming_pb2.CloseSessionResponse:
        device_id = await self.device(context)
        with self.manager.calls.hold(device_id):
            await self.manager.close(request.session_id, device_id)
        return streaming_pb2.CloseSessionResponse()


async def create_server(config: TrainerConfig, store: SessionStore | None = None,
                        teacher: TeacherClient | None = None) -> tuple[grpc.aio.Server, int, SessionManager]:
    """Build and start the trainer on config.host:config.port; returns (server, bound port, manager)."""
    store = store or open_store(config.redis_url, config.session_ttl_s, config.updates_kept)
    store.check_schema()                       # SchemaTooNew: a later release's state; nothing is written
    teacher = teacher or TeacherClient(config.teacher_addr, tls.files_of(config))
    owner = f"{config.replica_id or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    leases = store.leases(owner, config.lease_ttl_s, counter_ttl_s=config.session_ttl_s)
    manager = SessionManager(config, store, teacher, leases)
    server = grpc.aio.server(options=server_options(config.max_message_mb * 1024 * 1024, config.max_streams_per_connection),
                             interceptors=[metrics.RPC.interceptor()])
    health = add_health_and_reflection(server, [SERVICE_NAME], config.reflection)
    add_servicer(server, ModelStreamingServicer(manager, config.insecure, tls.ca_pem_of(config), tls.trusted_proxies_of(config)),
                 streaming_pb2.DESCRIPTOR.services_by_name["ModelStreaming"])
    tls.warn_if_insecure(config, log, "trainer")
    cert_expiry.record_of(config, "trainer")
    port = tls.bind(server, f"{config.host}:{config.port}", tls.files_of(config))
    manager.start()
    await server.start()
    manager.watch(lambda ok: set_serving(health, [SERVICE_NAME], ok))
    return server, port, manager
