"""A real uvicorn server in a subprocess on an ephemeral loopback port: load, big bodies, graceful SIGTERM."""
from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from autolite.errors import AutoliteError, BackendUnavailableError
from autolite.serve.loadgen import check_loopback_url, default_bodies, run_load
from autolite.serve.server import wait_healthy


@pytest.fixture(scope="module")
def server(slow_server_process):
    """The subprocess server started at the beginning of the session (see conftest), once it is healthy."""
    proc, url = slow_server_process
    try:
        wait_healthy(url, lambda: proc.poll() is None, timeout_s=120)
    except BackendUnavailableError as exc:
        proc.log.seek(0)
        pytest.fail(f"{exc}: {proc.log.read()[-2000:]}")
    return proc, url


def test_loadgen_refuses_non_loopback_hosts():
    assert check_loopback_url("http://localhost:8000") == "http://localhost:8000/v1/embeddings"
    assert check_loopback_url("http://[::1]:9/v1/classify") == "http://[::1]:9/v1/classify"
    for url in ("http://10.0.0.1:8000", "http://example.com", "ftp://127.0.0.1", "127.0.0.1:8000"):
        with pytest.raises(AutoliteError):
            check_loopback_url(url)


def test_loadgen_against_a_real_server_and_a_10mb_body(server):
    _, url = server
    bodies = default_bodies(f"{url}/v1/embeddings", ["a b", "c d e"])
    for client in ("raw", "httpx"):
        summary = asyncio.run(run_load(url, bodies, concurrency=8, requests=16, client=client)).summary()
        assert summary["ok"] == 16 and summary["errors"] == 0, summary
        assert 0 < summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
    bad = asyncio.run(run_load(url, [{"input": []}], concurrency=2, requests=4)).summary()
    assert bad["ok"] == 0 and bad["error_kinds"] == {"HTTP 422": 4}
    big = httpx.post(f"{url}/v1/embeddings", content=b'{"input": "' + b"a" * (10 << 20) + b'"}',
                     headers={"content-type": "application/json"}, timeout=30)
    assert big.status_code == 413 and "limit" in big.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/embeddings", json={"input": "ok"}).status_code == 200


def test_sigterm_finishes_every_accepted_request(server):
    proc, url = server
    texts = [f"request number {i}" for i in range(12)]

    async def load_then_sigterm():
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.create_task(client.post(f"{url}/v1/embeddings", json={"input": t})) for t in texts]
            for _ in range(200):  # wait until the server holds most of them (2 per 0.25 s forward)
                await asyncio.sleep(0.05)
                depth = (await client.get(f"{url}/health")).json()["queue_depth"]
                if depth >= 6:
                    break
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks, return_exceptions=True)

    replies = asyncio.run(load_then_sigterm())
    assert [getattr(r, "status_code", repr(r)) for r in replies] == [200] * len(texts)
    assert all(len(r.json()["data"][0]["embedding"]) == 64 for r in replies)
    proc.wait(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful drain
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/v1/embeddings", json={"input": "late"}, timeout=2)
