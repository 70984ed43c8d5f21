"""Property-based test of the CLI surface (Hypothesis): generated invocations of every verb this package owns, with
in-range, out-of-range and unparsable option values, never end in an internal error, a traceback or a leftover
temporary; an out-of-range value is always a usage mistake (exit 2) and an in-range one never is.

The default-suite part stops each invocation where the real work would begin (loading the model, binding a
server, sending load), so it checks validation only and runs in seconds. The ``slow`` sweep runs the same
invocations for real on tiny random models (a few hundred of them).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autolite.errors import AutoliteError

MODELS = st.sampled_from(["random:tiny-bert", "random:tiny-llama", "random:tiny-gpt2", "random:tiny-t5"])
GARBAGE = st.sampled_from(["abc", "", "1e", "--", "0x10", "½"])


def ints(low: int | None, high: int | None = None, *, cap: int = 10_000):
    """(valid, invalid) strategies for an integer option with range [low, high]."""
    valid = st.integers(low if low is not None else -cap, high if high is not None else cap)
    invalid = []
    if low is not None:
        invalid.append(st.integers(-cap, low - 1))
    if high is not None:
        invalid.append(st.integers(high + 1, high + cap))
    return valid, st.one_of(*invalid).map(str) | GARBAGE if invalid else GARBAGE


def floats(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False):
    """(valid, invalid) strategies for a finite float option in [low, high] (ends open when asked)."""
    valid = st.floats(low, high if high is not None else 1e6, exclude_min=open_low, exclude_max=open_high,
                      allow_nan=False)
    below = st.floats(max_value=low, exclude_max=not open_low, allow_nan=False, allow_infinity=False,
                      min_value=-1e6)
    invalid = [below, st.sampled_from([math.nan, -math.inf])]
    if high is not None:
        invalid.append(st.floats(min_value=high, exclude_min=not open_high, max_value=high + 1e6))
    return valid.map(repr), st.one_of(*invalid).map(repr) | GARBAGE


def small(valid_high: int):
    """Valid values kept small so that the real (slow) runs stay quick."""
    return ints(1, valid_high)[0], ints(1)[1]


# verb -> (fixed arguments, {option: (valid strategy, invalid strategy)}); a value of None = a flag
SPECS = {
    "compress": (["--out", "{out}", "--no-bench"], {
        "--recipe": (st.sampled_from(["fp32", "int8-dynamic", "w8", "nope"]), None),
        "--batch": small(2), "--seq": (st.integers(2, 16), ints(2)[1]), "--runs": (st.integers(5, 6), ints(5)[1]),
        "--force": None}),
    "bench": (["--runs", "5", "--warmup", "0"], {
        "--recipe": (st.sampled_from(["fp32", "int8-dynamic"]), None),
        "--batch": small(2), "--seq": (st.sampled_from([2, 8, 16, 100000]), ints(2)[1]),
        "--threads": small(2), "--device": (st.sampled_from(["cpu", "tpu"]), None),
        "--json": (st.just("{out}.json"), None)}),
    "eval": (["--max-texts", "4"], {
        "--max-texts": small(4), "--max-length": (st.integers(2, 64), ints(2)[1]),
        "--reference": (st.sampled_from(["random:tiny-bert", "random:tiny-llama"]), None),
        "--json": (st.just("{out}.json"), None)}),
    "export": (["--out", "{out}", "--max-texts", "2"], {
        "--format": (st.sampled_from(["hf", "st"]), st.just("xyz")),  # onnx: its own tests (slow to export)
        "--max-texts": small(4), "--bits": ints(4, 8), "--group-size": ints(32, 64),
        "--no-validate": None, "--force": None}),
    "prune": (["--out", "{out}", "--importance", "magnitude"], {
        "--heads": floats(0, 1, open_high=True), "--ffn": floats(0, 1, open_high=True),
        "--importance": (st.sampled_from(["magnitude", "l2", "nope"]), None),
        "--round-to": small(8), "--recover-lr": floats(0, 1, open_low=True)}),
    "serve": ([], {
        "--port": ints(0, 65535), "--max-batch-size": ints(1), "--max-wait-ms": floats(0),
        "--workers": small(2), "--timeout": floats(0, open_low=True), "--max-texts": ints(1)}),
    "loadtest": (["http://127.0.0.1:9"], {
        "--concurrency": ints(1), "--requests": ints(1), "--duration": floats(0, open_low=True),
        "--warmup": ints(0), "--max-words": ints(1)}),
    "sensitivity": (["--out", "{out}", "--bits", "8,4", "--no-gradient", "--no-measure", "--output", "--texts", "2"], {
        "--group-size": (st.sampled_from([16, 32]), ints(1)[1]), "--texts": small(2),
        "--max-length": (st.integers(2, 16), ints(2)[1]), "--budget": floats(0, 16, open_low=True)}),
}


@st.composite
def invocations(draw, verb_names=tuple(SPECS)):
    """(argv, expect_usage_error) for one verb with a random subset of its options."""
    verb = draw(st.sampled_from(verb_names))
    fixed, options = SPECS[verb]
    args = [verb] + ([draw(MODELS)] if verb != "loadtest" else []) + list(fixed)
    usage_error = False
    for name in draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=4)):
        strategies = options[name]
        if strategies is None:
            args.append(name)
            continue
        valid, invalid = strategies
        if invalid is not None and draw(st.booleans()):
            args += [name, str(draw(invalid))]
            usage_error = True
        else:
            args += [name, str(draw(valid))]
    if verb == "export" and "--bits" in args and "mlx" not in args:
        usage_error = True  # --bits belongs to --format mlx: a usage mistake whatever its value
    return args, usage_error


class ReachedWork(AutoliteError):
    """Raised where the real work would begin (validation-only runs)."""


def _stop_at_work():
    def stop(*_, **__):
        raise ReachedWork("reached work")
    stack = contextlib.ExitStack()
    for target in ("autolite.load", "autolite.eval.compare.bench_model", "autolite.serve.server.load_engine",
                   "autolite.serve.loadgen.run_load", "autolite.cli.loadtest._check_listening"):
        stack.enter_context(mock.patch(target, stop))
    return stack


def invoke(args: list[str], workdir: Path) -> tuple[int, str]:
    """Run ``autolite ARGS`` in-process inside ``workdir``; (exit status, stdout + stderr)."""
    from autolite.cli import run

    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = run([a.replace("{out}", "out") for a in args])
    finally:
        os.chdir(cwd)
    return status, out.getvalue()


def check(args: list[str], usage_error: bool, validation_only: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        status, text = invoke(args, Path(tmp))
        leftovers = [p.name for p in Path(tmp).iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert "Traceback" not in text and "internal error" not in text, (args, text)
    assert not leftovers, (args, leftovers)
    if usage_error:
        assert status == 2, (args, status, text)
    else:
        assert status in ((1,) if validation_only and "reached work" in text else (0, 1)), (args, status, text)
    return status


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(invocations())
def test_cli_validation_never_crashes(invocation):
    args, usage_error = invocation
    with _stop_at_work():
        check(args, usage_error, validation_only=True)


SWEEP = {"count": 0, "codes": {}}
SWEEP_EXAMPLES = int(os.environ.get("AUTOLITE_SWEEP_EXAMPLES", "300"))


@pytest.mark.slow
@pytest.mark.timeout(7200)
@settings(max_examples=SWEEP_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(invocations())
def test_cli_sweep_on_tiny_models(invocation):
    """The same invocations run for real on tiny models (serve binds its port, then stops before loading the
    engine and serving; loadtest targets a closed port)."""
    args, usage_error = invocation
    engine = mock.patch("autolite.serve.server.load_engine", side_effect=ReachedWork("reached work"))
    with engine:
        status = check(args, usage_error, validation_only=False)
    SWEEP["count"] += 1
    SWEEP["codes"][status] = SWEEP["codes"].get(status, 0) + 1
    if SWEEP["count"] % 25 == 0:
        print(f"sweep: {SWEEP['count']} invocations, exit statuses {SWEEP['codes']}", flush=True)
