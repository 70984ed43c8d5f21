"""The HTTP app in-process: responses, batching through HTTP, limits, auth, backpressure."""
from __future__ import annotations

import asyncio
import base64
import os

import numpy as np
import pytest
import torch

from autolite.eval.forward import run_model, tokenize

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Call me Ishmael.", "A short one."]


def test_embeddings_match_a_direct_forward_and_are_normalised(srv):
    engine = srv.engine()

    async def body():
        async with srv.client(engine) as client:
            single = await client.post("/v1/embeddings", json={"input": TEXTS[0], "model": "x", "user": "u"})
            many = await client.post("/v1/embeddings", json={"input": TEXTS})
            b64 = await client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"})
            return single, many, b64

    single, many, b64 = srv.run(body())
    assert single.status_code == many.status_code == b64.status_code == 200
    data = many.json()
    assert data["object"] == "list" and data["model"] == "tiny-bert"
    assert [d["index"] for d in data["data"]] == [0, 1, 2] and data["data"][0]["object"] == "embedding"
    got = torch.tensor([d["embedding"] for d in data["data"]])
    ref = torch.nn.functional.normalize(run_model(engine.model, engine.family, tokenize(engine.tokenizer, TEXTS))
                                        .embeddings, dim=-1)
    assert got.shape == (3, 64)
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(torch.tensor(single.json()["data"][0]["embedding"]), ref[0], atol=1e-5)
    decoded = np.frombuffer(base64.b64decode(b64.json()["data"][1]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, got[1].numpy(), atol=1e-6)
    n_tokens = sum(len(ids) for ids in engine.tokenizer(TEXTS)["input_ids"])
    assert data["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


def test_classify_returns_probabilities_and_labels(srv):
    async def body():
        async with srv.client(srv.engine()) as client:
            return await client.post("/v1/classify", json={"input": TEXTS})

    data = srv.run(body()).json()["data"]
    assert len(data) == 3
    for item in data:
        assert abs(sum(item["scores"].values()) - 1) < 1e-5
        assert item["label"] in ("LABEL_0", "LABEL_1") and item["score"] == max(item["scores"].values())


def test_concurrent_requests_form_batches_visible_in_metrics(srv):
    async def body():
        async with srv.client(srv.engine(), max_batch_size=8, max_wait_ms=100) as client:
            replies = await asyncio.gather(*(client.post("/v1/embeddings", json={"input": f"sentence {i}"})
                                             for i in range(16)))
            return replies, (await client.get("/metrics")).text, client.app

    replies, text, app = srv.run(body())
    assert all(r.status_code == 200 for r in replies)
    assert srv.metric(app, "autolite_batch_size_sum") == 16
    assert srv.metric(app, "autolite_batch_size_count") <= 4  # 16 texts in at most 4 forwards, not 16
    assert srv.metric(app, "autolite_requests_total", {"endpoint": "/v1/embeddings", "status": "200"}) == 16
    for name in ("autolite_queue_depth", "autolite_tokens_per_second", "autolite_request_latency_seconds_bucket",
                 "autolite_queue_wait_seconds_bucket", "autolite_forward_seconds_bucket"):
        assert name in text


def test_full_queue_answers_429_with_retry_after_and_others_still_succeed(srv):
    async def body():
        async with srv.client(srv.engine(delay=0.3), max_batch_size=1, max_wait_ms=0, max_queue=2) as client:
            first = asyncio.create_task(client.post("/v1/embeddings", json={"input": "x"}))
            await asyncio.sleep(0.15)  # let the worker take the first request into its 0.3 s forward
            rest = await asyncio.gather(*(client.post("/v1/embeddings", json={"input": "x"}) for _ in range(5)))
            after = await client.post("/v1/embeddings", json={"input": "y"})
            return [await first, *rest], after

    replies, after = srv.run(body())
    codes = sorted(r.status_code for r in replies)
    assert codes.count(200) == 3 and codes.count(429) == 3  # one in the forward, two queued
    rejected = next(r for r in replies if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1 and rejected.json()["error"]["code"] == 429
    assert after.status_code == 200


def test_request_timeout_answers_504(srv):
    async def body():
        async with srv.client(srv.engine(delay=0.5), max_batch_size=1, max_wait_ms=0, timeout_s=0.2) as client:
            replies = await asyncio.gather(*(client.post("/v1/embeddings", json={"input": "x"}) for _ in range(2)))
            return replies, client.app

    replies, app = srv.run(body())
    assert [r.status_code for r in replies] == [504, 504]
    assert "timeout" in replies[0].json()["error"]["type"]
    assert srv.metric(app, "autolite_rejected_total", {"reason": "timeout"}) == 2


def test_limits_texts_tokens_and_truncation(srv):
    async def body(**config):
        async with srv.client(srv.engine(max_tokens=8, truncate=config.pop("truncate")), **config) as client:
            many = await client.post("/v1/embeddings", json={"input": ["a"] * 5})
            long = await client.post("/v1/embeddings", json={"input": "word " * 50})
            return many, long

    many, long = srv.run(body(max_texts=4, truncate=False))
    assert many.status_code == 413 and "limit is 4" in many.json()["error"]["message"]
    assert long.status_code == 413 and "--truncate" in long.json()["error"]["message"]
    _, cut = srv.run(body(max_texts=4, truncate=True))
    assert cut.status_code == 200 and cut.json()["usage"]["prompt_tokens"] == 8


def test_api_key(srv):
    key = "s3cret-key-123"

    async def body():
        async with srv.client(srv.engine(), api_key=key) as client:
            out = {}
            for name, headers in (("none", {}), ("wrong", {"Authorization": "Bearer nope"}),
                                  ("basic", {"Authorization": f"Basic {key}"}),
                                  ("right", {"Authorization": f"Bearer {key}"})):
                out[name] = await client.post("/v1/embeddings", json={"input": "x"}, headers=headers)
            out["metrics"] = await client.get("/metrics")
            out["health"] = await client.get("/health")
            return out

    out = srv.run(body())
    for name in ("none", "wrong", "basic", "metrics"):
        assert out[name].status_code == 401, name
        assert out[name].headers["www-authenticate"] == "Bearer"
    assert out["right"].status_code == 200 and out["health"].status_code == 200


def test_tasks_the_model_cannot_do_are_400(srv):
    async def body():
        async with srv.client(srv.engine("tiny-gpt2")) as decoder, srv.client(srv.engine()) as encoder:
            return (await decoder.post("/v1/embeddings", json={"input": "x"}),
                    await encoder.post("/v1/completions", json={"prompt": "x"}))

    for reply in srv.run(body()):
        assert reply.status_code == 400 and "does not support" in reply.json()["error"]["message"]


def test_health_and_openapi(srv):
    async def body():
        async with srv.client(srv.engine()) as client:
            return (await client.get("/health")).json(), (await client.get("/openapi.json")).json()

    health, schema = srv.run(body())
    assert health["status"] == "ok" and health["tasks"] == ["classify", "embed"] and health["workers"]
    assert {"/v1/embeddings", "/v1/classify", "/v1/completions", "/health", "/metrics"} <= set(schema["paths"])
    assert "EmbeddingRequest" in schema["components"]["schemas"]
    assert "429" in schema["paths"]["/v1/embeddings"]["post"]["responses"]


def test_config_is_validated():
    from autolite.errors import AutoliteError
    from autolite.serve import ServeConfig

    for bad in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"api_key": "short"}, {"max_tokens": 1}, {"workers": 0}):
        with pytest.raises(AutoliteError):
            ServeConfig(**bad)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 usable CPUs")
def test_two_workers_split_the_cpus_and_both_serve(srv):
    async def body():
        async with srv.client(srv.engine(), workers=2, max_batch_size=2, max_wait_ms=0) as client:
            replies = await asyncio.gather(*(client.post("/v1/classify", json={"input": f"t {i}"}) for i in range(12)))
            return replies, (await client.get("/health")).json()

    replies, health = srv.run(body())
    assert all(r.status_code == 200 for r in replies)
    assert len(health["workers"]) == 2 and "worker 1: CPUs" in health["workers"][1]


def test_serve_in_thread_fails_clearly_when_health_never_answers():
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from autolite.errors import BackendUnavailableError
    from autolite.serve.server import serve_in_thread

    app = FastAPI()
    app.get("/health")(lambda: JSONResponse({"status": "loading"}, status_code=503))
    with pytest.raises(BackendUnavailableError, match="did not answer /health within 1 s"):
        with serve_in_thread(app, log_level="error", timeout_s=1):
            pass


def test_an_external_engine_s_server_runs_torch_s_own_ops_on_one_thread(srv):
    """PyTorch's idle OpenMP workers spin on the cores the engine needs: the worker keeps torch to one thread."""
    from autolite.runtime.external import Runner, route_forward

    class FakeOpenVino(Runner):
        kind = "OpenVINO"

        def __init__(self, hidden: int) -> None:
            super().__init__(["input_ids", "attention_mask"], ["last_hidden_state"], "fake")
            self.hidden, self.torch_threads = hidden, []

        def run(self, input_ids, attention_mask):
            self.torch_threads.append(torch.get_num_threads())
            return {"last_hidden_state": torch.ones(*input_ids.shape, self.hidden)}  # (B, T, H)

    engine = srv.engine()
    runner = FakeOpenVino(engine.model.config.hidden_size)
    route_forward(engine.model, runner)

    async def body():
        async with srv.client(engine, threads=2) as client:
            return await client.post("/v1/embeddings", json={"input": TEXTS})

    response = srv.run(body())
    assert response.status_code == 200 and len(response.json()["data"]) == 3
    assert runner.torch_threads and set(runner.torch_threads) == {1}
