"""Save a (compressed) model as an HF directory: safetensors weights, config with the recipe, tokenizer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from autolite.io import atomic_dir


def save_model(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, overwrite: bool = False,
               extra_files: dict[str, str] | None = None) -> Path:
    """Write model + tokenizer (+ ``extra_files``: name -> text) to ``out_dir`` atomically.

    The applied recipe is stored in ``config.json`` under ``autolite`` so ``autolite.load`` rebuilds
    the same model; float and pruned models also load with plain ``transformers``.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_model_files(model, tokenizer, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return out_dir


def write_model_files(model: torch.nn.Module, tokenizer: Any, directory: Path) -> None:
    """Write weights, config and tokenizer into an existing (temporary) directory."""
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def read_recipe_state(directory: str | Path) -> dict[str, Any] | None:
    """The ``autolite`` entry of a saved model's config.json, or None."""
    config = json.loads((Path(directory) / "config.json").read_text())
    return config.get("autolite")
