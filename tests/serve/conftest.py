"""Serving fixtures: an in-process app (lifespan + httpx ASGITransport) over a tiny model."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from autolite.serve import Engine, ServeConfig, create_app
from autolite.serve.server import serve_in_thread as live_server


class SlowEngine(Engine):
    """An engine whose forward first sleeps ``delay`` seconds (to fill queues and trip timeouts)."""

    delay = 0.0

    def run(self, key, batch_ids):
        time.sleep(self.delay)
        return super().run(key, batch_ids)


def make_engine(load_model, preset: str = "tiny-bert", delay: float = 0.0, **kwargs) -> Engine:
    model, tok, family = load_model(preset)
    engine = SlowEngine(model, tok, family, name=preset, **kwargs)
    engine.delay = delay
    return engine


@contextlib.asynccontextmanager
async def client_for(engine: Engine, **config):
    """An httpx client talking to a started app (its batcher runs until the block ends)."""
    import httpx

    if getattr(engine, "delay", 0):
        config.setdefault("threads", 1)  # no thread calibration: it would run the slow forward 6 times
    app = create_app(engine, ServeConfig(**config))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app
            yield client


def run(coro):
    return asyncio.run(coro)


def metric(app, name: str, labels: dict | None = None) -> float | None:
    return app.state.metrics.registry.get_sample_value(name, labels or {})


@pytest.fixture(scope="session")
def srv(load_model):
    """Helpers: ``srv.engine(preset, delay=..)``, ``srv.client(engine, **config)``, ``srv.live(app)``, ``srv.run``,
    ``srv.metric``."""
    import types

    return types.SimpleNamespace(engine=lambda preset="tiny-bert", delay=0.0, **kw: make_engine(
        load_model, preset, delay, **kw), client=client_for, live=live_server, run=run, metric=metric)


SLOW_SERVER = textwrap.dedent("""
    import sys, time
    import autolite
    from autolite.serve import Engine, ServeConfig, run_server

    class Slow(Engine):  # each forward takes at least DELAY s, so requests are in flight at SIGTERM
        def run(self, key, ids):
            time.sleep(float(sys.argv[2]))
            return super().run(key, ids)

    model, tok, family = autolite.load("random:tiny-bert")
    config = ServeConfig(max_batch_size=2, max_wait_ms=5, max_body_bytes=1 << 20, threads=1)
    run_server(Slow(model, tok, family, name="tiny-bert"), config, "127.0.0.1", int(sys.argv[1]))
""")


@pytest.fixture(scope="session", autouse=True)
def slow_server_process():
    """A uvicorn server subprocess (tiny-bert, 0.25 s per forward) on a free loopback port.

    Started when the first serving test runs, so its start-up (imports, model) overlaps the in-process
    tests; test_serve_process.py waits for it to be healthy, uses it, and finally SIGTERMs it.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), "0.25"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    yield proc, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()
