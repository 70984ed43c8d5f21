"""Streaming completions: OpenAI-style server-sent events, fed token by token from a batched ``generate``.

A streamed prompt goes through the same batcher as any other: its payload is a :class:`StreamPayload`
(token ids plus a :class:`TokenSink`), so concurrent streams (and plain completions with the same
sampling parameters) share one ``model.generate`` call with its KV cache (static batching: a stream
that arrives while a batch is generating joins the next one). Inside the worker thread a
:class:`BatchStreamer` receives each step's new tokens for the whole batch, decodes every row and hands
the new text to that row's sink, which forwards it to the event loop. A sink whose client went away is
marked cancelled; :class:`CancelledRows` then stops generating for that row (and the batch stops once
every row is finished or cancelled).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Hashable

import torch
from fastapi.responses import StreamingResponse
from transformers.generation.stopping_criteria import StoppingCriteria

from autolite.errors import AutoliteError
from autolite.serve.batcher import Batcher
from autolite.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)
#: ``(prompt index, new text, finish_reason or None)`` as queued for the event loop.
Event = tuple[int, str, str | None]


class TokenSink:
    """One prompt's text, handed from the worker thread to the event loop as deltas (thread-safe)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int) -> None:
        self.loop, self.queue, self.index = loop, queue, index
        self.cancelled = False  # set on the event loop when the client goes away; read by the worker
        self.sent = ""  # text already handed over (worker thread only)
        self.finished: str | None = None  # finish reason, once the event loop has sent it

    def update(self, text: str) -> None:
        """The prompt's whole completion so far; hands over what is new (holding back a partial character)."""
        event = self.delta(text)
        if event is not None:
            self._put(event)

    def finish(self, text: str, reason: str) -> None:
        """The final completion: hand over what is left, with the finish reason."""
        self._put(self.final(text, reason))

    def delta(self, text: str) -> Event | None:
        """The event :meth:`update` hands over for ``text`` (None: nothing new), for a caller that posts it
        itself (the continuous batcher posts a whole step's events in one event-loop wake-up)."""
        if text.endswith("\ufffd") or not text.startswith(self.sent) or len(text) == len(self.sent):
            return None
        delta, self.sent = text[len(self.sent):], text
        return self.index, delta, None

    def final(self, text: str, reason: str) -> Event:
        """The event :meth:`finish` hands over."""
        delta = text[len(self.sent):] if text.startswith(self.sent) else ""
        self.sent = text
        return self.index, delta, reason

    def _put(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass


@dataclass(eq=False)
class StreamPayload:
    """A batcher payload for a streamed prompt: its token ids and the sink for its text."""

    ids: list[int]
    sink: TokenSink


class BatchStreamer:
    """A ``generate`` streamer for a whole batch: decodes each row and feeds its sink (None = not streamed)."""

    def __init__(self, sinks: list[TokenSink | None], tokenizer: Any, eos: int | None) -> None:
        self.sinks, self.tokenizer, self.eos = sinks, tokenizer, eos
        self.rows: list[list[int]] = [[] for _ in sinks]
        self.done = [False] * len(sinks)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate first hands over the prompt (or the decoder start token)
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            sink = self.sinks[row]
            if self.done[row] or sink is None:
                continue
            if token == self.eos:
                self.done[row] = True
                continue
            self.rows[row].append(token)
            sink.update(self.tokenizer.decode(self.rows[row], skip_special_tokens=True))

    def end(self) -> None:
        """Nothing to flush: the engine sends each row's final text with its finish reason."""


class CancelledRows(StoppingCriteria):
    """Stop generating the rows whose client went away."""

    def __init__(self, sinks: list[TokenSink | None]) -> None:
        self.sinks = sinks

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        flags = [sink is not None and sink.cancelled for sink in self.sinks]
        return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)


def _chunk(cid: str, created: int, model: str, index: int, text: str, reason: str | None) -> str:
    body = {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]}
    return f"data: {json.dumps(body)}\n\n"


async def _next_event(queue: asyncio.Queue, task: asyncio.Task) -> Event | BaseException | None:
    """The next event, the exception the batcher raised for this request, or None once the request is
    answered and every event it produced has been taken (its sinks' events precede its answer)."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    try:
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    if task.exception() is not None:
        return task.exception()
    return queue.get_nowait() if not queue.empty() else None


def _error_event(exc: BaseException) -> str:
    """``data: {"error": ...}`` for an error after the stream started (internals are not exposed)."""
    if isinstance(exc, AutoliteError):
        message, kind = str(exc)[:500], "invalid_request_error"
    else:
        log.warning("stream failed: %s", exc)
        message, kind = f"internal error ({type(exc).__name__})", "server_error"
    return f"data: {json.dumps({'error': {'message': message, 'type': kind}})}\n\n"


def _whole_answer(results: list[dict[str, Any]], sinks: list[TokenSink]) -> Event:
    """The final event of the first prompt whose sink never finished, from its (non-streamed) result."""
    for sink, result in zip(sinks, results):
        if sink.finished is None:
            text = result["text"][len(sink.sent):] if result["text"].startswith(sink.sent) else ""
            sink.finished = result["finish_reason"]
            return sink.index, text, result["finish_reason"]
    raise RuntimeError("the stream ended without an answer for every prompt")


async def stream_completions(batcher: Batcher, key: Hashable, ids: list[list[int]], model: str,
                             metrics: ServeMetrics) -> StreamingResponse:
    """Queue ``ids`` as streamed prompts and answer with server-sent events, ``data: [DONE]`` last.

    Errors before the first token (queue full, timeout, draining) raise, so the client gets the usual
    JSON error and status; an error after that ends the stream with a ``data: {"error": ...}`` event.
    """
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    sinks = [TokenSink(loop, queue, i) for i in range(len(ids))]
    payloads = [StreamPayload(seq, sink) for seq, sink in zip(ids, sinks)]
    task = asyncio.ensure_future(batcher.submit(key, payloads, [len(seq) for seq in ids]))
    first = await _next_event(queue, task)
    if isinstance(first, BaseException):
        raise first
    if first is None:  # answered without streaming (an engine that does not feed sinks): send it whole
        first = _whole_answer(task.result(), sinks)
    cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    async def events() -> AsyncIterator[str]:
        event, remaining, complete = first, len(ids), False
        try:
            while True:
                if isinstance(event, BaseException):
                    yield _error_event(event)
                    return
                index, text, reason = event
                sinks[index].finished = reason
                yield _chunk(cid, created, model, index, text, reason)
                remaining -= reason is not None
                if remaining == 0:
                    complete = True
                    yield "data: [DONE]\n\n"
                    return
                event = await _next_event(queue, task)
                if event is None:
                    event = _whole_answer(task.result(), sinks)
        finally:
            if not complete:
                metrics.streams_cancelled.inc()
                for sink in sinks:
                    sink.cancelled = True
                task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
