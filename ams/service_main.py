"""Process entry-point helper shared by the services: logging, /metrics, graceful shutdown."""
from __future__ import annotations

import asyncio
import logging
import signal
from typing import Awaitable, Callable

from prometheus_client import start_http_server

from ams import logs
from ams.schema import SchemaTooNew


def setup_logging() -> None:
    """Logging from AMS_LOG_LEVEL and AMS_LOG_FORMAT (ams/logs.py); a bad value stops the process with one line."""
    try:
        logs.setup_logging()
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None


async def serve_forever(start: Callable[[], Awaitable[tuple]], stop: Callable[[tuple], Awaitable[None]],
                        metrics_port: int, name: str, metrics_host: str = "0.0.0.0") -> None:
    """Start the metrics endpoint (on the service's own address: a service bound to loopback keeps
    its metrics there too) and the server, then run until SIGINT/SIGTERM and stop gracefully."""
    log = logging.getLogger(name)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_host)
        log.info("metrics on %s:%d/metrics", metrics_host, metrics_port)
    try:
        handles = await start()
    except SchemaTooNew as exc:                 # a later release's state in Redis: refuse, write nothing
        log.critical("%s", exc)
        raise SystemExit(3) from None
    log.info("%s serving on port %d", name, handles[1])
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    log.info("%s shutting down", name)
    await stop(handles)
