"""Cross-request micro-batching with a bounded wait; inference runs off the event loop."""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from ams.errors import ResourceExhausted
from services.teacher import metrics
from services.teacher.backends import TeacherBackend, TeacherInput, TeacherOutput


class MicroBatcher:
    """Collects items from concurrent requests into batches of ≤ max_batch, waiting ≤ max_wait_s."""

    def __init__(self, backend: TeacherBackend, max_batch: int = 8, max_wait_s: float = 0.01, max_queue: int = 512):
        self.backend, self.max_batch, self.max_wait_s = backend, max_batch, max_wait_s
        self._queue: asyncio.Queue[tuple[TeacherInput, asyncio.Future]] = asyncio.Queue(maxsize=max_queue)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def submit(self, items: list[TeacherInput]) -> list[TeacherOutput | Exception]:
        """Queue items and wait for their results; ResourceExhausted when the queue is full."""
        if self._queue.maxsize - self._queue.qsize() < len(items):
            raise ResourceExhausted(f"teacher queue full ({self._queue.qsize()}/{self._queue.maxsize} frames)")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        for item, fut in zip(items, futures):
            self._queue.put_nowait((item, fut))
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self.backend.infer_batch, [b[0] for b in batch])
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: every caller gets the error
                results = [exc] * len(batch)
            metrics.INFERENCE_SECONDS.observe(time.perf_counter() - started)
            metrics.BATCH_SIZE.observe(len(batch))
            metrics.FRAMES.inc(len(batch))
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
