import json

import pytest
import torch

import autolite
from autolite.export import UnsupportedExportError
from autolite.loading import minilm_dir


def test_st_default_modules_load_in_sentence_transformers(tmp_path, load_model, fast_texts):
    model, tok, _ = load_model("tiny-bert")
    before = model.config.architectures
    out = tmp_path / "st"
    result = autolite.export(model, tok, out, format="st", max_texts=fast_texts)
    assert result.validation.cosine >= 0.99999 and result.validation.rel_l2 < 1e-4
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 64
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert model.config.architectures == before  # the source model's config is untouched


def test_st_copies_source_modules_with_normalize(tmp_path, load_model, pruned, fast_texts):
    model, tok, family = load_model("tiny-distilbert")
    pruned(model, family, keep=96)
    out = tmp_path / "st"
    result = autolite.export(model, tok, out, format="st", source_dir=minilm_dir(), max_texts=fast_texts)
    assert result.validation.cosine >= 0.99999
    assert (out / "config_sentence_transformers.json").is_file()  # copied from the source
    types = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert types[-1].endswith("Normalize")
    from sentence_transformers import SentenceTransformer

    emb = SentenceTransformer(str(out), device="cpu", local_files_only=True).encode(["hello"], convert_to_tensor=True)
    assert torch.linalg.norm(emb, dim=-1).item() == pytest.approx(1.0, abs=1e-5)


def test_st_rejects_decoders(tmp_path, load_model):
    model, tok, _ = load_model("tiny-gpt2")
    with pytest.raises(UnsupportedExportError, match="takes encoder models"):
        autolite.export(model, tok, tmp_path / "st", format="st")
    assert not (tmp_path / "st").exists()


@pytest.mark.slow
def test_st_minilm_matches_autolite(tmp_path):
    model, tok, _ = autolite.load("minilm")
    result = autolite.export(model, tok, tmp_path / "st", format="st")
    assert result.validation.texts == 92 and result.validation.cosine >= 0.99999
    assert "source model" in result.notes[0] and "normalized" in result.notes[0]
