"""Serving: a dynamic batcher, an OpenAI-compatible FastAPI app and a loopback load generator.

    from autolite.serve import serve
    serve("minilm", port=8000, max_batch_size=32, max_wait_ms=5)
"""
from __future__ import annotations

from autolite.serve.app import ServeConfig, create_app
from autolite.serve.batcher import Batcher, QueueFullError, RequestTimeoutError
from autolite.serve.engine import Engine, GenerateParams
from autolite.serve.server import load_engine, run_server, serve

__all__ = ["Batcher", "Engine", "GenerateParams", "QueueFullError", "RequestTimeoutError", "ServeConfig",
           "create_app", "load_engine", "run_server", "serve"]
