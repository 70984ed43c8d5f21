"""Continuous batching on the decode loop: rows join and leave mid-generation, prefix KV reuse, the
completions route (plain and streamed) over it, and a drain that loses nothing."""
from __future__ import annotations

import asyncio

import pytest

import autolite
from autolite.runtime.decode import Decoder, generate
from autolite.serve.decode_batcher import DecodeBatcher
from autolite.serve.engine import GenerateParams
from autolite.serve.stream import StreamPayload, TokenSink

GREEDY = GenerateParams(max_new_tokens=6, temperature=0)
SYSTEM = "You are a helpful assistant. Answer briefly and politely, in plain words. Question:"


@pytest.fixture(scope="module")
def llama():
    return autolite.load("random:tiny-llama")


def _solo(model, tok, family, ids, n):
    return generate(Decoder(model, family, compile=False), tok, ids, n).text


def _batcher(model, tok, family, **kw):
    return DecodeBatcher(Decoder(model, family, compile=False), tok, slots=4, max_len=256, **kw)


def test_a_request_joins_and_leaves_mid_generation(llama):
    model, tok, family = llama
    long_ids, short_ids = tok("Tell me a long story", add_special_tokens=False)["input_ids"], [5, 6, 7]

    async def go():
        batcher = _batcher(model, tok, family)
        await batcher.start()
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        sink = TokenSink(loop, events, 0)
        long = asyncio.ensure_future(batcher.submit(("generate", GenerateParams(60, 0)),
                                                    [StreamPayload(long_ids, sink)], [len(long_ids)]))
        for _ in range(3):  # the long one is generating
            await events.get()
        short = await batcher.submit(("generate", GenerateParams(3, 0)), [short_ids], [3])
        long_running = not long.done()
        result = (await long)[0]
        await batcher.stop()
        return short[0], result, long_running, batcher.max_rows_seen

    short, long, long_running, rows = asyncio.run(go())
    assert long_running and rows == 2  # joined a running batch, and left it before the long one ended
    assert short["tokens"] == 3 and long["tokens"] == 60 and long["finish_reason"] == "length"
    assert short["text"] == _solo(model, tok, family, [5, 6, 7], 3)
    assert long["text"] == _solo(model, tok, family, long_ids, 60)


def test_prefix_reuse_gives_identical_outputs(llama):
    model, tok, family = llama
    prompts = [tok(f"{SYSTEM} {q}", add_special_tokens=False)["input_ids"] for q in ("why is the sky blue?",
                                                                                     "what is two plus two?")]

    async def go(entries):
        batcher = _batcher(model, tok, family, prefix_entries=entries)
        await batcher.start()
        outs = [(await batcher.submit(("generate", GREEDY), [p], [len(p)]))[0]["text"] for p in prompts]
        await batcher.stop()
        return outs, batcher.prefixes

    reused, store = asyncio.run(go(4))
    plain, _ = asyncio.run(go(0))
    system_tokens = len(tok(SYSTEM, add_special_tokens=False)["input_ids"])
    assert store.hits == 1 and store.reused_tokens >= system_tokens
    assert reused == plain == [_solo(model, tok, family, p, 6) for p in prompts]


def test_bad_requests_fail_before_work(llama):
    model, tok, family = llama
    from autolite.runtime.decode import DecodeInputError

    async def go():
        batcher = _batcher(model, tok, family)
        await batcher.start()
        try:
            with pytest.raises(DecodeInputError, match="over the decode cache"):
                await batcher.submit(("generate", GenerateParams(250, 0)), [list(range(5, 30))], [25])
        finally:
            await batcher.stop()

    asyncio.run(go())


PROMPTS = ["The quick brown fox", "Once upon a time there was a very long", "Hello"]


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_completions_route_plain_and_streamed(srv, preset):
    from tests.serve.test_serve_stream import parse_sse

    request = {"max_tokens": 8, "temperature": 0}
    engine = srv.engine(preset)

    async def go():
        async with srv.client(engine, threads=1) as client:  # static batching, model.generate
            reference = await client.post("/v1/completions", json={"prompt": PROMPTS, **request})
        async with srv.client(engine, threads=1, continuous_batching=True, decode_compile=False) as client:
            plain = await asyncio.gather(*(client.post("/v1/completions", json={"prompt": p, **request})
                                           for p in PROMPTS))
            streamed = await asyncio.gather(*(client.post("/v1/completions", json={"prompt": p, "stream": True,
                                                                                     **request}) for p in PROMPTS))
            return reference, plain, streamed

    reference, plain, streamed = srv.run(go())
    expected = [c["text"] for c in reference.json()["choices"]]
    assert [r.json()["choices"][0]["text"] for r in plain] == expected
    for response, text in zip(streamed, expected):
        texts, reasons, events = parse_sse(response.text)
        assert texts == {0: text} and events[-1] == "data: [DONE]" and len(events) > 3


def test_shutdown_drains_every_running_request(srv):
    engine = srv.engine("tiny-llama")

    async def go():
        async with srv.client(engine, threads=1, continuous_batching=True, decode_compile=False) as client:
            tasks = [asyncio.ensure_future(client.post("/v1/completions", json={"prompt": p, "max_tokens": 40,
                                                                                 "temperature": 0}))
                     for p in PROMPTS]
            while client.app.state.serve_state["decode"].max_rows_seen < 2:
                await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)  # the lifespan ended (drain) while they were generating

    responses = srv.run(go())
    assert [r.status_code for r in responses] == [200] * 3
    assert all(r.json()["usage"]["completion_tokens"] == 40 for r in responses)


@pytest.mark.parametrize("args, expected", [((), False), (("--continuous-batching",), True)])
def test_serve_flag_turns_continuous_batching_on(run_cli, monkeypatch, args, expected):
    from types import SimpleNamespace

    from autolite.serve import server

    seen = {}
    monkeypatch.setattr(server, "load_engine", lambda *a: SimpleNamespace(name="m", tasks={"generate"}, backend="torch"))
    monkeypatch.setattr(server, "run_server", lambda engine, config, host, sock: seen.update(config=config))
    code, _, err = run_cli("serve", "random:tiny-llama", "--port", "0", *args)
    assert code == 0, err
    assert seen["config"].continuous_batching is expected


def test_a_failed_prefill_fails_only_its_request(llama):
    model, tok, family = llama
    batcher = _batcher(model, tok, family)
    prefill = batcher.decoder.prefill

    def flaky(cache, slot, ids, start=0):
        if ids[:1] == [9]:
            raise RuntimeError("prefill broke")
        return prefill(cache, slot, ids, start)

    batcher.decoder.prefill = flaky

    async def go():
        await batcher.start()
        results = await asyncio.gather(batcher.submit(("generate", GREEDY), [[9, 10, 11]], [3]),
                                       batcher.submit(("generate", GREEDY), [[5, 6, 7]], [3]),
                                       return_exceptions=True)
        await batcher.stop()
        return results

    bad, good = asyncio.run(go())
    assert isinstance(bad, RuntimeError) and "prefill broke" in str(bad)
    assert good[0]["text"] == _solo(model, tok, family, [5, 6, 7], 6)


@pytest.mark.slow
def test_rows_joining_and_leaving_do_not_recompile_the_step(llama):
    import torch
    from torch._dynamo.utils import counters

    model, tok, family = llama
    batcher = DecodeBatcher(Decoder(model, family, compile=True), tok, slots=8, max_len=256)
    batcher.warm()  # compiles one row and a dynamic row count
    graphs = counters["stats"]["unique_graphs"]
    for rows in (3, 8, 5, 1, 2, 7):
        for row in range(rows):
            batcher.decoder.prefill(batcher.cache, row, [5, 6, 7, 8])
        batcher.decoder.step(batcher.cache, torch.zeros(rows, dtype=torch.long))
        for row in range(rows):
            batcher.cache.reset(row)
    assert counters["stats"]["unique_graphs"] == graphs


def test_the_decode_thread_warms_up_itself_and_start_raises_what_its_warm_up_raised(llama):
    import threading

    model, tok, family = llama
    batcher, warmed_in = _batcher(model, tok, family), []
    step = batcher.decoder.step

    def recording_step(cache, tokens):
        warmed_in.append(threading.current_thread().name)
        return step(cache, tokens)

    batcher.decoder.step = recording_step

    async def go():
        await batcher.start()
        await batcher.stop()

    asyncio.run(go())
    assert warmed_in and set(warmed_in) == {"autolite-decode"}  # one thread compiles, warms and serves
    assert "decode thread: 4 rows" in batcher.describe() and batcher.threads >= 1

    broken = _batcher(model, tok, family)
    broken.decoder.step = lambda cache, tokens: (_ for _ in ()).throw(RuntimeError("no kernel for this step"))
    with pytest.raises(RuntimeError, match="no kernel"):
        asyncio.run(broken.start())
