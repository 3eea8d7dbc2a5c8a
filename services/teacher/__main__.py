"""`python -m services.teacher`: run the teacher-inference service."""
from __future__ import annotations

import asyncio
import sys

from ams.service_main import serve_forever, setup_logging
from services.teacher.backends import backend_from_config
from services.teacher.config import TeacherConfig
from ams.config import load_config
from services.teacher.service import create_server


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    config = load_config(TeacherConfig, "AMS_TEACHER_", sys.argv[1:] if argv is None else argv,
                         description="AMS teacher-inference gRPC service")
    backend = backend_from_config(config)

    async def start():
        return await create_server(config, backend)

    async def stop(handles):
        handles.drain()                                          # NOT_SERVING, ams_teacher_ready 0
        await handles.server.stop(grace=config.shutdown_grace_s)
        await handles.batcher.stop()
        backend.close()

    asyncio.run(serve_forever(start, stop, config.metrics_port, "teacher", config.host))


if __name__ == "__main__":
    main()
