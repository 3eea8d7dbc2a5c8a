"""`python -m services.trainer`: run the AMS trainer service."""
from __future__ import annotations

import asyncio
import sys

from ams.config import load_config
from ams.service_main import serve_forever, setup_logging
from services.trainer.config import TrainerConfig
from services.trainer.service import create_server


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    config = load_config(TrainerConfig, "AMS_", sys.argv[1:] if argv is None else argv,
                         description="AMS trainer gRPC service")

    async def start():
        return await create_server(config)

    async def stop(handles):
        server, _, manager = handles
        manager.drain()                                   # NOT_SERVING; new sessions and streams UNAVAILABLE
        await server.stop(grace=config.shutdown_grace_s)  # uploads in flight finish
        await manager.stop()                              # the running phase commits; sessions checkpointed
        await manager.teacher.close()

    asyncio.run(serve_forever(start, stop, config.metrics_port, "trainer", config.host))


if __name__ == "__main__":
    main()
