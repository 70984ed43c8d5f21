"""The FastAPI app: embeddings, classification, completions, health and metrics over one batched engine."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, AsyncIterator

import numpy as np
from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse, Response

from autolite.errors import AutoliteError
from autolite.runtime.threads import (WorkerPlan, calibrate_threads, in_passing_thread, pin_current_thread,
                                      plan_workers, thread_candidates)
from autolite.serve import schemas as S
from autolite.serve.batcher import Batcher, ShuttingDownError
from autolite.serve.decode_batcher import DecodeBatcher, decode_batcher_for
from autolite.serve.engine import Engine, GenerateParams
from autolite.serve.http import (FastJSONResponse, FastRoute, LimitAndMeasure, TooManyTextsError, check_api_key,
                                 install_error_handlers)
from autolite.serve.metrics import ServeMetrics
from autolite.serve.stream import stream_completions

log = logging.getLogger(__name__)
INLINE_TOKENIZE_CHARS = 20_000  # bigger requests are tokenized in a thread, off the event loop


@dataclass
class ServeConfig:
    """Batching, limits and security of one server; validated on creation."""

    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    timeout_s: float = 30.0
    workers: int = 1
    threads: int | None = None
    pin: bool = True
    max_body_bytes: int = 1024 * 1024
    max_texts: int = 256
    max_tokens: int | None = None
    max_new_tokens: int = 256
    truncate: bool = False
    normalize: bool = True
    api_key: str | None = None
    recipe: str = "auto"  # applied on load (serve.server.serving_recipe): auto, none, a preset or recipe file
    continuous_batching: bool = False  # decoders: autolite's decode loop, rows join/leave between steps
    decode_slots: int = 8  # rows of its KV cache (concurrent generations)
    decode_compile: bool = True  # torch.compile its one-token step (at start-up)

    def __post_init__(self) -> None:
        checks = [(self.max_batch_size >= 1, "--max-batch-size must be >= 1"),
                  (self.max_wait_ms >= 0, "--max-wait-ms must be >= 0"),
                  (self.max_queue >= 1, "--max-queue must be >= 1"), (self.timeout_s > 0, "--timeout must be > 0"),
                  (self.max_body_bytes >= 1024, "--max-body-bytes must be >= 1024"),
                  (self.max_texts >= 1, "--max-texts must be >= 1"), (self.max_new_tokens >= 1, "max_new_tokens >= 1"),
                  (self.max_tokens is None or self.max_tokens >= 2, "--max-tokens must be >= 2"),
                  (self.workers >= 1, "--workers must be >= 1"), (self.decode_slots >= 1, "decode_slots >= 1"),
                  (self.threads is None or self.threads >= 1, "--threads must be >= 1"),
                  (self.api_key is None or len(self.api_key) >= 8, "--api-key must have at least 8 characters"),
                  (bool(self.recipe.strip()), "--recipe must be auto, none, a preset name or a recipe file")]
        for ok, message in checks:
            if not ok:
                raise AutoliteError(message)


def create_app(engine: Engine, config: ServeConfig | None = None) -> FastAPI:
    """The serving app for ``engine``; its batcher and worker threads live in the app's lifespan."""
    config = config or ServeConfig()
    metrics = ServeMetrics()
    metrics.watch_routes(engine.model)  # a routed model's rows per path (no-op otherwise)
    # an external engine's threads were set when it was compiled; torch's own ops around it (padding, pooling) run
    # on one thread: its idle OpenMP workers would spin-wait for ms on the cores the engine's next forward needs
    # (measured ~20% slower OpenVINO calls)
    plans = plan_workers(config.workers, threads=1 if engine.external else config.threads)
    state: dict[str, Any] = {"status": "starting", "batcher": None, "workers": [p.describe() for p in plans]}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(engine.run, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                          max_queue=config.max_queue, timeout_s=config.timeout_s,
                          executors=[_executor(plan, config.pin) for plan in plans], metrics=metrics)
        await batcher.start()
        decode = await _start_decode_batcher(engine, config, metrics) if config.continuous_batching else None
        if decode is None:
            await _warm_up(engine, batcher, plans, config, state)
        else:  # generation runs in the decode thread alone: a warmed-up worker's idle OpenMP team would slow it
            state["workers"] = [decode.describe()]
        state.update(status="ok", batcher=batcher, decode=decode)
        log.info("serving %s: %s", engine.name, " | ".join(state["workers"]))
        try:
            yield
        finally:
            state["status"] = "draining"
            if decode is not None:
                await decode.stop()
            await batcher.stop()

    app = FastAPI(title="autolite server", version="1", lifespan=lifespan,
                  description=f"Batched inference for {engine.name}. Errors: {{'error': {{message, type, code}}}}.")
    app.state.engine, app.state.metrics, app.state.serve_state = engine, metrics, state
    install_error_handlers(app)
    auth = [Depends(check_api_key(config.api_key))]
    _add_routes(app, engine, config, state, metrics, auth)
    routes = {"/v1/embeddings", "/v1/classify", "/v1/completions", "/health", "/metrics"}
    # the hot route skips FastAPI's per-request machinery; LimitAndMeasure (added last: outermost) wraps both
    app.add_middleware(FastRoute, path="/v1/embeddings", schema=S.EmbeddingRequest, api_key=config.api_key,
                       handler=lambda req: embed_answer(engine, config, state, req))
    app.add_middleware(LimitAndMeasure, max_body_bytes=config.max_body_bytes, metrics=metrics, routes=routes)
    return app


async def _start_decode_batcher(engine: Engine, config: ServeConfig, metrics: ServeMetrics) -> DecodeBatcher | None:
    """The continuous batcher for a decoder the decode loop runs (compiled and warmed up), else None."""
    decode = await asyncio.to_thread(  # its KV cache is allocated in a thread that ends (see in_passing_thread)
        in_passing_thread, decode_batcher_for, engine, slots=config.decode_slots, compile=config.decode_compile,
        max_new_tokens=config.max_new_tokens, max_queue=config.max_queue, timeout_s=config.timeout_s, metrics=metrics)
    if decode is not None:
        await decode.start()
    return decode


def _executor(plan: WorkerPlan, pin: bool) -> ThreadPoolExecutor:
    """One thread per worker, pinned to the worker's CPUs before its first forward."""
    return ThreadPoolExecutor(1, thread_name_prefix=f"autolite-worker{plan.index}",
                              initializer=pin_current_thread, initargs=(plan, pin))


async def _warm_up(engine: Engine, batcher: Batcher, plans: list[WorkerPlan], config: ServeConfig,
                   state: dict[str, Any]) -> None:
    """Warm each worker up; with ``threads`` unset, measure 1..N intra-op threads in it and keep the fastest."""
    if "embed" in engine.tasks:
        task: Any = "embed"
    elif "classify" in engine.tasks:
        task = "classify"
    else:
        task = ("generate", GenerateParams(max_new_tokens=2, temperature=0))
    ids = engine.encode(["A short warm-up sentence for timing the model."] * min(8, config.max_batch_size),
                        truncate=True)

    def forward() -> None:
        engine.run(task, ids)

    def warm(plan: WorkerPlan) -> str:
        if engine.external:  # the plan gave torch's own ops one thread (see create_app)
            forward()
            return f"{engine.external}'s own threads (set when built); torch's own ops on 1 thread"
        if config.threads is not None:
            forward()
            return f"{plan.threads} threads (--threads)"
        best, timings = calibrate_threads(forward, thread_candidates(plan), repeats=2)
        measured = ", ".join(f"{n}: {t * 1000:.1f} ms" for n, t in sorted(timings.items()))
        return f"{best} threads (measured per batch of {len(ids)}: {measured})"

    loop = asyncio.get_running_loop()
    notes = await asyncio.gather(*(loop.run_in_executor(ex, warm, plan) for ex, plan in zip(batcher.executors, plans)))
    state["workers"] = [f"{plan.describe()}; {note}" for plan, note in zip(plans, notes)]


async def _tokenize(engine: Engine, config: ServeConfig, texts: list[str],
                    max_tokens: int | None = None) -> list[list[int]]:
    if len(texts) > config.max_texts:
        raise TooManyTextsError(f"{len(texts)} texts in one request; the limit is {config.max_texts} (--max-texts)")
    if sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
        return engine.encode(texts, max_tokens)
    return await asyncio.to_thread(engine.encode, texts, max_tokens)


def _batcher(state: dict[str, Any]) -> Batcher:
    if state["batcher"] is None or state["status"] != "ok":
        raise ShuttingDownError(f"the server is {state['status']}; retry shortly")
    return state["batcher"]


def _add_routes(app: FastAPI, engine: Engine, config: ServeConfig, state: dict[str, Any],
                metrics: ServeMetrics, auth: list[Any]) -> None:
    """The routes, in the order the OpenAPI schema lists them."""
    _add_encoder_routes(app, engine, config, state, auth)
    _add_completion_route(app, engine, config, state, metrics, auth)
    _add_ops_routes(app, engine, state, metrics, auth)


def _add_encoder_routes(app: FastAPI, engine: Engine, config: ServeConfig, state: dict[str, Any],
                        auth: list[Any]) -> None:
    errors = S.ERROR_RESPONSES

    @app.post("/v1/embeddings", response_model=S.EmbeddingResponse, responses=errors, dependencies=auth)
    async def embeddings(req: S.EmbeddingRequest) -> JSONResponse:
        """Mean-pooled, L2-normalised sentence embeddings (OpenAI embeddings shape)."""
        return FastJSONResponse(await embed_answer(engine, config, state, req))

    @app.post("/v1/classify", response_model=S.ClassifyResponse, responses=errors, dependencies=auth)
    async def classify(req: S.ClassifyRequest) -> JSONResponse:
        """Label and class probabilities per text (encoders with a sequence-classification head)."""
        engine.require("classify")
        texts = [req.input] if isinstance(req.input, str) else req.input
        ids = await _tokenize(engine, config, texts)
        probs = await _batcher(state).submit("classify", ids, [len(i) for i in ids])
        labels = engine.labels()
        data = [_classification(i, p, labels) for i, p in enumerate(probs)]
        return JSONResponse({"object": "list", "data": data, "model": engine.name, "usage": _usage(ids)})


async def embed_answer(engine: Engine, config: ServeConfig, state: dict[str, Any], req: S.EmbeddingRequest) -> dict:
    """The body answering an embeddings request (the FastAPI route and the fast path both call this)."""
    engine.require("embed")
    texts = [req.input] if isinstance(req.input, str) else req.input
    ids = await _tokenize(engine, config, texts)
    vectors = await _batcher(state).submit("embed", ids, [len(i) for i in ids])
    data = [{"object": "embedding", "index": i, "embedding": _encode_vector(v, req.encoding_format)}
            for i, v in enumerate(vectors)]
    return {"object": "list", "data": data, "model": engine.name, "usage": _usage(ids)}


def _add_completion_route(app: FastAPI, engine: Engine, config: ServeConfig, state: dict[str, Any],
                          metrics: ServeMetrics, auth: list[Any]) -> None:
    @app.post("/v1/completions", response_model=S.CompletionResponse, responses=S.COMPLETION_RESPONSES,
              dependencies=auth)
    async def completions(req: S.CompletionRequest) -> Response:
        """Generated continuation per prompt (decoders, seq2seq); temperature 0 = greedy; ``stream`` = SSE."""
        engine.require("generate")
        if req.max_tokens > config.max_new_tokens:
            raise HTTPException(422, f"max_tokens {req.max_tokens} is over the limit of {config.max_new_tokens}")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        room = engine.context_length - req.max_tokens if engine.family.kind == "decoder" else engine.max_tokens
        ids = await _tokenize(engine, config, prompts, max(2, min(engine.max_tokens, room)))
        params = GenerateParams(req.max_tokens, req.temperature, req.top_p, req.seed)
        target = state.get("decode") or _batcher(state)  # continuous batching when on for this decoder
        if req.stream:
            return await stream_completions(target, ("generate", params), ids, engine.name, metrics)
        outs = await target.submit(("generate", params), ids, [len(i) for i in ids])
        choices = [{"index": i, "text": o["text"], "finish_reason": o["finish_reason"], "logprobs": None}
                   for i, o in enumerate(outs)]
        usage = _usage(ids, completion=sum(o["tokens"] for o in outs))
        return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion",
                             "created": int(time.time()), "model": engine.name, "choices": choices, "usage": usage})


def _add_ops_routes(app: FastAPI, engine: Engine, state: dict[str, Any], metrics: ServeMetrics,
                    auth: list[Any]) -> None:
    @app.get("/health", response_model=S.Health)
    async def health() -> JSONResponse:
        """Liveness and readiness (no API key needed): 200 while serving, 503 while starting or draining."""
        batcher = state["batcher"]
        body = {"status": state["status"], "model": engine.name, "backend": engine.backend,
                "tasks": sorted(engine.tasks),
                "queue_depth": batcher.depth if batcher else 0, "workers": state["workers"]}
        return JSONResponse(body, status_code=200 if state["status"] == "ok" else 503)

    @app.get("/metrics", response_class=Response, dependencies=auth)
    async def prometheus() -> Response:
        """Prometheus text exposition: queue depth, batch sizes, latencies, tokens/s, rejections."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _usage(ids: list[list[int]], completion: int | None = None) -> dict[str, int]:
    prompt = sum(len(i) for i in ids)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt + (completion or 0)}
    if completion is not None:
        usage["completion_tokens"] = completion
    return usage


def _encode_vector(vector: np.ndarray, encoding: str) -> np.ndarray | str:
    """base64 of the little-endian float32 bytes (OpenAI's format), or the float32 row itself (orjson writes it)."""
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return np.ascontiguousarray(vector, dtype=np.float32)


def _classification(index: int, probs: list[float], labels: dict[int, str]) -> dict[str, Any]:
    best = max(range(len(probs)), key=probs.__getitem__)
    names = [labels.get(i, f"LABEL_{i}") for i in range(len(probs))]
    return {"object": "classification", "index": index, "label": names[best], "label_id": best,
            "score": probs[best], "scores": dict(zip(names, probs))}
