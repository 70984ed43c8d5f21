import json

import pytest


def test_cli_export_hf_prints_differences(tmp_path, run_cli):
    out = tmp_path / "hf"
    code, text, err = run_cli("export", "random:tiny-llama", "--format", "hf", "--out", str(out),
                              "--max-texts", "4")
    assert code == 0, err
    assert "relative L2" in text and "max abs difference" in text and "cosine" in text
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 10000.0


def test_cli_export_errors_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("export", "random:tiny-bert", "--format", "onnx", "--bits", "4",
                           "--out", str(tmp_path / "x"))
    assert code == 2 and "--bits/--group-size apply to --format mlx only" in err and "Traceback" not in err
    code, _, err = run_cli("export", "random:tiny-bert", "--format", "tflite",
                           "--out", str(tmp_path / "x"))
    assert code == 2 and "supported: hf, st, onnx, mlx" in err
    (tmp_path / "exists").mkdir()
    code, _, err = run_cli("export", "random:tiny-bert", "--out", str(tmp_path / "exists"))
    assert code == 1 and "already exists" in err


def test_cli_no_validate(tmp_path, run_cli):
    pytest.importorskip("mlx.core", reason="mlx is not installed")
    code, text, err = run_cli("export", "random:tiny-bert", "--format", "mlx", "--bits", "8",
                              "--out", str(tmp_path / "m"), "--no-validate")
    assert code == 0, err
    assert "skipped (--no-validate)" in text and (tmp_path / "m" / "model.safetensors").is_file()
