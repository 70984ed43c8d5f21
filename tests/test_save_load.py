import pytest
import torch

import autolite
from autolite.errors import AutoliteError
from autolite.io import atomic_dir
from autolite.runtime.compile import Compile, is_compiled
from autolite.runtime.precision import Precision


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-llama", "tiny-t5"])
def test_compressed_model_reloads_identically(tmp_path, load_model, texts, preset):
    model, tok, family = load_model(preset)
    small = autolite.compress(model, [Precision(dtype="bf16", on_unsupported="emulate"),
                                      Compile(backend="eager")])
    autolite.save_model(small, tok, tmp_path / "out")
    again, _, _ = autolite.load(str(tmp_path / "out"))
    assert is_compiled(again) and next(again.parameters()).dtype == torch.bfloat16
    a = autolite.evaluate(small, tok, data=texts)
    b = autolite.evaluate(again, tok, reference=small, data=texts)
    if "cosine" in b:
        assert b["cosine"] == pytest.approx(1.0, abs=1e-6)
    if "perplexity" in a:
        assert b["perplexity"] == pytest.approx(a["perplexity"], rel=1e-6)


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_existing(tmp_path):
    with pytest.raises(AutoliteError, match="already exists"):
        with atomic_dir(tmp_path):
            pass


def test_save_model_refuses_a_non_model_before_writing(tmp_path):
    from autolite.errors import ArgumentError

    with pytest.raises(ArgumentError, match="save_model\\(\\) needs an HF model"):
        autolite.save_model(None, None, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_saved_files_are_readable_by_others_and_api_refuses_the_cwd(tmp_path, monkeypatch):
    from autolite.paths import OutputPathError

    model, tok, _ = autolite.load("random:tiny-bert")
    out = autolite.save_model(model, tok, tmp_path / "out")
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in out.rglob("*") if p.is_file())  # not 0600
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputPathError, match="current directory"):
        autolite.save_model(model, tok, ".", overwrite=True)
