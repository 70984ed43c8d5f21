"""fast-dense search: floors from measured peaks skip candidates that cannot win, losers stop early (fake clock),
a spent budget stops the search, corrupted cache entries are rebuilt, ONNX Runtime is picked and reloaded."""
from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

import autolite
from autolite.passes import PassContext
from autolite.runtime import dense_search, fast_dense
from autolite.runtime.fast_dense import FastDense, cache_key, cache_path
from autolite.runtime.ort import is_onnxruntime

PEAKS = {"gemm_gflops": 100.0, "int8_gemm_gops": 400.0, "bf16_gemm_gflops": 200.0}


@pytest.fixture
def fake_clock(monkeypatch, tmp_path):
    """``fake_clock({"baseline": 10, "fp32": 9, ...})``: each timed call of a candidate takes that many ms;
    returns the list of names timed, in order. Peaks are fixed (no measuring), the cache is the test's own."""
    monkeypatch.setenv("AUTOLITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(dense_search, "machine_peaks", lambda measure=None: dict(PEAKS))
    monkeypatch.setattr("autolite.quant.int8.available_kernels", lambda: ["fbgemm"])  # no kernel timing

    def install(times: dict[str, float]) -> list[str]:
        calls: list[str] = []

        def time_once(name, fn):
            calls.append(name)
            return times[name]
        monkeypatch.setattr(dense_search, "time_once", time_once)
        return calls
    return install


def _measure(model, tok, family, texts, **kwargs):
    config = FastDense(batch=2, seq=16, **kwargs)
    return fast_dense.measure(model, config, PassContext(family=family, tokenizer=tok, calib=texts))


def test_a_loser_stops_after_one_run(load_model, texts, fake_clock):
    calls = fake_clock({"baseline": 10.0, "int8-dynamic": 2.0, "fp32": 9.0})
    model, tok, family = load_model("tiny-bert")
    result = _measure(model, tok, family, texts, runs=4, candidates=["fp32", "int8-dynamic"])
    measured = result["measured"]
    assert result["chosen"] == "int8-dynamic"
    assert calls.index("int8-dynamic") < calls.index("fp32")  # the lower INT8 floor is tried first
    assert measured["int8-dynamic"]["runs"] == 4 and measured["int8-dynamic"]["speedup"] == 5.0
    assert measured["fp32"]["runs"] == 1 and "after 1 of 4 runs" in measured["fp32"]["stopped"]
    assert calls.count("fp32") == 1


def test_a_close_candidate_gets_more_runs_and_can_take_the_lead(load_model, texts, fake_clock):
    fake_clock({"baseline": 10.0, "int8-dynamic": 5.0, "fp32": 4.0})
    model, tok, family = load_model("tiny-bert")
    result = _measure(model, tok, family, texts, runs=3, candidates=["fp32", "int8-dynamic"])
    assert result["chosen"] == "fp32" and result["measured"]["fp32"]["runs"] == 3


def test_a_candidate_whose_floor_is_above_the_leader_is_never_built(load_model, texts, fake_clock, monkeypatch):
    fake_clock({"baseline": 10.0, "int8-dynamic": 2.0})
    monkeypatch.setattr(dense_search, "linear_gflop", lambda model, tokens: 1.0)  # 1 GFLOP: FP32 floor 7 ms
    built = []
    real_build = dense_search.build
    monkeypatch.setattr(dense_search, "build", lambda m, passes, ctx: built.append(passes) or real_build(m, passes, ctx))
    model, tok, family = load_model("tiny-bert")
    result = _measure(model, tok, family, texts, candidates=["fp32", "int8-dynamic"])
    assert "cannot win" in result["measured"]["fp32"]["skipped"] and "7.0 ms" in result["measured"]["fp32"]["skipped"]
    assert built == [[{"pass": "int8-dynamic", **_int8_defaults()}]]


def _int8_defaults() -> dict:
    return {k: v for k, v in fast_dense.candidate_passes("int8-dynamic")[0].items() if k != "pass"}


def test_a_spent_budget_skips_the_rest(load_model, texts, fake_clock, monkeypatch):
    fake_clock({"baseline": 10.0, "int8-dynamic": 2.0, "fp32": 1.0})
    model, tok, family = load_model("tiny-bert")
    result = _measure(model, tok, family, texts, budget_s=1e-6, candidates=["fp32", "int8-dynamic"])
    assert result["chosen"] == "int8-dynamic" and "budget" in result["measured"]["fp32"]["skipped"]


def test_a_corrupted_cache_entry_is_ignored_and_rebuilt(load_model, texts, fake_clock, caplog):
    fake_clock({"baseline": 10.0, "fp32": 9.0})
    model, tok, family = load_model("tiny-bert")
    config = FastDense(batch=2, seq=16, runs=1, candidates=["fp32"])
    path = cache_path(cache_key(model, config))
    path.parent.mkdir(parents=True, exist_ok=True)
    for garbage in ('{"chosen": "fp32", "pass', '{"chosen": "nope", "passes": [], "measured": {}}', "[1, 2]"):
        path.write_text(garbage)
        ctx = PassContext(family=family, tokenizer=tok, calib=texts)
        with caplog.at_level(logging.WARNING):
            autolite.compress(copy.deepcopy(model), [copy.deepcopy(config)], tokenizer=tok, family=family, ctx=ctx)
        assert "corrupted" in caplog.text and any("[measured in" in note for note in ctx.notes)
        assert json.loads(path.read_text())["chosen"] == "fp32"
        caplog.clear()


def test_corrupted_peaks_are_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOLITE_CACHE", str(tmp_path))
    measured = []
    fake = lambda: measured.append(1) or dict(PEAKS)  # noqa: E731
    assert dense_search.machine_peaks(fake) == PEAKS and len(measured) == 1
    assert dense_search.machine_peaks(fake) == PEAKS and len(measured) == 1  # cached
    for path in (tmp_path / "peaks").glob("*.json"):
        path.write_text('{"gemm_gflops": -1, "int8_gemm_gops": "x"}')
    assert dense_search.machine_peaks(fake) == PEAKS and len(measured) == 2


def test_fast_dense_picks_ort_by_measurement_and_reloads(load_model, texts, tmp_path, fake_clock):
    fake_clock({"baseline": 10.0, "fp32": 10.0, "ort-int8": 3.0})
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, calib=texts)
    config = FastDense(batch=2, seq=16, runs=1, candidates=["fp32", "ort-int8"])
    chosen = autolite.compress(copy.deepcopy(model), [config], tokenizer=tok, family=family, ctx=ctx)
    assert is_onnxruntime(chosen)
    assert any("chose ort-int8" in note and "ort-int8: 3.333x" in note for note in ctx.notes)
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        before = chosen(**batch).logits
    autolite.save_model(chosen, tok, tmp_path / "fd")
    loaded, _, _ = autolite.load(tmp_path / "fd")
    assert is_onnxruntime(loaded)
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)


def test_fast_dense_skips_ort_for_a_decoder_and_says_why(load_model, texts, fake_clock):
    fake_clock({"baseline": 10.0, "fp32": 10.0, "ort-int8": 3.0})
    model, tok, family = load_model("tiny-llama")
    result = _measure(model, tok, family, texts, runs=1, candidates=["fp32", "ort-int8"])
    assert result["chosen"] == "fp32"
    assert "encoders only" in result["measured"]["ort-int8"]["skipped"]


def _compiled_candidates_hit_limit(model, family, tok, caplog, reset: bool, monkeypatch) -> bool:
    """Whether building and running compiled candidates in turn hits dynamo's recompile limit (whether they
    hit it without the reset depends on how the compile pass and torch guard parameters)."""
    if not reset:
        monkeypatch.setattr(dense_search, "fresh_compile_cache", lambda configs: None)
    torch._dynamo.reset()
    ctx = PassContext(family=family, tokenizer=tok)
    inputs = tok(["a short text", "another one"], return_tensors="pt", padding=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"), torch.no_grad():
        for _ in range(torch._dynamo.config.recompile_limit + 1):
            candidate = dense_search.build(model, [{"pass": "compile", "backend": "eager"}], ctx)
            candidate(**inputs)
    return "recompile_limit" in caplog.text or "cache_size_limit" in caplog.text


def test_compiled_candidates_do_not_hit_the_recompile_limit(load_model, caplog, monkeypatch):
    model, tok, family = load_model("tiny-bert")
    with torch._dynamo.config.patch(recompile_limit=1):  # same mechanism, fewer compiles
        assert not _compiled_candidates_hit_limit(model, family, tok, caplog, True, monkeypatch)
    torch._dynamo.reset()


def test_a_shape_a_backend_cannot_take_is_skipped_with_the_reason():
    def fails():
        raise RuntimeError("Got invalid dimensions for input: input_ids\nmore detail")
    race = dense_search.Race(lambda: None, runs=2)
    verdict = dense_search._timed("ort-int8", fails, race, 4, 1024)
    assert verdict["ok"] is False and verdict["skipped"].startswith("cannot run batch 4 x seq 1024: Got invalid")
    assert race.leader is None


def test_a_costly_baseline_is_timed_three_times_then_no_more(monkeypatch):
    """FP32 eager at a large batch costs seconds a call: past three samples it is sampled only while cheap."""
    times = {"baseline": 4700.0, "a": 1000.0, "b": 900.0, "c": 800.0, "d": 700.0}
    monkeypatch.setattr(dense_search, "time_once", lambda name, fn: times[name])
    monkeypatch.setattr(dense_search, "settle", lambda: None)
    race = dense_search.Race(lambda: None, runs=1, budget_s=90.0)
    race.baseline_ms.append(4700.0)  # the search's first sample
    for name in "abcd":
        race.run(name, lambda: None)
    assert len(race.baseline_ms) == 3 and race.leader == ("d", 700.0)
    cheap = dense_search.Race(lambda: None, runs=1, budget_s=90.0)
    times["baseline"] = 100.0
    for name in "abcd":
        cheap.run(name, lambda: None)
    assert len(cheap.baseline_ms) == 4  # 0.4 s of a 90 s budget: next to every candidate


def test_what_a_candidate_reached_before_on_this_machine_orders_the_next_search(load_model, texts, fake_clock):
    model, tok, family = load_model("tiny-bert")
    names = ["int8-dynamic", "ort-int8"]  # equal (INT8) floors: list order on a fresh machine
    calls = fake_clock({"baseline": 10.0, "int8-dynamic": 5.0, "ort-int8": 2.0})
    _measure(model, tok, family, texts, runs=1, candidates=names, budget_s=1e-6)
    assert "int8-dynamic" in calls and "ort-int8" not in calls  # the budget ended it after the first
    dense_search.Efficiency("small").update({"ort-int8": {"median_ms": 2.0}, "int8-dynamic": {"median_ms": 10.0}},
                                            {"ort-int8": 1.0, "int8-dynamic": 1.0})
    result = _measure(model, tok, family, texts, runs=1, candidates=names, budget_s=1e-6)
    assert result["chosen"] == "ort-int8"  # tried first now: it reached a larger share of its floor before
    assert "budget" in result["measured"]["int8-dynamic"]["skipped"]


def test_candidates_that_need_a_compile_are_tried_after_the_cheap_ones(load_model, texts, fake_clock):
    model, tok, family = load_model("tiny-bert")
    dense_search.Efficiency("small").update({"int8-dynamic+compile": {"median_ms": 1.0}},
                                            {"int8-dynamic+compile": 1.0})  # predicted fastest of all
    calls = fake_clock({"baseline": 10.0, "int8-dynamic": 5.0, "int8-dynamic+compile": 1.0})
    result = _measure(model, tok, family, texts, runs=1, candidates=["int8-dynamic+compile", "int8-dynamic"],
                      budget_s=1e-6)
    assert "int8-dynamic" in calls and "int8-dynamic+compile" not in calls  # the cheap build went first
    assert "budget" in result["measured"]["int8-dynamic+compile"]["skipped"]


def _clock(call_ms: list[float]):
    """A clock under which the n-th call of the warmed function takes ``call_ms[n]`` milliseconds."""
    ticks = iter([t for ms in call_ms for t in (0.0, ms / 1000.0)])
    return lambda: next(ticks)


def test_warm_up_goes_on_until_the_call_time_settles():
    calls = []
    # like OpenVINO at a new shape: the first call builds, the next few are still several times slower
    times = dense_search.warm_up(lambda: calls.append(1), clock=_clock([900, 300, 120, 100, 104, 100, 100, 100]))
    assert len(calls) == 5 and times == pytest.approx([900, 300, 120, 100, 104])


def test_warm_up_is_bounded_in_calls_and_time():
    falling = [1000.0 / (i + 1) for i in range(20)]  # never settles
    assert len(dense_search.warm_up(lambda: None, clock=_clock(falling))) == dense_search.WARMUP_MAX_CALLS
    slow = [50.0, dense_search.WARMUP_MAX_S * 1000.0 + 1, 4000.0, 3000.0]  # one call past the first is too long
    assert len(dense_search.warm_up(lambda: None, clock=_clock(slow))) == 2


def test_a_candidate_that_took_longer_than_the_budget_left_last_time_is_skipped(load_model, texts, fake_clock):
    model, tok, family = load_model("tiny-bert")
    fake_clock({"baseline": 10.0, "int8-dynamic": 5.0, "fp32": 4.0})
    gflop = dense_search.linear_gflop(model, 2 * 16)  # the size of _measure's run: costs are kept per size
    dense_search.Efficiency("small", gflop).update({"fp32": {"search_s": 500.0}}, {})  # slow to try here
    result = _measure(model, tok, family, texts, runs=1, candidates=["int8-dynamic", "fp32"], budget_s=60)
    assert "would be spent before it is done" in result["measured"]["fp32"]["skipped"]
    assert result["chosen"] == "int8-dynamic"
    assert dense_search.Efficiency("small", gflop).cost_s("int8-dynamic") > 0  # what it took is remembered
    assert dense_search.Efficiency("small", gflop * 64).cost_s("int8-dynamic") == 0  # not for a larger run
    assert "int8-dynamic" not in dense_search.Efficiency("small").data or \
        "small" not in dense_search.Efficiency("small").data["int8-dynamic"]  # a tiny floor teaches no share
