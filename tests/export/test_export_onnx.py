import json

import numpy as np
import pytest
import torch

import autolite
from autolite.export import UnsupportedExportError
from autolite.export.onnx import session


@pytest.mark.parametrize("preset", ["tiny-t5", "tiny-gpt2", "tiny-llama"])  # BERT: the int8 test below
def test_onnx_fp32_matches_torch_with_dynamic_axes(tmp_path, load_model, fast_texts, preset):
    model, tok, family = load_model(preset)
    result = autolite.export(model, tok, tmp_path / "onnx", format="onnx", max_texts=fast_texts)
    assert result.validation.rel_l2 < 1e-4
    sess = session(tmp_path / "onnx" / "model.onnx")
    for tensor in sess.get_inputs():  # batch and sequence are symbolic
        assert tensor.shape[:2] == ["batch", "sequence"]
    ids = np.full((3, 7), 1000, dtype=np.int64)  # a shape never traced
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if family.kind == "seq2seq":
        feeds["decoder_input_ids"] = np.zeros_like(ids)
    assert sess.run(None, feeds)[0].shape[:2] == (3, 7)
    meta = json.loads((tmp_path / "onnx" / "onnx_export.json").read_text())
    assert meta["precision"] == "fp32" and meta["validation"]["passed"]


def test_onnx_int8_optimized_bert(tmp_path, load_model, fast_texts):
    model, tok, _ = load_model("tiny-bert")
    result = autolite.export(model, tok, tmp_path / "onnx", format="onnx", precision="int8", optimize=True,
                             max_texts=fast_texts)
    assert "Attention" in result.notes[0]  # ORT fused the attention
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "onnx" / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops and "Attention" in ops
    assert result.validation.passed and result.validation.cosine > 0.99
    assert 1e-4 < result.validation.rel_l2 < 0.1  # really quantized, still close


def test_onnx_int8_decoder_meets_torch_int8(tmp_path, load_model, fast_texts):
    model, tok, _ = load_model("tiny-llama")
    result = autolite.export(model, tok, tmp_path / "onnx", format="onnx", precision="int8", max_texts=3)
    torch_cos = float(result.notes[-1].rsplit(" ", 1)[-1])
    assert result.validation.cosine >= torch_cos - 0.001


def test_onnx_rejects_unsupported_precision_and_dtype(tmp_path, load_model):
    model, tok, _ = load_model("tiny-bert")
    with pytest.raises(UnsupportedExportError, match="supports precision fp32 or int8"):
        autolite.export(model, tok, tmp_path / "a", format="onnx", precision="int4")
    with pytest.raises(UnsupportedExportError, match="takes an FP32 model"):
        autolite.export(model.to(torch.bfloat16), tok, tmp_path / "b", format="onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("skip_layers, fused", [([], True), ([0], False)])
def test_onnx_int8_head_pruned_bert(tmp_path, load_model, fast_texts, skip_layers, fused):
    """A head-pruned BERT keeps its config's head count: the fusion must use the pruned one (or skip)."""
    from autolite.prune import PruneHeads

    model, tok, family = load_model("tiny-bert")
    pruned = autolite.compress(model, [PruneHeads(ratio=0.5, importance="magnitude", skip_layers=skip_layers)],
                               tokenizer=tok, family=family)
    result = autolite.export(pruned, tok, tmp_path / "onnx", format="onnx", precision="int8", optimize=True,
                             max_texts=fast_texts)
    assert ("Attention" in result.notes[0]) is fused
    assert ("attention not fused" in result.notes[0]) is not fused
    assert result.validation.passed and result.validation.cosine > 0.99
