"""The batcher alone, with a fake forward: batching, buckets, backpressure, timeouts, isolation, drain."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from autolite.serve.batcher import Batcher, QueueFullError, RequestTimeoutError, ShuttingDownError, bucket_of


class FakeForward:
    """Records each batch; sleeps ``delay`` s; fails for payloads equal to ``bad``."""

    def __init__(self, delay: float = 0.0, bad: object = "bad") -> None:
        self.delay, self.bad, self.batches, self.threads = delay, bad, [], set()

    def __call__(self, key, payloads):
        self.threads.add(threading.current_thread().name)
        self.batches.append((key, list(payloads)))
        time.sleep(self.delay)
        if self.bad in payloads:
            raise ValueError("bad payload")
        return [f"{key}:{p}" for p in payloads]


def run(coro):
    return asyncio.run(coro)


async def _with(batcher, body):
    await batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


def test_bucket_of_is_next_power_of_two():
    assert [bucket_of(n) for n in (1, 16, 17, 100, 129, 512)] == [16, 16, 32, 128, 256, 512]


def test_concurrent_requests_share_a_forward_and_keep_order():
    fwd = FakeForward(delay=0.01)
    batcher = Batcher(fwd, max_batch_size=8, max_wait_ms=50)

    async def body():
        return await asyncio.gather(*(batcher.submit("embed", [i], [5]) for i in range(16)))

    results = run(_with(batcher, body))
    assert results == [[f"embed:{i}"] for i in range(16)]
    assert [len(b[1]) for b in fwd.batches] == [8, 8]
    assert batcher.metrics.registry.get_sample_value("autolite_batch_size_sum") == 16
    assert all(name.startswith("autolite-batch") for name in fwd.threads)  # never on the event loop


def test_batch_size_one_means_no_batching():
    fwd = FakeForward()
    batcher = Batcher(fwd, max_batch_size=1, max_wait_ms=50)
    run(_with(batcher, lambda: asyncio.gather(*(batcher.submit("embed", [i], [5]) for i in range(6)))))
    assert [len(b[1]) for b in fwd.batches] == [1] * 6


def test_short_and_long_texts_go_to_different_buckets_and_keys_never_mix():
    fwd = FakeForward()
    batcher = Batcher(fwd, max_batch_size=32, max_wait_ms=30)

    async def body():
        short = [batcher.submit("embed", [f"s{i}"], [8]) for i in range(4)]
        long = [batcher.submit("embed", [f"l{i}"], [300]) for i in range(4)]
        other = [batcher.submit("classify", [f"c{i}"], [8]) for i in range(2)]
        return await asyncio.gather(*short, *long, *other)

    run(_with(batcher, body))
    groups = sorted((key, sorted(p)) for key, p in fwd.batches)
    assert groups == [("classify", ["c0", "c1"]), ("embed", ["l0", "l1", "l2", "l3"]),
                      ("embed", ["s0", "s1", "s2", "s3"])]


def test_full_queue_raises_with_retry_after():
    fwd = FakeForward(delay=0.3)
    batcher = Batcher(fwd, max_batch_size=1, max_wait_ms=0, max_queue=2)

    async def body():
        first = asyncio.create_task(batcher.submit("embed", [0], [5]))
        await asyncio.sleep(0.05)  # the worker is now busy with item 0; the queue is empty
        queued = [asyncio.create_task(batcher.submit("embed", [i], [5])) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError) as info:
            await batcher.submit("embed", [3], [5])
        assert info.value.retry_after >= 1
        with pytest.raises(QueueFullError):  # all-or-nothing: two texts do not fit either
            await batcher.submit("embed", [4, 5], [5, 5])
        return await asyncio.gather(first, *queued)

    assert run(_with(batcher, body)) == [["embed:0"], ["embed:1"], ["embed:2"]]


def test_timeout_raises_and_abandoned_texts_are_skipped():
    fwd = FakeForward(delay=0.25)
    batcher = Batcher(fwd, max_batch_size=1, max_wait_ms=0, timeout_s=0.1)

    async def body():
        results = await asyncio.gather(*(batcher.submit("embed", [i], [5]) for i in range(3)),
                                       return_exceptions=True)
        await asyncio.sleep(0.3)
        return results

    results = run(_with(batcher, body))
    assert all(isinstance(r, RequestTimeoutError) for r in results)
    assert len(fwd.batches) < 3  # the texts still queued when their request gave up never ran
    assert batcher.depth == 0


def test_one_bad_text_fails_only_its_request():
    fwd = FakeForward()
    batcher = Batcher(fwd, max_batch_size=8, max_wait_ms=30)

    async def body():
        return await asyncio.gather(batcher.submit("embed", ["a"], [5]), batcher.submit("embed", ["bad"], [5]),
                                    batcher.submit("embed", ["b", "c"], [5, 5]), return_exceptions=True)

    good1, bad, good2 = run(_with(batcher, body))
    assert good1 == ["embed:a"] and good2 == ["embed:b", "embed:c"]
    assert isinstance(bad, ValueError)
    assert len(fwd.batches[0][1]) == 4  # one batch first, then one retry per text


def test_stop_finishes_queued_work_then_refuses_new_work():
    fwd = FakeForward(delay=0.02)
    batcher = Batcher(fwd, max_batch_size=2, max_wait_ms=1000)

    async def body():
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit("embed", [i], [5])) for i in range(5)]
        await asyncio.sleep(0.01)
        await batcher.stop()  # flushes partial batches at once instead of waiting max_wait
        with pytest.raises(ShuttingDownError):
            await batcher.submit("embed", [9], [5])
        return await asyncio.gather(*tasks)

    assert run(body()) == [[f"embed:{i}"] for i in range(5)]


def test_a_batch_with_room_takes_texts_from_the_next_shorter_bucket_only():
    fwd = FakeForward()
    batcher = Batcher(fwd, max_batch_size=32, max_wait_ms=30)

    async def body():
        mid = [batcher.submit("embed", [f"m{i}"], [20]) for i in range(3)]  # bucket 32, oldest
        short = [batcher.submit("embed", [f"s{i}"], [10]) for i in range(3)]  # bucket 16: tops it up
        long = [batcher.submit("embed", [f"l{i}"], [100]) for i in range(2)]  # bucket 128: never mixed in
        return await asyncio.gather(*mid, *short, *long)

    run(_with(batcher, body))
    assert sorted(sorted(p) for _, p in fwd.batches) == [["l0", "l1"], ["m0", "m1", "m2", "s0", "s1", "s2"]]
