"""Load a model into an :class:`Engine` and run the app under uvicorn, with a graceful SIGTERM.

On SIGTERM (or Ctrl-C) uvicorn stops listening, lets every request already received finish (the
batcher keeps running until the last connection closes), then runs the app's shutdown, which drains the
batcher and stops the worker threads. A second signal forces the exit.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import autolite
from autolite.errors import AutoliteError, BackendUnavailableError
from autolite.passes import PassContext, applied_recipe, compress_, load_recipe
from autolite.runtime.hardware import choose_backend, probe
from autolite.runtime.threads import in_passing_thread
from autolite.serve.app import ServeConfig, create_app
from autolite.serve.engine import Engine

log = logging.getLogger(__name__)
AUTO_RECIPE, NO_RECIPE = "auto", "none"
# fast-dense measures its candidates at this (batch, tokens): one decision per machine and model whatever the
# server's limits (the shape `autolite bench` and benchmarks/peers.py measure, so their decision is reused)
TUNE_SHAPE = (32, 128)


def load_engine(spec: str, config: ServeConfig, device: str = "auto") -> Engine:
    """Load ``spec`` (anything :func:`autolite.load` takes) onto ``device`` (auto = the probe's choice) and apply
    the serving recipe (``config.recipe``; see :func:`serving_recipe`). The work runs in a thread that ends, so
    it leaves no idle OpenMP team beside the serving threads' (see :func:`in_passing_thread`)."""
    return in_passing_thread(_load_engine, spec, config, device)


def _load_engine(spec: str, config: ServeConfig, device: str) -> Engine:
    if device not in ("auto", "cpu", "cuda"):
        raise AutoliteError(f"device must be auto, cpu or cuda, not '{device}'")
    if config.recipe not in (AUTO_RECIPE, NO_RECIPE):
        load_recipe(config.recipe)  # an unknown preset or a bad recipe file: one line, before the model loads
    model, tokenizer, family = autolite.load(spec)
    if device == "auto":
        device = choose_backend(probe()).device
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError("device 'cuda' asked for, but torch sees no CUDA GPU; use 'cpu'")
    recipe = serving_recipe(model, family, config.recipe, device)
    if recipe is not None:
        model = _apply_recipe(model, tokenizer, family, recipe)
    if device == "cuda":
        model = model.to("cuda")
    name = Path(spec).name if Path(spec).exists() else spec
    return Engine(model, tokenizer, family, name=name, max_tokens=config.max_tokens, truncate=config.truncate,
                  normalize=config.normalize)


def serving_recipe(model: Any, family: Any, recipe: str, device: str) -> str | None:
    """The recipe :func:`load_engine` applies, or None to serve the model as loaded.

    ``auto``: ``fast-dense`` (the engine's fastest dense recipe for this machine, a decision measured once and
    cached per machine, model and shape) for an uncompressed encoder on the CPU; nothing for a directory
    written by ``autolite compress`` (its recipe was replayed on load), for decoders and seq2seq models
    (generation keeps the PyTorch model: fast-dense's external backends run encoders only) or on a GPU.
    ``none``: nothing. Anything else: that preset or recipe file.
    """
    if recipe == NO_RECIPE:
        return None
    if recipe != AUTO_RECIPE:
        return recipe
    if applied_recipe(model).passes or family.kind != "encoder" or device != "cpu":
        return None
    return "fast-dense"


def _apply_recipe(model: Any, tokenizer: Any, family: Any, recipe: str) -> Any:
    """``recipe`` applied in place, fast-dense measured at TUNE_SHAPE (tokens capped by the model's positions)."""
    batch, seq = TUNE_SHAPE
    ctx = PassContext(family=family, tokenizer=tokenizer,
                      shape=(batch, min(seq, getattr(model.config, "max_position_embeddings", None) or seq)))
    start = time.perf_counter()
    log.warning("applying the serving recipe %s (fast-dense: a first search for this model on this machine takes "
                "a minute or two, then its decision is cached)", recipe)
    model = compress_(model, recipe, tokenizer=tokenizer, family=family, ctx=ctx)
    log.info("serving recipe %s applied in %.0f s: %s", recipe, time.perf_counter() - start, " | ".join(ctx.notes))
    return model


def check_host(host: str, api_key: str | None) -> None:
    """Warn when the server is exposed beyond loopback without an API key."""
    if not is_loopback(host) and api_key is None:
        log.warning("serving on %s (not loopback) without an API key: anyone who can reach it may use it", host)


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (names are resolved)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free one; ``sock.getsockname()[1]`` says which), so a busy
    or impossible address fails with one line before the model loads and before "serving on" is printed."""
    if not 0 <= port <= 65535:
        raise BackendUnavailableError(f"port {port} is out of range: use 0-65535 (0 picks a free port)")
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise BackendUnavailableError(f"cannot resolve host '{host}' ({exc.strerror or exc})") from exc
    sock = socket.socket(address[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may reuse a TIME_WAIT port
    try:
        sock.bind(address[4])
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise BackendUnavailableError(f"port {port} on {host} is already in use; stop the other server or "
                                          "choose another port (0 picks a free one)") from exc
        raise BackendUnavailableError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    return sock


def run_server(engine: Engine, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000,
               log_level: str = "warning", sock: socket.socket | None = None, **uvicorn_options: Any) -> None:
    """Serve ``engine`` until SIGTERM/SIGINT (on ``sock`` when given, from :func:`bind_socket`); returns after a
    graceful drain."""
    import uvicorn

    sock = sock or bind_socket(host, port)
    app = create_app(engine, config)
    uv_config = uvicorn.Config(app, host=host, port=sock.getsockname()[1], log_level=log_level, access_log=False,
                               timeout_graceful_shutdown=int(config.timeout_s) + 5, lifespan="on",
                               server_header=False, **uvicorn_options)
    with sock:
        uvicorn.Server(uv_config).run(sockets=[sock])


def serve(model: str, host: str = "127.0.0.1", port: int = 8000, device: str = "auto", **options: Any) -> None:
    """Load ``model`` and serve it over HTTP (see :class:`ServeConfig` for ``options``)."""
    config = ServeConfig(**options)
    check_host(host, config.api_key)
    sock = bind_socket(host, port)
    log.warning("serving %s on http://%s:%d", model, host, sock.getsockname()[1])
    run_server(load_engine(model, config, device), config, host, sock=sock)


def wait_healthy(url: str, alive: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``url``/health until it answers 200; a clear error once ``alive()`` is false (the server thread or
    process has stopped) or after ``timeout_s`` seconds."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive() or time.monotonic() > deadline:
            raise BackendUnavailableError(f"the server on {url} did not answer /health within {timeout_s:g} s; "
                                          "its log says why (a model that fails to load stops it)")
        time.sleep(0.05)


@contextlib.contextmanager
def serve_in_thread(app: Any, log_level: str = "warning", timeout_s: float = 60.0) -> Iterator[str]:
    """Run ``app`` under uvicorn in a daemon thread on a free loopback port; yields its base URL once
    ``/health`` answers (tests and benchmarks that need a real socket)."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, thread.is_alive, timeout_s)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
