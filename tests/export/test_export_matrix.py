import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compat_matrix.py"


def test_compat_matrix_script_renders_cells(tmp_path):
    spec = importlib.util.spec_from_file_location("compat_matrix", SCRIPT)
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    out = tmp_path / "COMPAT.md"
    code = matrix.main(["--families", "tiny-gpt2", "--columns", "hf fp32,st fp32", "--max-texts", "2",
                        "--out", str(out)])
    text = out.read_text()
    assert code == 0 and "| hf fp32 | ✓ L2 0e+00 |" in text and "| st fp32 | — n/s |" in text
    assert "**tiny-gpt2 / st fp32** (unsupported): format 'st' (sentence-transformers) takes encoder" in text
