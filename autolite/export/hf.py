"""Save a (compressed) model as an HF directory: safetensors weights, config with the recipe, tokenizer."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from autolite.arch import family_of
from autolite.errors import ArgumentError, ModelLoadError
from autolite.export.common import ExportResult, add_top_level_rope_theta, custom_modules, dtype_name, float_dtype
from autolite.export.validate import LOSSLESS, torch_outputs, validate
from autolite.io import atomic_dir
from autolite.loading import _from_pretrained, load_dir, model_class, read_config
from autolite.prune import remote
from autolite.prune.surgery import why_not_plain as layout_reason

log = logging.getLogger(__name__)


def save_model(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, overwrite: bool = False,
               extra_files: dict[str, str] | None = None) -> Path:
    """Write model + tokenizer (+ ``extra_files``: name -> text) to ``out_dir`` atomically.

    The applied recipe is stored in ``config.json`` under ``autolite`` so ``autolite.load`` rebuilds
    the same model; float and pruned models also load with plain ``transformers``.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "save_pretrained"):
        raise ArgumentError(f"save_model() needs an HF model (with save_pretrained), got {type(model).__name__}")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_model_files(model, tokenizer, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return out_dir


def write_model_files(model: torch.nn.Module, tokenizer: Any, directory: Path) -> None:
    """Write weights, config and tokenizer into an existing (temporary) directory.

    A pruned model whose sizes config.json cannot say also gets autolite's small modeling file and an
    ``auto_map`` (see :mod:`autolite.prune.remote`), so ``AutoModel.from_pretrained(dir, trust_remote_code=True)``
    rebuilds it."""
    code = remote.prepare(model)
    model.save_pretrained(str(directory))
    remote.write(directory, code)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def read_recipe_state(directory: str | Path) -> dict[str, Any] | None:
    """The ``autolite`` entry of a saved model's config.json, or None."""
    config = json.loads((Path(directory) / "config.json").read_text())
    return config.get("autolite")


def export_hf(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, validate: bool = True,
              family: Any = None, overwrite: bool = False, max_texts: int | None = None) -> ExportResult:
    """Save as a standard HF directory and prove it: reload it and compare outputs on the corpus.

    Float and pruned models reload with plain ``transformers`` (rel L2 < 1e-4 required); models it cannot
    rebuild (autolite's quantized modules; BERT-family models with fewer heads, whose config derives the head
    size from the head count) reload with ``autolite.load``, which replays the recipe in config.json.
    Llama-like configs also get a top-level ``rope_theta`` for tools that read it there (mlx-lm).
    """
    family = family or family_of(model)
    out_dir = Path(out_dir)
    result = ExportResult(path=out_dir, format="hf", precision=dtype_name(float_dtype(model)))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_model_files(model, tokenizer, tmp)
        add_top_level_rope_theta(tmp, model.config)
        if validate:
            result.validation = _validate_reload(model, tokenizer, tmp, family, result.notes, max_texts)
    return result


def _validate_reload(model: torch.nn.Module, tokenizer: Any, directory: Path, family: Any, notes: list[str],
                     max_texts: int | None):
    reason = "quantized autolite modules" if custom_modules(model) else why_not_plain(model, family)
    reloaded, how = _reload(directory, family, reason, notes)
    return validate(lambda b: torch_outputs(reloaded, family, b), lambda b: torch_outputs(model, family, b),
                    tokenizer, LOSSLESS, what="hf", against=f"the in-memory model (reloaded with {how})",
                    max_texts=max_texts)


def why_not_plain(model: torch.nn.Module, family: Any) -> str | None:
    """Why plain transformers cannot rebuild this (pruned) model from its config.json (None: it can)."""
    if not getattr(model.config, "autolite", None):
        return None
    try:
        return layout_reason(family, model)
    except Exception:  # noqa: BLE001 - only a hint: the plain reload below is tried and validated anyway
        log.debug("why_not_plain failed", exc_info=True)
        return None


def _reload(directory: Path, family: Any, reason: str | None, notes: list[str]) -> tuple[torch.nn.Module, str]:
    """Reload with plain transformers where it can rebuild the model, else with ``autolite.load``."""
    config = read_config(directory)
    if reason:
        notes.append(f"plain transformers cannot rebuild this model ({reason}): reload with autolite.load(DIR)")
        return load_dir(directory)[0], "autolite.load"
    try:
        return _from_pretrained(model_class(config, family), directory).eval(), "transformers from_pretrained"
    except ModelLoadError as exc:
        if not config.get("autolite"):
            raise
        notes.append(f"plain transformers cannot rebuild this model ({exc}): reload with autolite.load(DIR)")
        return load_dir(directory)[0], "autolite.load"
