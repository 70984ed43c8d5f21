import json

import pytest


def assert_one_line_error(code, err, fragment):
    assert code != 0
    assert "Traceback" not in err
    text = " ".join(err.split())
    assert fragment in text, text


def test_help_lists_verbs(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for verb in ("info", "compress", "eval", "bench"):
        assert verb in out


def test_info_json(run_cli):
    code, out, _ = run_cli("info", "--json")
    data = json.loads(out)
    assert code == 0 and data["logical_cores"] >= 1 and "avx512f" in data["isa"]
    assert data["choice"]["float_dtype"] in ("fp32", "bf16", "fp16")


def test_bench_json_schema(tmp_path, run_cli):
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli("bench", "random:tiny-bert", "--recipe", "fp32", "--batch", "2",
                             "--seq", "16", "--runs", "5", "--warmup", "1", "--json", str(out_file))
    assert code == 0, err
    data = json.loads(out_file.read_text())
    for key in ("model", "batch", "seq", "speedup", "fidelity", "machine", "recipe"):
        assert key in data
    assert data["batch"] == 2 and data["seq"] == 16
    for side in ("baseline", "candidate"):
        timing = data[side]
        assert timing["runs"] == 5 and timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert data["speedup"] == pytest.approx(data["baseline"]["median_ms"] / data["candidate"]["median_ms"])
    assert data["fidelity"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert "cpu_model" in data["machine"]


def test_compress_writes_model_and_report(tmp_path, run_cli):
    out_dir = tmp_path / "out"
    code, out, err = run_cli("compress", "random:tiny-llama", "--recipe", "fp32",
                             "--out", str(out_dir), "--runs", "5", "--batch", "2", "--seq", "16")
    assert code == 0, err
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "report.md").is_file()
    assert "speed-up" in (out_dir / "report.md").read_text()
    code, out, err = run_cli("eval", str(out_dir), "--max-texts", "4")
    assert code == 0, err
    assert "perplexity_rel_change" in out


@pytest.mark.parametrize("args,fragment", [
    (("eval", "/no/such/dir"), "no model at"),
    (("bench", "random:nope"), "unknown random preset"),
    (("bench", "random:tiny-bert", "--recipe", "nope"), "unknown recipe 'nope'"),
    (("bench", "random:tiny-bert", "--runs", "2"), "greater than or equal to 5"),
])
def test_bad_input_is_one_line(args, fragment, run_cli):
    code, _, err = run_cli(*args)
    assert_one_line_error(code, err, fragment)


def test_bad_data_files_via_cli(tmp_path, run_cli):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    code, _, err = run_cli("eval", "random:tiny-bert", "--data", str(empty))
    assert_one_line_error(code, err, "holds no text")
    no_text = tmp_path / "x.csv"
    no_text.write_text("sentence\nhello\n")
    out_dir = tmp_path / "out"
    code, _, err = run_cli("compress", "random:tiny-bert", "--data", str(no_text),
                           "--out", str(out_dir))
    assert_one_line_error(code, err, "needs a 'text' column")
    assert not out_dir.exists()


def test_corrupt_model_dir_via_cli(tmp_path, load_model, run_cli):
    model, tok, _ = load_model("tiny-bert")
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = run_cli("eval", str(tmp_path))
    assert_one_line_error(code, err, "corrupt or truncated")


def test_existing_out_dir_is_not_touched(tmp_path, run_cli):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli("compress", "random:tiny-bert", "--out", str(tmp_path))
    assert_one_line_error(code, err, "already exists")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_cuda_request_without_gpu_is_clear(run_cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    code, _, err = run_cli("bench", "random:tiny-bert", "--device", "cuda")
    assert_one_line_error(code, err, "no CUDA GPU")


def test_bench_roofline_reports_layer_kinds(tmp_path, run_cli):
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli("bench", "random:tiny-bert", "--recipe", "fp32", "--batch", "2",
                             "--seq", "16", "--runs", "5", "--warmup", "1", "--roofline", "--json", str(out_file))
    assert code == 0, err
    roofline = json.loads(out_file.read_text())["roofline"]
    assert roofline["peaks"]["gemm_gflops"] > 0 and roofline["peaks"]["bandwidth_gbs"] > 0
    assert len(roofline["rows"]) >= 2 and "roofline" in out


def test_cache_shows_trims_and_clears_the_build_cache(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("AUTOLITE_CACHE", str(tmp_path))
    for name, size in (("a.onnx", 3000), ("b.onnx", 2000)):
        (tmp_path / "onnxruntime").mkdir(exist_ok=True)
        (tmp_path / "onnxruntime" / name).write_bytes(b"x" * size)
    code, out, err = run_cli("cache")
    assert code == 0, err
    assert "onnxruntime" in out and "2" in out
    monkeypatch.setenv("AUTOLITE_CACHE_MAX_GB", "0.000004")
    code, out, err = run_cli("cache", "--trim")
    assert code == 0 and "evicted 1 entries" in out, err
    code, out, err = run_cli("cache", "--clear")
    assert code == 0 and not (tmp_path / "onnxruntime").exists(), err
    monkeypatch.setenv("AUTOLITE_CACHE_MAX_GB", "much")
    code, out, err = run_cli("cache")
    assert_one_line_error(code, err, "AUTOLITE_CACHE_MAX_GB='much' is not a size in GB")
