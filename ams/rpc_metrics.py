"""Prometheus metrics of every RPC a grpc.aio server handles, from one server interceptor.

For each method (the last part of its path; no peer or session ids as labels):
`<prefix>_requests_total{method,code}` when a call ends, with its status code (an abort's, a handler
exception's INTERNAL, a cancelled stream's CANCELLED); `<prefix>_request_seconds{method}` its
duration; `<prefix>_requests_in_flight{method}` the unary calls being handled now (saturation: and
what `make chaos` waits for to kill a teacher mid-call); `<prefix>_streams_active{method}` the server
streams open now, and
`<prefix>_streams_started_total{method}` each one when it starts (a stream that lasts an hour shows
from its first second, not when it ends). grpc.health.v1's Watch (written with context.write, not yielded) is not counted.
"""
from __future__ import annotations

import asyncio
import inspect
import time

import grpc
from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)


class RpcMetrics:
    """The metric families of one service (`prefix`: ams_trainer, ams_teacher)."""

    def __init__(self, prefix: str, service: str):
        self.requests = Counter(f"{prefix}_requests_total", f"{service} RPCs by method and status code",
                                ["method", "code"])
        self.seconds = Histogram(f"{prefix}_request_seconds", f"{service} RPC duration (server streams: until they end)",
                                 ["method"], buckets=_SECONDS)
        self.in_flight = Gauge(f"{prefix}_requests_in_flight", f"{service} unary calls being handled now", ["method"])
        self.streams_active = Gauge(f"{prefix}_streams_active", f"{service} server streams open now", ["method"])
        self.streams_started = Counter(f"{prefix}_streams_started_total", f"{service} server streams opened", ["method"])

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        return _Interceptor(self)

    def finished(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self.requests.labels(method, code.name).inc()
        self.seconds.labels(method).observe(time.perf_counter() - started)


def _code(context, default: grpc.StatusCode) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, int):      # grpc.aio reports the abort's code as its integer value
        code = next((c for c in grpc.StatusCode if c.value[0] == code), default)
    return code or default


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics):
        self.metrics = metrics
        self._wrapped: dict[str, tuple[object, object]] = {}   # method path -> (its handler, the counting one)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or (
                handler.unary_stream and not inspect.isasyncgenfunction(handler.unary_stream)):
            return handler        # no method of ours (grpc.health.v1's Watch writes with context.write)
        path = handler_call_details.method
        cached = self._wrapped.get(path)
        if cached is None or cached[0] is not handler:      # wrap each method once, not on every call
            cached = (handler, self._wrap(handler, path.rsplit("/", 1)[-1]))
            self._wrapped[path] = cached
        return cached[1]

    def _wrap(self, handler, method: str):
        metrics = self.metrics
        if handler.unary_unary:
            behavior = handler.unary_unary
            is_async = inspect.iscoroutinefunction(behavior)    # a synchronous handler is awaited only if async

            async def unary_unary(request, context):
                started = time.perf_counter()
                metrics.in_flight.labels(method).inc()
                try:
                    response = await behavior(request, context) if is_async else behavior(request, context)
                except asyncio.CancelledError:
                    metrics.finished(method, grpc.StatusCode.CANCELLED, started)
                    raise
                except BaseException:
                    metrics.finished(method, _code(context, grpc.StatusCode.INTERNAL), started)
                    raise
                finally:
                    metrics.in_flight.labels(method).dec()
                metrics.finished(method, _code(context, grpc.StatusCode.OK), started)
                return response
            return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                       handler.response_serializer)
        behavior = handler.unary_stream

        async def unary_stream(request, context):
            started = time.perf_counter()
            metrics.streams_started.labels(method).inc()
            metrics.streams_active.labels(method).inc()
            code = grpc.StatusCode.OK
            try:
                async for message in behavior(request, context):
                    yield message
                code = _code(context, grpc.StatusCode.OK)
            except (asyncio.CancelledError, GeneratorExit):
                code = grpc.StatusCode.CANCELLED
                raise
            except BaseException:
                code = _code(context, grpc.StatusCode.INTERNAL)
                raise
            finally:
                metrics.streams_active.labels(method).dec()
                metrics.finished(method, code, started)
        return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                    handler.response_serializer)
