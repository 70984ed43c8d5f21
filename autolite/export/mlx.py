"""MLX export: encoders through autolite's own MLX BERT (``mlx_bert``), decoders in the layout mlx-lm loads.

Optional group-wise quantization uses MLX's own affine quantizer (``bits`` 4 or 8, ``group_size`` 32 or
64; per group a scale and bias), the format ``mx.quantized_matmul`` runs. Validation runs the export in
MLX (CPU here) against the torch model: FP32 needs cosine >= 0.999 and rel L2 < 1e-3; a quantized export
must reproduce its torch twin (same weights through ``mx.quantize``) within rel L2 1e-3, and keep cosine
vs FP32 >= the twin's - 0.001.

A decoder holding autolite's weight-only INT4/INT8 layers (RTN or GPTQ) is exported as it is, not
re-quantized: MLX's affine ``w = scales * q + biases`` holds ``scale * (q - zero)`` exactly
(:mod:`autolite.export.mlx_quant`); validation: rel L2 < 1e-3 against the model's own dequantized weights.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from autolite.arch.base import base_model
from autolite.errors import BackendUnavailableError
from autolite.export.common import (ExportResult, UnsupportedExportError, add_top_level_rope_theta, require_plain)
from autolite.arch import family_of
from autolite.eval.forward import mean_pool
from autolite.export.hf import write_model_files
from autolite.export.mlx_quant import dequantized_twin, packed_modules, mlx_arrays, quantized_twin
from autolite.export.validate import Tolerance, Validation, torch_outputs, validate, validate_quantized
from autolite.io import atomic_dir

log = logging.getLogger(__name__)
BITS = (4, 8)
GROUP_SIZES = (32, 64)
FP32_TOLERANCE = Tolerance(max_rel_l2=1e-3, min_cosine=0.999)
DEFAULT_TEXTS = 16  # MLX's CPU matmul runs ~1 GFLOP/s on Linux x86: validate on 16 texts unless told
_DISTILBERT_NAMES = [("transformer.layer.", "encoder.layer."), ("attention.q_lin", "attention.self.query"),
                     ("attention.k_lin", "attention.self.key"), ("attention.v_lin", "attention.self.value"),
                     ("attention.out_lin", "attention.output.dense"), ("sa_layer_norm", "attention.output.LayerNorm"),
                     ("ffn.lin1", "intermediate.dense"), ("ffn.lin2", "output.dense"),
                     ("output_layer_norm", "output.LayerNorm")]


def require_mlx() -> None:
    """Raise a clear error when MLX (or mlx-lm) is not importable here."""
    if importlib.util.find_spec("mlx") is None or importlib.util.find_spec("mlx_lm") is None:
        raise BackendUnavailableError("MLX export needs the 'mlx' package: pip install 'mlx[cpu]' mlx-lm "
                                      "(Linux x86-64 CPU wheels, or macOS on Apple silicon)")


def export_mlx(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, bits: int | None = None,
               group_size: int = 64, validate: bool = True, family: Any = None, overwrite: bool = False,
               max_texts: int | None = None) -> ExportResult:
    """Export to MLX (quantized when ``bits`` is given) and validate the export in MLX."""
    family = family or family_of(model)
    twin = _check(model, family, bits, group_size)
    require_mlx()
    out_dir = Path(out_dir)
    precision = f"q{bits}-g{group_size}" if bits else _packed_label(model) if twin is not None else "fp32"
    result = ExportResult(path=out_dir, format="mlx", precision=precision)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        if family.kind == "encoder":
            _write_encoder(model, tokenizer, family, tmp, bits, group_size, result.notes)
        elif twin is not None:
            _write_decoder(twin, tokenizer, tmp, None, group_size, packed=model)
            result.notes.append("autolite's INT4/INT8 weights exported as they are: MLX affine groups with "
                                "scales = scale and biases = -scale * zero (INT8: codes + 128, biases = -128 * "
                                "scale); no re-quantization")
        else:
            _write_decoder(model, tokenizer, tmp, bits, group_size)
            if bits:
                result.notes.append(f"MLX affine {bits}-bit, group {group_size} (mlx-lm quantize_model): Linear "
                                    "layers and embeddings")
        if validate:
            max_texts = DEFAULT_TEXTS if max_texts is None else max_texts
            run = _runner(tmp, family)
            with _right_padding(tokenizer):
                result.validation = validate_mlx(run, twin if twin is not None else model, tokenizer, family,
                                                 precision, max_texts, bits, group_size, packed=twin is not None)
    return result


def _check(model: torch.nn.Module, family: Any, bits: int | None, group_size: int) -> torch.nn.Module | None:
    """Raise for what MLX cannot take; for a model with autolite's packed layers, its dequantized twin."""
    if bits is not None and bits not in BITS or group_size not in GROUP_SIZES:
        raise UnsupportedExportError(f"MLX export supports bits {' or '.join(map(str, BITS))} with group size "
                                     f"{' or '.join(map(str, GROUP_SIZES))} (MLX affine group-wise), or no bits "
                                     f"for float; got bits={bits}, group_size={group_size}")
    if family.kind == "seq2seq":
        raise UnsupportedExportError(f"MLX export takes encoders (BERT family) and decoders mlx-lm supports; "
                                     f"{family.name} (seq2seq) is not supported: use 'hf' or 'onnx'")
    if family.kind == "decoder" and not _mlx_lm_supports(model.config.model_type):
        raise UnsupportedExportError(f"mlx-lm has no model for model_type '{model.config.model_type}'; "
                                     "MLX export supports BERT-family encoders and mlx-lm's decoders")
    if packed_modules(model):
        if family.kind != "decoder" or bits is not None:
            raise UnsupportedExportError("MLX export writes autolite's INT4/INT8 weights as they are for decoders "
                                         "only, without bits (they are quantized already); got "
                                         f"{family.kind}, bits={bits}")
        twin = dequantized_twin(model)
        require_plain(twin, "mlx", "float, pruned and weight-only INT4/INT8 models")
        return twin
    require_plain(model, "mlx", "float, pruned and weight-only INT4/INT8 models (or quantize on the way out "
                  "with bits 4|8)")
    return None


def _packed_label(model: torch.nn.Module) -> str:
    """E.g. ``autolite-w4g32+w8`` for the packed layers a model holds."""
    kinds = sorted({f"w{q['bits']}" + (f"g{q['group_size']}" if q["bits"] == 4 else "")
                    for q in (mlx_arrays(m)[1] for m in packed_modules(model).values())})
    return "autolite-" + "+".join(kinds)


def _mlx_lm_supports(model_type: str) -> bool:
    if importlib.util.find_spec("mlx_lm") is None:
        return True  # require_mlx / the writer reports the missing package
    from mlx_lm.utils import MODEL_REMAPPING

    return importlib.util.find_spec(f"mlx_lm.models.{MODEL_REMAPPING.get(model_type, model_type)}") is not None


def encoder_args(model: torch.nn.Module, family: Any) -> dict[str, Any]:
    """The ``mlx_bert.BertArgs`` of a BERT-family model; heads and head size come from the weights, so
    uniformly head-pruned models (fewer heads, same head size) export too."""
    config = model.config
    attention = family.layers(model)[0].attention
    head_dim = attention.head_dim
    heads = attention.q.weight.shape[0] // head_dim
    if family.name == "distilbert":
        return dict(vocab_size=config.vocab_size, hidden_size=config.dim, num_hidden_layers=config.n_layers,
                    num_attention_heads=heads, head_dim=head_dim, intermediate_size=config.hidden_dim,
                    max_position_embeddings=config.max_position_embeddings, type_vocab_size=0,
                    hidden_act=config.activation, pad_token_id=config.pad_token_id or 0)
    roberta = config.model_type in ("roberta", "xlm-roberta", "camembert")
    return dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                num_hidden_layers=config.num_hidden_layers, num_attention_heads=heads, head_dim=head_dim,
                intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
                type_vocab_size=config.type_vocab_size, layer_norm_eps=config.layer_norm_eps,
                hidden_act=config.hidden_act, roberta_positions=roberta, pad_token_id=config.pad_token_id or 0)


def _encoder_state(model: torch.nn.Module, family: Any) -> dict[str, np.ndarray]:
    state = {}
    for name, tensor in base_model(model).state_dict().items():
        if family.name == "distilbert":
            for old, new in _DISTILBERT_NAMES:
                name = name.replace(old, new)
        state[name] = tensor.detach().float().cpu().numpy()
    return state


def _write_encoder(model, tokenizer, family, directory: Path, bits, group_size, notes: list[str]) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from autolite.export import mlx_bert  # lazy: mlx_bert imports mlx, an optional dependency (export extra)

    config = model.config.to_dict()
    config["mlx_bert"] = encoder_args(model, family)
    mlx_model = mlx_bert.build({"mlx_bert": config["mlx_bert"]})
    state = _encoder_state(model, family)
    wanted = [name for name, _ in tree_flatten(mlx_model.parameters())]
    missing = [name for name in wanted if name not in state]
    if missing:
        raise UnsupportedExportError(f"MLX BERT found no weight for {missing[:3]}; per-layer head counts or an "
                                     "unusual layout are not supported by the MLX encoder export")
    try:
        mlx_model.load_weights([(name, mx.array(state[name])) for name in wanted])
    except ValueError as exc:
        raise UnsupportedExportError(f"MLX BERT cannot take these weights ({exc}); layers with differing "
                                     "shapes (non-uniform pruning) are not supported by the MLX export") from exc
    if bits:
        nn.quantize(mlx_model, group_size=group_size, bits=bits, class_predicate=mlx_bert.quantizable(group_size))
        config["quantization"] = {"group_size": group_size, "bits": bits}
        notes.append(f"MLX affine {bits}-bit, group {group_size}: Linear layers (embeddings stay float)")
    notes.append("encoder body only: the task head and pooler are not exported (load with autolite.export.mlx_bert)")
    mx.save_safetensors(str(directory / "model.safetensors"), dict(tree_flatten(mlx_model.parameters())),
                        metadata={"format": "mlx"})
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tokenizer.save_pretrained(str(directory))


def _write_decoder(model, tokenizer, directory: Path, bits, group_size, packed=None) -> None:
    """Write an HF dir (with top-level rope_theta), load it with mlx-lm, quantize (RTN with ``bits``, or
    ``packed``'s own INT4/INT8 weights into the float ``model`` = its twin), save mlx-lm's layout."""
    from mlx_lm.utils import load, quantize_model, save

    with tempfile.TemporaryDirectory(prefix="autolite-mlx-") as src:
        # mlx-lm's GPT-2 reads the hub checkpoint's names (h.0..., no "transformer." prefix): save the base
        write_model_files(base_model(model) if model.config.model_type == "gpt2" else model, tokenizer, Path(src))
        add_top_level_rope_theta(Path(src), model.config)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # mlx-lm prints its progress
                mlx_model, mlx_tok, config = load(src, return_config=True, lazy=True)
                if bits:
                    mlx_model, config = quantize_model(mlx_model, config, group_size, bits)
                elif packed is not None:
                    config["quantization"] = _load_packed(mlx_model, packed)
                    config["quantization_config"] = config["quantization"]
                save(str(directory), src, mlx_model, mlx_tok, config)
        except (ValueError, TypeError, KeyError) as exc:  # what mlx-lm raises for configs/shapes it can't take
            raise UnsupportedExportError(
                f"mlx-lm's {model.config.model_type} model cannot take these weights ({str(exc).splitlines()[0]}); "
                "mlx-lm derives some shapes from config.json (e.g. head size = hidden / heads for qwen2 and "
                "gpt2), so head-pruned models of this type or layers of differing shapes do not fit: "
                "export 'hf' or 'onnx' instead") from exc
        log.info("mlx-lm: %s", printed.getvalue().strip())
    add_top_level_rope_theta(directory, model.config)


def _load_packed(mlx_model: Any, packed: torch.nn.Module) -> dict[str, Any]:
    """Turn the mlx-lm model's matching layers into MLX quantized ones holding ``packed``'s exact codes,
    scales and biases; returns the config's ``quantization`` (a per-layer entry for each)."""
    import mlx.core as mx
    import mlx.nn as nn

    gpt2 = packed.config.model_type == "gpt2"  # mlx-lm's GPT-2 names the body "model", not "transformer"
    layers = {("model" + name[len("transformer"):] if gpt2 else name): mlx_arrays(m)
              for name, m in packed_modules(packed).items()}
    missing = sorted(set(layers) - {name for name, _ in mlx_model.named_modules()})
    if missing:
        raise UnsupportedExportError(f"mlx-lm's {packed.config.model_type} model has no layer {missing[0]} for "
                                     "autolite's packed weights")
    nn.quantize(mlx_model, class_predicate=lambda path, _: layers[path][1] if path in layers else False)
    mlx_model.load_weights([(f"{path}.{key}", mx.array(value)) for path, (arrays, _) in layers.items()
                            for key, value in arrays.items()], strict=False)
    first = next(iter(layers.values()))[1]
    return {**first, "mode": "affine", **{path: params for path, (_, params) in layers.items()}}


def _runner(directory: Path, family: Any):
    """``batch -> outputs`` of the export, run in MLX."""
    import mlx.core as mx

    def to_torch(array) -> torch.Tensor:
        return torch.from_numpy(np.array(array.astype(mx.float32)))

    if family.kind == "encoder":
        from autolite.export import mlx_bert  # lazy: mlx_bert imports mlx, an optional dependency (export extra)

        model, _ = mlx_bert.load(directory)

        def run(batch):
            mask = batch["attention_mask"]
            hidden = to_torch(model(mx.array(batch["input_ids"].numpy()), mx.array(mask.numpy())))
            return {"embedding": mean_pool(hidden, mask), "last_hidden_state": hidden}
        return run
    from mlx_lm.utils import load

    model, _ = load(str(directory))
    return lambda batch: {"logits": to_torch(model(mx.array(batch["input_ids"].numpy())))}


def compare_with_model(directory: str | Path, model: torch.nn.Module, tokenizer: Any, *,
                       tolerance: Tolerance | None = None, max_texts: int | None = DEFAULT_TEXTS) -> Validation:
    """Run a written MLX decoder export and ``model`` (any torch decoder, e.g. autolite's INT4 model on its own
    kernels) on the held-out texts; their logits' difference (raises ``NumericsError`` beyond ``tolerance``)."""
    require_mlx()
    family = family_of(model)
    run = _runner(Path(directory), family)
    with _right_padding(tokenizer):
        return validate(run, lambda batch: {"logits": torch_outputs(model, family, batch)["logits"]}, tokenizer,
                        tolerance or Tolerance(), what="mlx", against=f"{type(model).__name__} in torch",
                        max_texts=max_texts)


def validate_mlx(run, model, tokenizer, family, precision: str, max_texts, bits=None, group_size=64, packed=False):
    """Compare the MLX export with the torch model (encoders: mean-pooled embedding first); a quantized
    export is also compared with its torch twin (:mod:`autolite.export.mlx_quant`); an export of autolite's
    own INT4/INT8 weights (``packed``; ``model`` is then their FP32 dequantized twin) must match it."""
    def outputs_of(torch_model):
        def reference(batch):
            out = torch_outputs(torch_model, family, batch)
            if family.kind != "encoder":
                return {"logits": out["logits"]}
            hidden = out["last_hidden_state"].float()
            return {"embedding": mean_pool(hidden, batch["attention_mask"]), "last_hidden_state": hidden}
        return reference

    if packed:
        return validate(run, outputs_of(model), tokenizer, Tolerance(max_rel_l2=1e-3), what=f"mlx {precision}",
                        against="autolite's INT4/INT8 model (its dequantized weights, FP32 torch)",
                        max_texts=max_texts)
    if not bits:
        return validate(run, outputs_of(model), tokenizer, FP32_TOLERANCE, what=f"mlx {precision}",
                        max_texts=max_texts)
    twin = quantized_twin(model, bits, group_size, embeddings=family.kind == "decoder")
    return validate_quantized(run, outputs_of(twin), outputs_of(model), tokenizer, what=f"mlx {precision}",
                              max_texts=max_texts)


@contextlib.contextmanager
def _right_padding(tokenizer: Any) -> Iterator[None]:
    """MLX runs without a mask for decoders: pad on the right so causal attention never sees padding."""
    before = getattr(tokenizer, "padding_side", "right")
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = before
