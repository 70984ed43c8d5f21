"""Dynamic batcher: a bounded queue, length buckets, one forward per batch in a worker thread.

Texts are queued with a *key* (what may share a forward: the task and its parameters) and a token
length. A text lands in the bucket ``(key, next power of two >= length)``, so a 10-token sentence never
pads to the length of a 300-token paragraph. A worker flushes a bucket when it holds ``max_batch_size``
texts, or when its oldest text has waited ``max_wait_ms`` (``0`` = take whatever is queued the moment a
worker is free); a batch with room left takes texts from the next-shorter bucket too (they pad to at
most twice their bucket, and do not wait for a forward of their own). The forward runs in the worker's
own thread (never on the event loop); when a batch raises, each of its texts is retried alone so only
the offending one fails.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

from autolite.errors import AutoliteError
from autolite.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

#: ``run_batch(key, payloads) -> results`` (one result per payload), called in a worker thread.
RunBatch = Callable[[Hashable, list[Any]], list[Any]]
MIN_BUCKET = 16


class QueueFullError(AutoliteError):
    """The queue cannot take the request now; retry after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(AutoliteError):
    """The request was not answered within the per-request timeout (HTTP 504)."""


class ShuttingDownError(AutoliteError):
    """The batcher is draining for shutdown and takes no new work (HTTP 503)."""


@dataclass(eq=False)
class _Item:
    key: Hashable
    payload: Any
    tokens: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    popped: bool = False


def bucket_of(tokens: int) -> int:
    """The length bucket of a text: the next power of two >= ``tokens`` (at least 16)."""
    return max(MIN_BUCKET, 1 << max(0, math.ceil(math.log2(max(tokens, 1)))))


class Batcher:
    """Collect texts from concurrent requests into batched forwards; see the module docstring."""

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int = 32, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, timeout_s: float = 30.0, executors: Sequence[Executor] | None = None,
                 metrics: ServeMetrics | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0 or timeout_s <= 0:
            raise AutoliteError("batcher needs max_batch_size >= 1, max_queue >= 1, max_wait_ms >= 0, timeout > 0")
        self.run_batch = run_batch
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000.0
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.executors = list(executors) if executors else [ThreadPoolExecutor(1, "autolite-batch")]
        self.metrics = metrics or ServeMetrics()
        self._queues: dict[tuple[Hashable, int], deque[_Item]] = {}
        self._size = 0
        self._wakeup: asyncio.Event | None = None
        self._workers: list[asyncio.Task] = []
        self._closing = False
        self._forward_avg = 0.0  # moving average of one forward's seconds, for Retry-After

    @property
    def depth(self) -> int:
        """Texts waiting (not yet in a forward)."""
        return self._size

    async def start(self) -> None:
        """Start one worker task per executor (call inside the serving event loop)."""
        self._wakeup = asyncio.Event()
        self._closing = False
        self._workers = [asyncio.create_task(self._worker(ex), name=f"batcher-{i}")
                         for i, ex in enumerate(self.executors)]

    async def stop(self) -> None:
        """Stop taking work, finish every queued text, then stop the workers and their threads."""
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for executor in self.executors:
            executor.shutdown(wait=True)
        self._workers = []

    async def submit(self, key: Hashable, payloads: Sequence[Any], tokens: Sequence[int]) -> list[Any]:
        """Queue ``payloads`` (all or none) and return their results in order.

        Raises :class:`QueueFullError`, :class:`RequestTimeoutError`, :class:`ShuttingDownError`, or
        whatever the forward raised for one of these payloads.
        """
        if self._closing or self._wakeup is None:
            raise ShuttingDownError("the server is shutting down; retry on another replica")
        if self._size + len(payloads) > self.max_queue:
            self.metrics.rejected.labels("queue_full").inc(len(payloads))
            raise QueueFullError(f"queue full ({self._size} texts waiting, limit {self.max_queue}); retry later",
                                 retry_after=self._retry_after())
        loop = asyncio.get_running_loop()
        items = [_Item(key, p, n, loop.create_future()) for p, n in zip(payloads, tokens)]
        for item in items:
            self._queues.setdefault((key, bucket_of(item.tokens)), deque()).append(item)
            item.future.add_done_callback(lambda fut, it=item: self._on_done(it))
        self._size += len(items)
        self.metrics.queue_depth.set(self._size)
        self._wakeup.set()
        try:  # awaiting the futures in turn under one deadline: no gather/wait_for task per request
            async with asyncio.timeout(self.timeout_s):
                return [await item.future for item in items]
        except TimeoutError:
            self.metrics.rejected.labels("timeout").inc(len(items))
            raise RequestTimeoutError(f"no answer within {self.timeout_s:g} s (server overloaded)") from None
        finally:
            for item in items:
                if not item.future.done():
                    item.future.cancel()
                elif not item.future.cancelled():
                    item.future.exception()  # retrieved: a request that went away is not an unhandled error

    def _on_done(self, item: _Item) -> None:
        if not item.popped:  # cancelled while still queued: it no longer counts
            item.popped = True
            self._size -= 1
            self.metrics.queue_depth.set(self._size)

    def _retry_after(self) -> int:
        """Seconds until the queue ahead should have drained (at least 1)."""
        batches_ahead = self._size / (self.max_batch_size * len(self.executors))
        return max(1, math.ceil(batches_ahead * (self._forward_avg + self.max_wait)))

    async def _worker(self, executor: Executor) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            await self._run(executor, batch)

    async def _next_batch(self) -> list[_Item] | None:
        assert self._wakeup is not None
        while True:
            batch, wait = self._pick(time.perf_counter())
            if batch:
                return batch
            if batch is not None:  # a bucket held only abandoned texts: look again
                continue
            if self._closing and self._size == 0:
                return None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except asyncio.TimeoutError:
                pass

    def _pick(self, now: float) -> tuple[list[_Item] | None, float | None]:
        """The bucket to flush now (full, or its oldest text waited max_wait), else how long to wait."""
        oldest_key, oldest_t, full_key, full_t = None, math.inf, None, math.inf
        for qkey, queue in list(self._queues.items()):
            while queue and queue[0].popped:
                queue.popleft()
            if not queue:
                del self._queues[qkey]
                continue
            head_t = queue[0].enqueued
            if len(queue) >= self.max_batch_size and head_t < full_t:
                full_key, full_t = qkey, head_t
            if head_t < oldest_t:
                oldest_key, oldest_t = qkey, head_t
        if full_key is not None:
            return self._take(full_key), None
        if oldest_key is None:
            return None, None
        due = oldest_t + self.max_wait
        if now >= due or self._closing:
            return self._take(oldest_key), None
        return None, due - now

    def _take(self, qkey: tuple[Hashable, int]) -> list[_Item]:
        """Up to max_batch_size texts of ``qkey``'s bucket, topped up from the next-shorter bucket."""
        key, bucket = qkey
        batch = self._drain(self._queues[qkey], self.max_batch_size)
        shorter = self._queues.get((key, bucket // 2))
        if shorter and len(batch) < self.max_batch_size:  # they pad to at most twice their bucket
            batch += self._drain(shorter, self.max_batch_size - len(batch))
        self.metrics.queue_depth.set(self._size)
        return batch

    def _drain(self, queue: deque[_Item], limit: int) -> list[_Item]:
        batch: list[_Item] = []
        while queue and len(batch) < limit:
            item = queue.popleft()
            if item.popped:
                continue
            item.popped = True
            self._size -= 1
            if not item.future.done():  # skip texts whose request already timed out or went away
                batch.append(item)
        return batch

    async def _run(self, executor: Executor, batch: list[_Item]) -> None:
        """One forward for ``batch``; on failure, retry each text alone so only the bad one fails."""
        start = time.perf_counter()
        for item in batch:
            self.metrics.queue_wait.observe(start - item.enqueued)
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(executor, self.run_batch, batch[0].key,
                                                 [i.payload for i in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} inputs")
        except Exception as exc:  # noqa: BLE001 - isolated below, never propagated to other requests
            if len(batch) == 1:
                log.warning("forward failed for one input: %s", exc)
                _resolve(batch[0], exc=exc)
                return
            log.warning("batched forward of %d failed (%s); retrying one by one", len(batch), exc)
            for item in batch:
                await self._run(executor, [item])
            return
        lengths, seconds = [i.tokens for i in batch], time.perf_counter() - start
        self._forward_avg = 0.8 * self._forward_avg + 0.2 * seconds
        self.metrics.observe_batch(len(batch), sum(lengths), len(batch) * max(lengths), seconds)
        for item, result in zip(batch, results):
            _resolve(item, result=result)


def _resolve(item: _Item, result: Any = None, exc: BaseException | None = None) -> None:
    if item.future.done():  # the request timed out or its client went away
        return
    if exc is not None:
        item.future.set_exception(exc)
    else:
        item.future.set_result(result)
