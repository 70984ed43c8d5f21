"""Continuous batching of completions on autolite's decode loop, with prompt-prefix KV reuse.

One worker thread owns a :class:`~autolite.runtime.decode.Decoder` and a static KV cache of ``slots``
rows. Between two decode steps it admits waiting requests into free rows (each prefilled into its own
slot, its first token sampled) and the next step runs every active row together, each at its own
position; a row that finishes (EOS, ``max_tokens``, its client gone) leaves at once and the last row
moves into its slot, so the active rows stay ``0 .. n-1`` and the step reads only those. Streams get
their text token by token through their :class:`~autolite.serve.stream.TokenSink` (final text and reason
before the answer), so ``stream_completions`` works over this batcher as over the static one.

The step loop keeps per-token work off the model's critical path: one batched argmax for the greedy
rows and one ``tolist`` per step (no per-row tensor reads), and every event a step produces (stream
deltas, answers) handed to the event loop in one ``call_soon_threadsafe`` per step, not one per token
and row: each hand-off wakes the event-loop thread, which on a machine with as many cores as intra-op
threads takes a core from the step's threads.

Prefix reuse: the prompts' KV are kept in a small LRU store (a cache of its own). A new prompt that
shares at least ``min_prefix`` leading tokens with a stored one copies those positions into its slot and
prefills only the rest (a system prompt or chat template is computed once). The KV of a position
depends only on the tokens up to it, so the outputs are those of a full prefill.

``stop()`` drains: no new requests, every admitted and queued one finishes (SIGTERM loses nothing).
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import torch

from autolite.errors import AutoliteError
from autolite.runtime.decode import DecodeInputError, Decoder
from autolite.runtime.kvcache import StaticKVCache
from autolite.runtime.sampling import Sampling, next_tokens
from autolite.serve.batcher import QueueFullError, RequestTimeoutError, ShuttingDownError
from autolite.serve.engine import GenerateParams
from autolite.serve.metrics import ServeMetrics
from autolite.serve.stream import StreamPayload, TokenSink

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    ids: list[int]
    params: GenerateParams
    sink: TokenSink | None
    future: asyncio.Future
    sampling: Sampling
    generator: torch.Generator | None
    enqueued: float = field(default_factory=time.perf_counter)
    out: list[int] = field(default_factory=list)
    cancelled: bool = False


class PrefixStore:
    """Prompt KV of recent requests, LRU, in ``entries`` slots of a cache of its own."""

    def __init__(self, decoder: Decoder, entries: int, max_len: int, min_prefix: int = 8) -> None:
        self.cache = decoder.new_cache(entries, max_len) if entries else None
        self.min_prefix = min_prefix
        self.tokens: "OrderedDict[int, tuple[int, ...]]" = OrderedDict()  # slot -> stored prompt
        self.hits = self.reused_tokens = 0

    def lookup(self, ids: list[int]) -> tuple[int, int] | None:
        """(store slot, positions to reuse) of the longest stored prefix of ``ids`` (one token left to run)."""
        best = None
        for slot, stored in self.tokens.items():
            n = _common(stored, ids, len(ids) - 1)
            if n >= self.min_prefix and (best is None or n > best[1]):
                best = (slot, n)
        return best

    def reuse(self, cache: StaticKVCache, row: int, ids: list[int]) -> int:
        """Copy the longest stored prefix of ``ids`` into ``cache``'s ``row``; how many positions it holds."""
        found = self.lookup(ids) if self.cache is not None else None
        if found is None:
            return 0
        slot, n = found
        cache.copy_prefix(self.cache, slot, row, n)
        self.tokens.move_to_end(slot)
        self.hits, self.reused_tokens = self.hits + 1, self.reused_tokens + n
        return n

    def save(self, cache: StaticKVCache, row: int, ids: list[int]) -> None:
        """Keep ``row``'s prompt KV (unless a stored prompt already covers it)."""
        if self.cache is None or len(ids) < self.min_prefix or len(ids) > self.cache.max_len:
            return
        if any(_common(stored, ids, len(ids)) == len(ids) for stored in self.tokens.values()):
            return
        free = [s for s in range(self.cache.shape.slots) if s not in self.tokens]
        slot = free[0] if free else next(iter(self.tokens))  # least recently used
        self.tokens.pop(slot, None)
        self.cache.copy_prefix(cache, row, slot, len(ids))
        self.tokens[slot] = tuple(ids)


def _common(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y or n >= limit:
            break
        n += 1
    return n


class DecodeBatcher:
    """Continuous batching over one decoder; see the module docstring. ``submit`` matches
    :meth:`autolite.serve.batcher.Batcher.submit` for the ``("generate", params)`` key.

    Its thread should be the only lasting one that has run torch's parallel ops: build the model, the
    :class:`Decoder` and this batcher in threads that end (:func:`autolite.runtime.threads.in_passing_thread`),
    as ``autolite serve`` does; a second lasting OpenMP team halves the step's speed on 2 cores."""

    def __init__(self, decoder: Decoder, tokenizer: Any, *, slots: int = 8, max_len: int = 1024,
                 max_queue: int = 1024, timeout_s: float = 30.0, prefix_entries: int = 4,
                 metrics: ServeMetrics | None = None) -> None:
        if slots < 1 or max_queue < 1 or timeout_s <= 0:
            raise AutoliteError("decode batcher needs slots >= 1, max_queue >= 1, timeout > 0")
        self.decoder, self.tokenizer, self.eos = decoder, tokenizer, tokenizer.eos_token_id
        self.cache = decoder.new_cache(slots, max_len)
        self.prefixes = PrefixStore(decoder, prefix_entries, self.cache.max_len)
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.metrics = metrics or ServeMetrics()
        self.rows: list[_Request] = []  # active, row i in cache slot i
        self.tokens: list[int] = []  # each active row's last token
        self.outbox = _Outbox()
        self.waiting: deque[_Request] = deque()
        self.max_rows_seen = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.threads: int | None = None  # the decode thread's intra-op threads, once started
        self._draining = self._stopped = False

    @property
    def depth(self) -> int:
        return len(self.waiting)

    async def start(self) -> None:
        """Start the decode thread and return once it has compiled and warmed the step up (:meth:`warm`), or raise
        what the warm-up raised. The thread that serves compiles too: one thread, one OpenMP team (see
        :func:`autolite.runtime.threads.in_passing_thread`)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        self._thread = threading.Thread(target=self._serve, args=(loop, ready), name="autolite-decode", daemon=True)
        self._thread.start()
        await ready

    def describe(self) -> str:
        return f"decode thread: {self.cache.shape.slots} rows, {self.threads or '?'} intra-op threads"

    def _serve(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        try:
            self.warm()
        except BaseException as exc:  # noqa: BLE001 - raised by start() in the event loop
            loop.call_soon_threadsafe(_resolve, ready, None, exc)
            return
        self.threads = torch.get_num_threads()
        loop.call_soon_threadsafe(_resolve, ready, None, None)
        self._loop()

    async def stop(self) -> None:
        """Drain: refuse new requests, finish the queued and running ones, then end the worker."""
        with self._cond:
            self._draining = True
            self._cond.notify_all()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def submit(self, key: Hashable, payloads: Sequence[Any], tokens: Sequence[int]) -> list[dict[str, Any]]:
        """Generate for each payload (token ids or a StreamPayload); one result dict per payload."""
        params: GenerateParams = key[1]
        loop = asyncio.get_running_loop()
        requests = [self._request(p, params, loop) for p in payloads]
        with self._cond:
            if self._draining:
                raise ShuttingDownError("the server is draining for shutdown; retry on another instance")
            if len(self.waiting) + len(requests) > self.max_queue:
                self.metrics.rejected.labels("queue_full").inc(len(requests))
                raise QueueFullError(f"the generation queue is full ({self.max_queue}); retry shortly", 1)
            self.waiting.extend(requests)
            self.metrics.queue_depth.set(len(self.waiting))
            self._cond.notify_all()
        try:
            return list(await asyncio.gather(*(r.future for r in requests)))
        except BaseException:
            for r in requests:
                r.cancelled = True  # the worker drops them at its next step
            raise

    def _request(self, payload: Any, params: GenerateParams, loop: asyncio.AbstractEventLoop) -> _Request:
        ids, sink = (payload.ids, payload.sink) if isinstance(payload, StreamPayload) else (list(payload), None)
        sampling = Sampling(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        if len(ids) < 1 or len(ids) + params.max_new_tokens > self.cache.max_len:
            raise DecodeInputError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_new_tokens}) is over "
                                   f"the decode cache's {self.cache.max_len} positions")
        return _Request(ids, params, sink, loop.create_future(), sampling, sampling.generator())

    def warm(self) -> None:
        """Compile the step for one row and for several (before serving; the cache is left empty)."""
        for rows in sorted({1, min(2, self.cache.shape.slots)}):
            for row in range(rows):
                self.decoder.prefill(self.cache, row, [self.eos or 0] * 4)
            self.decoder.step(self.cache, torch.zeros(rows, dtype=torch.long))
            for row in range(rows):
                self.cache.reset(row)

    # --- worker thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.waiting and not self.rows and not self._draining:
                    self._cond.wait()
                if self._draining and not self.waiting and not self.rows:
                    return
                admit = [self.waiting.popleft() for _ in range(min(len(self.waiting), self.cache.shape.slots
                                                                   - len(self.rows)))]
                self.metrics.queue_depth.set(len(self.waiting))
            try:
                for request in admit:
                    self._admit(request)
                if self.rows:
                    self._step()
            except Exception as exc:  # a failed step ends every row in flight with the error, the loop goes on
                log.exception("decode step failed")
                for request in self.rows:
                    self._reply(request, exc=exc)
                self.rows, self.tokens = [], []
            finally:
                self.outbox.flush()  # this iteration's events: one wake-up per event loop

    def _admit(self, request: _Request) -> None:
        """Prefill ``request`` into the next row and take its first token (a failed prefill fails it alone)."""
        try:
            self._prefill(request)
        except Exception as exc:  # noqa: BLE001 - answered to this request only
            log.warning("prefill failed: %s", exc)
            self._reply(request, exc=exc)

    def _prefill(self, request: _Request) -> None:
        if request.cancelled:
            return
        if time.perf_counter() - request.enqueued > self.timeout_s:
            self.metrics.rejected.labels("timeout").inc()
            self._reply(request, exc=RequestTimeoutError(f"no decode slot within {self.timeout_s:g} s"))
            return
        row = len(self.rows)
        reused = self.prefixes.reuse(self.cache, row, request.ids)
        logits = self.decoder.prefill(self.cache, row, request.ids[reused:], start=reused)
        self.prefixes.save(self.cache, row, request.ids)
        first = int(next_tokens(logits[None], request.sampling, request.generator)[0])
        self.rows.append(request)
        self.tokens.append(first)
        self.metrics.tokens.inc(len(request.ids) - reused)
        self._take(row)

    def _step(self) -> None:
        n = len(self.rows)
        self.max_rows_seen = max(self.max_rows_seen, n)
        started = time.perf_counter()
        logits = self.decoder.step(self.cache, torch.tensor(self.tokens, dtype=torch.long))  # (n, V)
        self.metrics.observe_batch(n, n, n, time.perf_counter() - started)
        chosen = logits.argmax(-1).tolist()  # every row greedy: one argmax, one read; sampled rows below
        for row, request in enumerate(self.rows):
            if not request.sampling.greedy:
                chosen[row] = int(next_tokens(logits[row:row + 1], request.sampling, request.generator)[0])
        self.tokens = chosen
        for row in reversed(range(n)):  # leaving rows move the last row down: go from the end
            self._take(row)

    def _take(self, row: int) -> None:
        """Append row's new token; finish the row on EOS, its limit or a cancelled client."""
        request, token = self.rows[row], self.tokens[row]
        reason = None
        if request.cancelled or (request.sink is not None and request.sink.cancelled):
            reason = "cancelled"
        elif token == self.eos:
            reason = "stop"
        else:
            request.out.append(token)
            if request.sink is not None:
                self._stream(request.sink, request.sink.delta(self.tokenizer.decode(request.out,
                                                                                    skip_special_tokens=True)))
            if len(request.out) >= request.params.max_new_tokens:
                reason = "length"
        if reason is None:
            return
        self._leave(row)
        if reason != "cancelled":
            text = self.tokenizer.decode(request.out, skip_special_tokens=True)
            if request.sink is not None:
                self._stream(request.sink, request.sink.final(text, reason))
            self._reply(request, {"text": text, "tokens": len(request.out), "finish_reason": reason})

    def _leave(self, row: int) -> None:
        last = len(self.rows) - 1
        if row != last:
            self.cache.move(last, row)
            self.tokens[row] = self.tokens[last]
            self.rows[row] = self.rows[last]
        self.rows.pop()
        self.tokens.pop()
        self.cache.reset(last)

    def _stream(self, sink: TokenSink, event: Any) -> None:
        if event is not None:
            self.outbox.post(sink.loop, sink.queue.put_nowait, event)

    def _reply(self, request: _Request, result: Any = None, exc: BaseException | None = None) -> None:
        """Resolve the request's future on its event loop (after its sink events, posted before)."""
        self.outbox.post(request.future.get_loop(), _resolve, request.future, result, exc)


class _Outbox:
    """Calls for event loops, collected by the worker thread during one iteration and handed over together:
    one ``call_soon_threadsafe`` (one wake-up) per event loop and iteration, the calls run in posting order."""

    def __init__(self) -> None:
        self.calls: dict[asyncio.AbstractEventLoop, list[tuple[Callable, tuple]]] = {}

    def post(self, loop: asyncio.AbstractEventLoop, fn: Callable, *args: Any) -> None:
        self.calls.setdefault(loop, []).append((fn, args))

    def flush(self) -> None:
        calls, self.calls = self.calls, {}
        for loop, batch in calls.items():
            try:
                loop.call_soon_threadsafe(_run_all, batch)
            except RuntimeError:  # the loop is closed: nobody is waiting
                pass


def _run_all(calls: list[tuple[Callable, tuple]]) -> None:
    for fn, args in calls:
        fn(*args)


def _resolve(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():  # cancelled: its client went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def decode_batcher_for(engine: Any, *, slots: int, compile: bool, max_new_tokens: int, max_queue: int,
                       timeout_s: float, metrics: ServeMetrics) -> DecodeBatcher | None:
    """A continuous batcher for ``engine``'s decoder (its ``start`` compiles and warms it up), or None when the
    decode loop cannot run it (encoders, seq2seq, other decoder families: they keep the static batcher)."""
    family = engine.family
    if family.kind != "decoder" or family.name not in Decoder.FAMILIES:
        return None
    decoder = Decoder(engine.model, family, compile=compile)
    batcher = DecodeBatcher(decoder, engine.tokenizer, slots=slots, max_len=engine.max_tokens + max_new_tokens,
                            max_queue=max_queue, timeout_s=timeout_s, metrics=metrics)
    return batcher
