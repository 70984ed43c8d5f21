"""Completions for decoders: greedy generation with the KV cache, batched prompts equal unbatched ones."""
from __future__ import annotations

import asyncio

import pytest

PROMPTS = ["The quick brown fox", "Once upon a time there was a very long", "Hello"]


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_batched_greedy_completions_equal_one_by_one(srv, preset):
    engine = srv.engine(preset)
    request = {"max_tokens": 6, "temperature": 0}

    async def go():
        async with srv.client(engine, max_batch_size=1) as client:
            alone = [await client.post("/v1/completions", json={"prompt": p, **request}) for p in PROMPTS]
        async with srv.client(engine, max_batch_size=8, max_wait_ms=100) as client:
            together = await asyncio.gather(*(client.post("/v1/completions", json={"prompt": p, **request})
                                              for p in PROMPTS))
            listed = await client.post("/v1/completions", json={"prompt": PROMPTS, **request})
            return alone, together, listed, client.app

    alone, together, listed, app = srv.run(go())
    texts = [r.json()["choices"][0]["text"] for r in alone]
    assert [r.json()["choices"][0]["text"] for r in together] == texts
    assert [c["text"] for c in listed.json()["choices"]] == texts
    body = listed.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert all(c["finish_reason"] in ("stop", "length") for c in body["choices"])
    usage = body["usage"]
    assert 0 < usage["completion_tokens"] <= 3 * 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert srv.metric(app, "autolite_batch_size_count") < srv.metric(app, "autolite_batch_size_sum")


def test_generation_limits_and_sampling(srv):
    async def go():
        async with srv.client(srv.engine("tiny-llama"), max_new_tokens=8) as client:
            too_many = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 9})
            stream = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": [1]})
            hot = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "temperature": 3})
            seeded = [await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 8,
                                                                  "temperature": 1.0, "seed": 7}) for _ in range(2)]
            return too_many, stream, hot, seeded

    too_many, stream, hot, seeded = srv.run(go())
    assert too_many.status_code == 422 and "limit of 8" in too_many.json()["error"]["message"]
    assert stream.status_code == 422 and hot.status_code == 422
    assert [s.status_code for s in seeded] == [200, 200]
    assert seeded[0].json()["choices"] == seeded[1].json()["choices"]  # same seed, same sample
