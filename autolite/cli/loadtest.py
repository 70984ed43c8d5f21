"""``autolite loadtest``: closed-loop load against a loopback server; throughput, percentiles, errors."""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import typer

from autolite.cli.common import DATA_OPT, JSON_OPT, console, positive, rows_table, write_json_atomic
from autolite.data import load_texts
from autolite.errors import AutoliteError


def loadtest(url: str = typer.Argument("http://127.0.0.1:8000", help="Server URL (loopback only); "
                                       "default path /v1/embeddings."),
             concurrency: int = typer.Option(64, min=1, help="Concurrent clients."),
             requests: int = typer.Option(2000, min=1, help="Requests to send (upper bound)."),
             duration: float = typer.Option(60.0, callback=positive, help="Seconds to run (upper bound)."),
             warmup: int = typer.Option(64, min=0, help="Untimed requests first."),
             api_key: str = typer.Option(None, envvar="AUTOLITE_API_KEY", help="Bearer key, if the server needs one."),
             client: str = typer.Option("raw", help="raw (asyncio streams, least CPU) or httpx."),
             max_words: int = typer.Option(16, min=1, help="Use texts of at most this many words."),
             encoding_format: str = typer.Option("float", help="Embeddings: float (JSON numbers) or base64 "
                                                 "(float32 bytes, as OpenAI's SDK asks)."),
             data: Path = DATA_OPT,
             json_out: Path = JSON_OPT) -> None:
    """Send REQUESTS from CONCURRENCY clients (or for DURATION seconds) and report req/s, p50/p90/p99, errors."""
    # lazy: autolite.serve pulls fastapi, starlette and pydantic (~0.5 s of every CLI start-up)
    from autolite.serve.loadgen import check_loopback_url, default_bodies, run_load, short_sentences

    target = check_loopback_url(url)
    _check_listening(target)
    texts = short_sentences(load_texts(data).texts, max_words)
    if encoding_format not in ("float", "base64"):
        raise AutoliteError(f"--encoding-format must be float or base64, not '{encoding_format}'")
    bodies = default_bodies(target, texts, encoding_format=encoding_format)
    result = asyncio.run(run_load(target, bodies, concurrency=concurrency, requests=requests, duration=duration,
                                  api_key=api_key, warmup=warmup, client=client))
    summary = result.summary()
    rows = [(key, str(value)) for key, value in summary.items() if key != "url"]
    console.print(rows_table(f"loadtest {target}", ("metric", "value"), rows))
    if json_out:
        write_json_atomic(json_out, summary)
        console.print(f"wrote {json_out}", markup=False)
    if not summary["ok"]:
        raise AutoliteError(f"no request succeeded ({summary['error_kinds']}); latencies are undefined")


def _check_listening(target: str) -> None:
    """One line, before any load, when nothing listens at ``target``."""
    parts = urlsplit(target)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except OSError as exc:
        raise AutoliteError(f"no server answers at {parts.hostname}:{port} ({exc.strerror or exc}); start one with "
                            "`autolite serve MODEL --port N`") from exc


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite loadtest http://127.0.0.1:8000 --concurrency 64 --requests 2000")(loadtest)
