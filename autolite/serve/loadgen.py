"""Closed-loop load generator (asyncio + httpx), loopback only: throughput, latency percentiles, errors.

``concurrency`` clients each send a request, wait for its answer, and send the next, until ``requests``
have been sent or ``duration`` seconds have passed (whichever comes first).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from autolite.data import load_texts
from autolite.errors import AutoliteError
from autolite.serve.server import is_loopback

log = logging.getLogger(__name__)
DEFAULT_PATH = "/v1/embeddings"


@dataclass
class LoadResult:
    """Raw outcome of one run; :meth:`summary` gives the table."""

    url: str
    concurrency: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # successful requests only
    errors: Counter = field(default_factory=Counter)  # "HTTP 429", "ReadTimeout", ...

    def summary(self) -> dict[str, Any]:
        """Requests, errors, throughput (successful req/s) and latency percentiles in ms."""
        lat = np.asarray(self.latencies_ms or [float("nan")])
        ok = len(self.latencies_ms)
        return {"url": self.url, "concurrency": self.concurrency, "requests": ok + sum(self.errors.values()),
                "ok": ok, "errors": sum(self.errors.values()), "error_kinds": dict(self.errors),
                "seconds": round(self.seconds, 3), "throughput_rps": round(ok / self.seconds, 1) if self.seconds else 0,
                "p50_ms": _pct(lat, 50), "p90_ms": _pct(lat, 90), "p99_ms": _pct(lat, 99),
                "max_ms": round(float(np.max(lat)), 2), "mean_ms": round(float(np.mean(lat)), 2)}


def _pct(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def check_loopback_url(url: str) -> str:
    """The full request URL (default path /v1/embeddings); refuses anything but http(s) on loopback."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AutoliteError(f"'{url}' is not an http(s) URL like http://127.0.0.1:8000")
    if not is_loopback(parts.hostname):
        raise AutoliteError(f"loadtest only targets loopback hosts (127.0.0.1, ::1, localhost), not {parts.hostname}")
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return f"{parts.scheme}://{parts.netloc}{path}"


def default_bodies(url: str, texts: list[str] | None = None, max_new_tokens: int = 8,
                   encoding_format: str = "float") -> list[dict[str, Any]]:
    """One JSON body per text, shaped for the endpoint in ``url`` (short corpus sentences by default).

    ``encoding_format`` (embeddings only): ``float`` (JSON numbers) or ``base64`` (what OpenAI's SDK asks for).
    """
    if texts is None:
        texts = short_sentences(load_texts(None).texts)
    if url.rstrip("/").endswith("/v1/completions"):
        return [{"prompt": t, "max_tokens": max_new_tokens, "temperature": 0} for t in texts]
    if url.rstrip("/").endswith("/v1/embeddings") and encoding_format != "float":
        return [{"input": t, "encoding_format": encoding_format} for t in texts]
    return [{"input": t} for t in texts]


def short_sentences(texts: list[str], max_words: int = 16) -> list[str]:
    """Texts of at most ``max_words`` words (falls back to all texts if none is that short)."""
    short = [t for t in texts if len(t.split()) <= max_words]
    return short or texts


async def run_load(url: str, bodies: list[dict[str, Any]], *, concurrency: int = 64, requests: int = 1000,
                   duration: float | None = None, api_key: str | None = None, timeout: float = 60.0,
                   warmup: int = 0, client: str = "raw") -> LoadResult:
    """Send ``requests`` POSTs (cycling through ``bodies``) from ``concurrency`` clients; see module doc.

    ``client="raw"`` (default) speaks HTTP/1.1 keep-alive over asyncio streams: about a tenth of httpx's CPU
    per request, which matters when the generator shares the server's cores. ``client="httpx"`` uses httpx.
    """
    if concurrency < 1 or requests < 1 or (duration is not None and duration <= 0) or not bodies:
        raise AutoliteError("loadtest needs --concurrency >= 1, --requests >= 1, --duration > 0 and some bodies")
    if client not in ("raw", "httpx"):
        raise AutoliteError(f"--client must be raw or httpx, not '{client}'")
    url = check_loopback_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    send = _RawSender(url, headers, timeout) if client == "raw" else _HttpxSender(url, headers, timeout, concurrency)
    result = LoadResult(url, concurrency)
    async with send:
        if warmup:
            await _clients(send, bodies, concurrency, warmup, None, LoadResult(url, concurrency))
        start = time.perf_counter()
        await _clients(send, bodies, concurrency, requests, duration, result)
        result.seconds = time.perf_counter() - start
    return result


async def _clients(send: Any, bodies: list[dict[str, Any]], concurrency: int, requests: int,
                   duration: float | None, result: LoadResult) -> None:
    counter = iter(range(requests))
    stop_at = time.perf_counter() + duration if duration else float("inf")
    payloads = [json.dumps(body).encode() for body in bodies]

    async def one_client(slot: int) -> None:
        for index in counter:
            if time.perf_counter() >= stop_at:
                return
            begin = time.perf_counter()
            try:
                status = await send(slot, payloads[index % len(payloads)])
            except Exception as exc:  # noqa: BLE001 - any transport failure is counted, not raised
                result.errors[type(exc).__name__] += 1
                continue
            if status == 200:
                result.latencies_ms.append((time.perf_counter() - begin) * 1000)
            else:
                result.errors[f"HTTP {status}"] += 1

    await asyncio.gather(*(one_client(slot) for slot in range(concurrency)))


class _HttpxSender:
    def __init__(self, url: str, headers: dict[str, str], timeout: float, concurrency: int) -> None:
        import httpx

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {**headers, "content-type": "application/json"}
        self.url, self.client = url, httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers,
                                                       trust_env=False)

    async def __aenter__(self) -> "_HttpxSender":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.client.aclose()

    async def __call__(self, slot: int, body: bytes) -> int:
        return (await self.client.post(self.url, content=body)).status_code


class _RawSender:
    """One keep-alive HTTP/1.1 connection per client slot; reads each response fully, returns its status."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise AutoliteError("the raw client speaks plain http only; use --client httpx for https")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{extra}"
                     "Content-Type: application/json\r\nContent-Length: ").encode()
        self.conns: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}

    async def __aenter__(self) -> "_RawSender":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for _, writer in self.conns.values():
            writer.close()
        self.conns.clear()

    async def __call__(self, slot: int, body: bytes) -> int:
        if slot not in self.conns:
            self.conns[slot] = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.conns[slot]
        try:
            writer.write(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
            return await asyncio.wait_for(self._response(reader, slot), self.timeout)
        except BaseException:
            self.conns.pop(slot, (None, writer))[1].close()
            raise

    async def _response(self, reader: asyncio.StreamReader, slot: int) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" not in fields:
            raise AutoliteError("response without Content-Length; use --client httpx for this server")
        await reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            self.conns.pop(slot)[1].close()
        return status
