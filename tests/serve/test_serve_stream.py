"""Streamed completions (server-sent events): same text as the non-streamed greedy answer, batched
streams, and a client that goes away mid-stream stops its generation without hurting the server."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from autolite.serve import ServeConfig, create_app

PROMPTS = ["The quick brown fox", "Once upon a time there was a very long", "Hello"]


def parse_sse(text: str) -> tuple[dict[int, str], dict[int, str], list[str]]:
    """(text per choice index, finish reason per index, raw events) of an SSE body."""
    events = [e for e in text.split("\n\n") if e]
    texts, reasons = {}, {}
    for event in events:
        assert event.startswith("data: "), event
        if event == "data: [DONE]":
            continue
        chunk = json.loads(event[len("data: "):])
        assert chunk["object"] == "text_completion" and chunk["id"].startswith("cmpl-")
        choice = chunk["choices"][0]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"] is not None:
            reasons[choice["index"]] = choice["finish_reason"]
    return texts, reasons, events


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_streamed_text_equals_greedy_answer(srv, preset):
    request = {"max_tokens": 12, "temperature": 0}

    async def go():
        async with srv.client(srv.engine(preset), max_batch_size=8, max_wait_ms=100, threads=1) as client:
            plain = await client.post("/v1/completions", json={"prompt": PROMPTS, **request})
            streams = await asyncio.gather(*(client.post("/v1/completions", json={"prompt": p, "stream": True,
                                                                                     **request}) for p in PROMPTS))
            listed = await client.post("/v1/completions", json={"prompt": PROMPTS, "stream": True, **request})
            return plain, streams, listed, client.app

    plain, streams, listed, app = srv.run(go())
    expected = [c["text"] for c in plain.json()["choices"]]
    assert any(expected)
    for stream, text in zip(streams, expected):
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        texts, reasons, events = parse_sse(stream.text)
        assert texts == {0: text} and reasons[0] in ("stop", "length") and events[-1] == "data: [DONE]"
        assert len(events) > 3  # token by token, not one chunk
    texts, reasons, _ = parse_sse(listed.text)
    assert [texts[i] for i in range(len(PROMPTS))] == expected and len(reasons) == len(PROMPTS)
    # the three concurrent streams shared forwards
    assert srv.metric(app, "autolite_batch_size_count") < srv.metric(app, "autolite_batch_size_sum")


def test_stream_errors_before_the_first_token_are_json(srv):
    async def go():
        async with srv.client(srv.engine("tiny-bert"), threads=1) as client:
            return await client.post("/v1/completions", json={"prompt": "x", "stream": True})

    response = srv.run(go())
    assert response.status_code == 400 and "does not support generate" in response.json()["error"]["message"]


def test_client_disconnect_mid_stream_stops_generation(srv):
    engine, results = srv.engine("tiny-llama"), []
    run = engine.run
    engine.run = lambda key, batch: results.append(run(key, batch)) or results[-1]
    app = create_app(engine, ServeConfig(threads=1, max_wait_ms=0, max_new_tokens=400))
    body = {"prompt": "Tell me a long story", "max_tokens": 400, "temperature": 0, "stream": True}
    with srv.live(app) as url:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
            assert response.status_code == 200
            first = next(response.iter_lines())
            assert first.startswith("data: {")
        # the server keeps serving: a full stream afterwards still ends with [DONE]
        after = httpx.post(f"{url}/v1/completions", json={**body, "max_tokens": 5}, timeout=30)
        texts, reasons, events = parse_sse(after.text)
        assert after.status_code == 200 and events[-1] == "data: [DONE]" and 0 in reasons
        cancelled = srv.metric(app, "autolite_streams_cancelled_total")
    assert cancelled == 1
    # the abandoned generation stopped early (the warm-up's and the second request's are short anyway)
    longest = max(r[0]["tokens"] for r in results if r and isinstance(r[0], dict))
    assert longest < 400, longest


def test_tiny_temperatures_decode_greedily_instead_of_failing(srv):
    """Found by the schemathesis run: temperature 5e-324 overflowed the logits and sampling raised (500)."""
    request = {"prompt": "Hello there", "max_tokens": 6}

    async def go():
        async with srv.client(srv.engine("tiny-llama"), threads=1) as client:
            greedy = await client.post("/v1/completions", json={**request, "temperature": 0})
            tiny = await client.post("/v1/completions", json={**request, "temperature": 5e-324, "top_p": 5e-324})
            streamed = await client.post("/v1/completions", json={**request, "temperature": 1e-172, "stream": True})
            return greedy, tiny, streamed

    greedy, tiny, streamed = srv.run(go())
    assert tiny.status_code == 200 and streamed.status_code == 200
    assert tiny.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert parse_sse(streamed.text)[0][0] == greedy.json()["choices"][0]["text"]
