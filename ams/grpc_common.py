"""gRPC plumbing shared by every AMS server and client: message limits, error mapping, health, retries."""
from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ams import errors

log = logging.getLogger(__name__)

DEVICE_ID_KEY = "ams-device-id"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONCURRENT_STREAMS = 64   # HTTP/2 streams one connection may hold open on a server

_STATUS_OF = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
}

# Clients retry only UNAVAILABLE, with exponential backoff; gRPC adds jitter to each backoff.
_RETRY_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "ams.v1.Teacher"}, {"service": "ams.v1.ModelStreaming"}],
        "retryPolicy": {
            "maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s",
            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})


def status_code_for(exc: BaseException) -> grpc.StatusCode:
    """The status code a domain error maps to (INTERNAL for anything unexpected)."""
    for cls, code in _STATUS_OF.items():
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def error_details(exc: BaseException, limit: int = 256) -> str:
    """The status message for a domain error, cut to `limit` characters: a client's oversized input
    (a 1 MB session id, say) is never echoed back whole."""
    text = str(exc)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Client options: explicit size limits, retries on UNAVAILABLE, keepalive for long streams."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                   max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS) -> list[tuple[str, Any]]:
    """Server options: explicit size limits, a bound on the streams one connection holds open
    (SETTINGS_MAX_CONCURRENT_STREAMS: a client that opens more waits, it cannot queue unbounded work),
    accept client keepalives."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", max_concurrent_streams),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def device_metadata(device_id: str) -> tuple[tuple[str, str], ...]:
    """Per-call metadata carrying the device identity."""
    return ((DEVICE_ID_KEY, device_id),)


def device_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's device id from metadata; Unauthenticated when absent."""
    for key, value in context.invocation_metadata() or ():
        if key == DEVICE_ID_KEY and value:
            return value
    raise errors.Unauthenticated(f"missing {DEVICE_ID_KEY!r} metadata")


class Malformed:
    """What a request that is not a valid protobuf message deserializes to: the handler answers
    INVALID_ARGUMENT (gRPC's own deserializer would answer INTERNAL for a client's mistake)."""

    def __init__(self, error: str):
        self.error = error


def _tolerant_parser(message_class):
    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as exc:  # noqa: BLE001 - DecodeError, RecursionError on deep nesting, ...
            return Malformed(f"{type(exc).__name__}: {exc}")
    return parse


def check_well_formed(request) -> None:
    if isinstance(request, Malformed):
        raise errors.InvalidArgument(f"request is not a valid protobuf message ({request.error})")


def _serializer(message_class):
    """Serialize a reply; a handler may yield bytes it serialized (and cached) itself, e.g. one
    snapshot message shared by every stream that needs it, which are passed through as they are."""
    def serialize(message) -> bytes:
        return message if isinstance(message, bytes) else message_class.SerializeToString(message)
    return serialize


def add_servicer(server, servicer, service: ServiceDescriptor) -> None:
    """Register `servicer`'s methods for `service` (in place of the generated add_*_to_server),
    with a request parser that turns undecodable bytes into `Malformed`."""
    handlers = {}
    for method in service.methods:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        factory = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = factory(getattr(servicer, method.name), request_deserializer=_tolerant_parser(request_class),
                                        response_serializer=_serializer(response_class))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def grpc_errors(method):
    """Decorator for async unary servicer methods: domain errors -> status codes, in one place
    (`ams.rpc_metrics` counts them)."""
    @functools.wraps(method)
    async def handler(self, request, context):
        try:
            check_well_formed(request)
            return await method(self, request, context)
        except errors.AMSError as exc:
            code, message = status_code_for(exc), error_details(exc)
        except Exception as exc:  # noqa: BLE001 - anything else is a bug: log it, answer INTERNAL
            log.exception("unexpected error in %s", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
        await context.abort(code, message)
    return handler


def add_health_and_reflection(server: grpc.aio.Server, service_names: list[str],
                              reflection_on: bool = False) -> health_aio.HealthServicer:
    """Register grpc.health.v1 (all NOT_SERVING until the caller flips them) and, when asked, reflection.
    The servicer is grpc.aio's: a Watch stream is a coroutine waiting on a condition, where the
    synchronous servicer would pin a thread of the loop's default executor per stream for as long
    as the stream lives (8 streams starved every Redis call of the trainer)."""
    servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in service_names + [""]:   # no watcher exists yet: the status is set before this returns
        servicer._server_status[name] = health_pb2.HealthCheckResponse.NOT_SERVING
    if reflection_on:
        reflection.enable_server_reflection(service_names + [reflection.SERVICE_NAME, health.SERVICE_NAME], server)
    return servicer


_health_updates: set[asyncio.Task] = set()


def set_serving(servicer: health_aio.HealthServicer, service_names: list[str], serving: bool) -> None:
    """Flip every service's status (from the server's event loop; watchers are told in order)."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    loop = asyncio.get_running_loop()
    for name in service_names + [""]:
        task = loop.create_task(servicer.set(name, status))
        _health_updates.add(task)
        task.add_done_callback(_health_updates.discard)
