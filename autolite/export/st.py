"""sentence-transformers export: an HF encoder directory plus the module files ``SentenceTransformer`` reads.

Layout (as sentence-transformers writes it): the base encoder's weights/config/tokenizer at the top,
``modules.json`` (Transformer -> Pooling [-> Normalize]), ``sentence_bert_config.json`` and
``1_Pooling/config.json``. When the source model came with these files (e.g. all-MiniLM-L6-v2) they are
copied, so pooling and normalisation stay what the source had; otherwise mean pooling, no normalisation
(what ``autolite.evaluate`` compares).
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from autolite.arch import family_of
from autolite.arch.base import base_model
from autolite.errors import NumericsError
from autolite.eval.forward import mean_pool
from autolite.export.common import ExportResult, UnsupportedExportError, dtype_name, float_dtype, require_plain
from autolite.export.hf import why_not_plain, write_model_files
from autolite.export.validate import LOSSLESS_REL_L2, Tolerance, collect, corpus_texts, judge, torch_outputs
from autolite.io import atomic_dir
from autolite.loading import minilm_dir
from autolite.prune import remote

log = logging.getLogger(__name__)
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
TRANSFORMER = "sentence_transformers.models.Transformer"
POOLING = "sentence_transformers.models.Pooling"
NORMALIZE = "sentence_transformers.models.Normalize"


def export_st(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, validate: bool = True,
              family: Any = None, source_dir: str | Path | None = None, normalize: bool | None = None,
              overwrite: bool = False, max_texts: int | None = None, min_cosine: float = 0.99999) -> ExportResult:
    """Write an encoder as a sentence-transformers directory; validate ``SentenceTransformer(DIR)``'s
    embeddings against autolite's (mean-pooled, normalised when the export normalises)."""
    family = family or family_of(model)
    if family.kind != "encoder":
        raise UnsupportedExportError(f"format 'st' (sentence-transformers) takes encoder models (BERT, RoBERTa, "
                                     f"DistilBERT, MiniLM); {family.name} is a {family.kind}: use 'hf' or 'onnx'")
    require_plain(model, "st", "float and pruned encoders")
    blocker = why_not_plain(model, family)
    out_dir = Path(out_dir)
    source = _source_dir(model, source_dir)
    result = ExportResult(path=out_dir, format="st", precision=dtype_name(float_dtype(model)))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        remote_code = _save_base(model, tokenizer, tmp)
        if blocker and not remote_code:
            raise UnsupportedExportError(f"sentence-transformers rebuilds the encoder with plain transformers, which "
                                         f"cannot take this model ({blocker}); export 'hf' (reload with "
                                         "autolite.load), 'onnx' or 'mlx' instead")
        normalized = _write_modules(tmp, model.config, tokenizer, source, normalize)
        result.notes.append(f"modules from {'the source model' if source else 'defaults'}: "
                            f"mean pooling{', normalized' if normalized else ''}")
        if remote_code:
            result.notes.append("load with SentenceTransformer(DIR, trust_remote_code=True): the pruned encoder is "
                                f"rebuilt by the directory's {remote.CODE_FILE}")
        if validate:
            result.validation = _validate(model, tokenizer, family, tmp, normalized, max_texts, min_cosine,
                                          remote_code)
    return result


def _source_dir(model: torch.nn.Module, explicit: str | Path | None) -> Path | None:
    """Where the source's sentence-transformers files are: given, the model's own dir, or built-in minilm."""
    candidates = [Path(explicit)] if explicit else []
    name = getattr(model.config, "_name_or_path", "") or ""
    if name:
        candidates.append(Path(name))
    state = getattr(model.config, "autolite", None) or {}
    if state.get("source") == "minilm" or "all-minilm" in name.lower():
        candidates.append(minilm_dir())
    for candidate in candidates:
        if (candidate / "modules.json").is_file():
            return candidate
    if explicit:
        raise UnsupportedExportError(f"{explicit} has no modules.json; pass a sentence-transformers directory "
                                     "as source_dir, or none for mean pooling")
    return None


def _save_base(model: torch.nn.Module, tokenizer: Any, directory: Path) -> bool:
    """The encoder without its task head (sentence-transformers loads it with AutoModel); returns whether it
    needs ``trust_remote_code`` (a pruned layout config.json cannot say, rebuilt by autolite's modeling file)."""
    base = base_model(model)
    architectures = getattr(model.config, "architectures", None)
    try:
        write_model_files(base, tokenizer, directory)
    finally:
        model.config.architectures = architectures  # save_pretrained renamed it on the shared config
    return (directory / remote.CODE_FILE).is_file()


def _write_modules(directory: Path, config: Any, tokenizer: Any, source: Path | None,
                   normalize: bool | None) -> bool:
    """Write (or copy) the module files; returns whether a Normalize module is included."""
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "dim"))
    if source is not None:
        for name in ST_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, directory / name)
        modules = json.loads((directory / "modules.json").read_text())
        pooling = _pooling_config(source, modules, hidden)
    else:
        max_len = min(int(getattr(tokenizer, "model_max_length", 512) or 512),
                      int(getattr(config, "max_position_embeddings", 512) or 512))
        (directory / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": max_len, "do_lower_case": False}, indent=2))
        modules = [{"idx": 0, "name": "0", "path": "", "type": TRANSFORMER},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": POOLING}]
        pooling = _mean_pooling(hidden)
    modules = _set_normalize(modules, normalize)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    return any(m["type"].endswith("Normalize") for m in modules)


def _pooling_config(source: Path, modules: list[dict], hidden: int) -> dict:
    pool = next((m for m in modules if m["type"].endswith("Pooling")), None)
    path = source / (pool["path"] if pool else "1_Pooling") / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else _mean_pooling(hidden)
    if not config.get("pooling_mode_mean_tokens", config.get("pooling_mode") == "mean"):
        raise UnsupportedExportError(f"the source's pooling ({path}) is not mean pooling; autolite validates "
                                     "mean-pooled embeddings only")
    config["word_embedding_dimension"] = hidden  # pruning may change it
    return config


def _mean_pooling(hidden: int) -> dict:
    return {"word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}


def _set_normalize(modules: list[dict], normalize: bool | None) -> list[dict]:
    kept = [m for m in modules if not m["type"].endswith("Normalize")]
    if normalize is None:
        normalize = len(kept) != len(modules)
    if normalize:
        kept.append({"idx": len(kept), "name": str(len(kept)), "path": f"{len(kept)}_Normalize", "type": NORMALIZE})
    return kept


def _validate(model, tokenizer, family, directory: Path, normalized: bool, max_texts, min_cosine,
              remote_code: bool = False):
    from sentence_transformers import SentenceTransformer


    texts = corpus_texts(max_texts)
    try:
        st_model = SentenceTransformer(str(directory), device="cpu", local_files_only=True,
                                       trust_remote_code=remote_code)
    except Exception as exc:  # it loads through plain transformers, which cannot rebuild every autolite model
        raise UnsupportedExportError(
            f"sentence-transformers cannot load this model ({str(exc).splitlines()[0][:160]}); it rebuilds the "
            "encoder with plain transformers (which cannot, e.g., take BERT with fewer heads): export 'hf' "
            "(reload with autolite.load), 'onnx' or 'mlx' instead") from exc
    got = st_model.encode(texts, batch_size=16, convert_to_tensor=True, show_progress_bar=False).float().cpu()

    def reference(batch):
        pooled = mean_pool(torch_outputs(model, family, batch)["last_hidden_state"].float(), batch["attention_mask"])
        return {"embedding": torch.nn.functional.normalize(pooled, dim=-1) if normalized else pooled}

    ref = collect(reference, tokenizer, texts)
    tolerance = Tolerance(max_rel_l2=LOSSLESS_REL_L2, min_cosine=min_cosine)
    result = judge({"embedding": got}, ref, tolerance, against="autolite's embeddings of the in-memory model",
                   texts=len(texts))
    log.info("st validation: %s", result.line())
    if not result.passed:
        raise NumericsError(f"st export failed validation ({result.line()}); nothing was written")
    return result
