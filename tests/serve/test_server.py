"""The serving recipe: `autolite serve` runs fast-dense (cached per machine) for an uncompressed encoder by default,
a compressed directory as it is, generation models as loaded; /health and the fast embeddings path."""
import asyncio

import pytest

import autolite
from autolite.errors import RecipeError
from autolite.passes import compress
from autolite.runtime import fast_dense
from autolite.serve import ServeConfig
from autolite.serve import schemas as S
from autolite.serve import server
from autolite.serve.http import FastRoute


def test_auto_picks_fast_dense_for_an_uncompressed_encoder_on_cpu(tiny_bert):
    model, _, family = tiny_bert
    assert server.serving_recipe(model, family, "auto", "cpu") == "fast-dense"
    assert server.serving_recipe(model, family, "auto", "cuda") is None  # the GPU runs the model as loaded
    assert server.serving_recipe(model, family, "none", "cpu") is None
    assert server.serving_recipe(model, family, "int8-dynamic", "cpu") == "int8-dynamic"


def test_auto_keeps_a_compressed_model_and_generation_models_as_loaded(tiny_bert, tiny_llama):
    model, tok, family = tiny_bert
    compressed = compress(model, "int8-dynamic", tokenizer=tok, family=family)
    assert server.serving_recipe(compressed, family, "auto", "cpu") is None
    assert server.serving_recipe(tiny_llama[0], tiny_llama[2], "auto", "cpu") is None


def test_load_engine_runs_the_cached_fast_dense_choice(monkeypatch, tmp_path):
    """auto on an encoder: fast-dense measured at 32 x 128 tokens (capped by the positions), whatever the server's
    batch limit; the
    decision cached and replayed by the next load without measuring again."""
    monkeypatch.setenv("AUTOLITE_CACHE", str(tmp_path))
    shapes = []

    def fake_measure(model, config, ctx):
        shapes.append((config.batch, config.seq))
        return {"chosen": "int8-dynamic", "passes": fast_dense.candidate_passes("int8-dynamic"),
                "measured": {"int8-dynamic": {"ok": True, "median_ms": 1.0, "speedup": 2.0}},
                "search_s": 0.0, "search_cpu_s": 0.0}

    monkeypatch.setattr(fast_dense, "measure", fake_measure)
    config = ServeConfig(max_batch_size=8, threads=1)
    engine = server.load_engine("random:tiny-bert", config, "cpu")
    positions = engine.model.config.max_position_embeddings
    assert shapes == [(32, min(128, positions))]
    assert engine.backend.startswith("PyTorch") and "fast-dense: int8-dynamic" in engine.backend
    assert len(list((tmp_path / "fast-dense").glob("*.json"))) == 1
    again = server.load_engine("random:tiny-bert", config, "cpu")
    assert shapes == [(32, min(128, positions))] and "fast-dense: int8-dynamic" in again.backend


def test_load_engine_recipe_none_and_a_preset(monkeypatch):
    monkeypatch.setattr(fast_dense, "measure", lambda *_: pytest.fail("none must not search"))
    plain = server.load_engine("random:tiny-bert", ServeConfig(recipe="none"), "cpu")
    assert plain.backend == "PyTorch float32 (as loaded)"
    assert "int8-dynamic" in server.load_engine("random:tiny-bert", ServeConfig(recipe="int8-dynamic"), "cpu").backend


def test_unknown_recipe_is_one_line_before_the_model_loads(monkeypatch):
    monkeypatch.setattr(autolite, "load", lambda *_: pytest.fail("the model was loaded first"))
    with pytest.raises(RecipeError):
        server.load_engine("random:tiny-bert", ServeConfig(recipe="no-such-preset"), "cpu")


def test_health_names_the_backend(srv):
    async def go():
        async with srv.client(srv.engine(), threads=1) as client:
            return (await client.get("/health")).json()
    assert srv.run(go())["backend"] == "PyTorch float32 (as loaded)"


def test_fast_route_answers_valid_bodies_and_hands_the_rest_to_the_app():
    seen = []

    async def app(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 422, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def handler(request):
        return {"texts": request.input}

    route = FastRoute(app, "/v1/embeddings", S.EmbeddingRequest, handler, api_key=None)

    async def call(body: bytes, path: str = "/v1/embeddings") -> tuple[int, bytes]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)
        await route({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send)
        return sent[0]["status"], sent[1]["body"]

    assert asyncio.run(call(b'{"input": ["a", "b"]}')) == (200, b'{"texts":["a","b"]}')
    assert asyncio.run(call(b'{"input": 3}'))[0] == 422 and seen == [b'{"input": 3}']
    assert asyncio.run(call(b'{"input": "a"}', "/v1/classify"))[0] == 422
