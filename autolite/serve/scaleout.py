"""Scale-out with Ray Serve: the same app, batcher included, as N replicas across a Ray cluster.

Each replica is a Ray actor that loads the model itself (so ``model`` must be loadable on every node:
a built-in name, ``random:<preset>``, or a directory present at the same path everywhere) and runs
:func:`autolite.serve.create_app` as its ASGI ingress: its lifespan starts the dynamic batcher in the
replica, so every replica batches the requests Ray routes to it exactly as ``autolite serve`` does.
Ray's HTTP proxy (on every node with a replica) balances requests between replicas.

    autolite serve minilm --ray --replicas 2                 # a local Ray instance
    autolite serve minilm --ray --ray-address auto --replicas 8 --host 0.0.0.0   # a running cluster

Replicas ignore ``workers`` and pinning (they share their node's cores). Needs the optional extra:
``pip install 'autolite[ray]'``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Any

from autolite.errors import AutoliteError, BackendUnavailableError
from autolite.serve.app import ServeConfig
from autolite.serve.app import create_app
from autolite.serve.server import load_engine

log = logging.getLogger(__name__)
APP_NAME = "autolite"
INSTALL_HINT = "install autolite[ray] (pip install 'autolite[ray]')"


@dataclass(frozen=True)
class RayOptions:
    """Replicas and where to run them; ``address`` None starts a local Ray instance, "auto" joins a cluster."""

    replicas: int = 1
    cpus_per_replica: float = 1.0
    address: str | None = None

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise AutoliteError("--replicas must be >= 1")
        if self.cpus_per_replica <= 0:
            raise AutoliteError("--cpus-per-replica must be > 0")


def require_ray() -> tuple[Any, Any]:
    """``(ray, ray.serve)``, or a one-line :class:`BackendUnavailableError` saying how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise BackendUnavailableError(f"--ray needs Ray Serve, which is not installed: {INSTALL_HINT}") from None
    return ray, serve


def build_application(model: str, config: ServeConfig, device: str, options: RayOptions) -> Any:
    """The Ray Serve application: ``options.replicas`` replicas of the autolite app for ``model``."""
    _, serve = require_ray()
    # a replica shares its node's cores with other replicas: no pinning; it measures its own threads
    config = dataclasses.replace(config, workers=1, pin=False)

    @serve.ingress()
    class AutoliteReplica:
        """One replica: the engine is loaded in the actor, the app (and its batcher) built from it."""

        def __init__(self, model: str, config: ServeConfig, device: str) -> None:
            self.config, self.engine = config, load_engine(model, config, device)

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(self.engine, self.config)

    deployment = serve.deployment(
        AutoliteReplica, name=APP_NAME, num_replicas=options.replicas,
        ray_actor_options={"num_cpus": options.cpus_per_replica},
        # Ray's default (5 in flight per replica) would starve the batcher: let the replica's own queue
        # limit (429) and timeout (504) apply
        max_ongoing_requests=config.max_queue, graceful_shutdown_timeout_s=config.timeout_s + 5)
    return deployment.bind(model, config, device)


def deploy(model: str, config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
           options: RayOptions | None = None, **init_options: Any) -> str:
    """Connect to (or start) Ray, start Serve's HTTP proxy on ``host:port`` and deploy; returns the URL.

    Returns once every replica has started. ``init_options`` go to ``ray.init`` (e.g. ``num_cpus``).
    """
    ray, serve = require_ray()
    options = options or RayOptions()
    app = build_application(model, config, device, options)
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, **init_options)
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def shutdown() -> None:
    """Drain and remove the deployment (replicas finish their requests), then disconnect from Ray."""
    ray, serve = require_ray()
    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


def serve_with_ray(model: str, config: ServeConfig, host: str, port: int, device: str,
                   options: RayOptions) -> None:
    """Deploy, serve until SIGTERM/SIGINT, then shut the deployment down gracefully.

    Ray's native crash handler would abort this driver on SIGTERM before the drain, so it is turned off
    here (``RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1`` unless set); Ray's Python SIGTERM handler
    (``sys.exit``) is caught and ends the wait like ours.
    """
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    try:
        url = deploy(model, config, host, port, device, options)
    except BaseException:
        shutdown()
        raise
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("serving %s on %s with %d Ray replica(s)", model, url, options.replicas)
        while not stop.wait(0.5):
            pass
    except SystemExit:  # Ray's own SIGTERM handler
        log.info("SIGTERM: draining the Ray deployment")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutdown()
