"""Saved pruned models that plain ``transformers`` can load even when config.json cannot describe them.

The HF config has one head count (from which BERT, DistilBERT and GPT-2 derive the head size) and one
intermediate size, and transformers 5 dropped ``pruned_heads``. So a BERT with 7 heads per layer, or a model
whose layers keep different FFN sizes, cannot be rebuilt from the config alone. For those, the saved directory
gets a small modeling file (``modeling_autolite_pruned.py``, needs only torch and transformers) and an
``auto_map`` in config.json: ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` (and the Auto class of
the saved head, e.g. ``AutoModelForSequenceClassification``) builds the HF model, then resizes the modules listed
in ``config.autolite_modules`` (parameter shapes and size attributes: the difference between the pruned model
and what the config alone builds) before the weights are read. Models whose config says it all get neither.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

log = logging.getLogger(__name__)
MODULES_KEY = "autolite_modules"
CODE_FILE = "modeling_autolite_pruned.py"
_PREFIX = "AutolitePruned"

_CODE_HEAD = '''"""Written by autolite: HF classes that resize the pruned modules listed in config.autolite_modules.

Load with transformers.AutoModel.from_pretrained(this_dir, trust_remote_code=True) (or the Auto class of the
saved head); needs only torch and transformers. Each entry gives a module's parameter shapes and size attributes
(e.g. heads per layer), which differ from what the config alone would build.
"""
import torch
import transformers
from torch import nn


def _resize(model, spec):
    base = model.base_model
    for name, entry in spec.items():
        module = base.get_submodule(name) if name else base
        for pname, shape in entry.get("params", {}).items():
            old = getattr(module, pname)
            data = torch.empty(shape, dtype=old.dtype, device=old.device)
            setattr(module, pname, nn.Parameter(data, requires_grad=old.requires_grad))
        for bname, shape in entry.get("buffers", {}).items():
            old = getattr(module, bname)
            module.register_buffer(bname, torch.zeros(shape, dtype=old.dtype, device=old.device))
        for attr, value in entry.get("attrs", {}).items():
            setattr(module, attr, value)


class AutolitePrunedMixin:
    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        _resize(self, getattr(config, "autolite_modules", None) or {})
'''


def module_diff(model: nn.Module) -> dict[str, dict[str, Any]] | None:
    """What differs between ``model``'s base model and the one its config alone builds (None: not expressible).

    ``{module name relative to base_model: {"params": {name: shape}, "buffers": {...}, "attrs": {name: value}}}``.
    None when module types differ (autolite's quantized modules need ``autolite.load``).
    """
    config = copy.deepcopy(model.config)
    for key in (MODULES_KEY, "auto_map"):
        if hasattr(config, key):
            delattr(config, key)
    with torch.device("meta"):
        fresh = type(model)(config)
    fresh_modules = dict(fresh.base_model.named_modules())
    diff: dict[str, dict[str, Any]] = {}
    for name, module in model.base_model.named_modules():
        ref = fresh_modules.get(name)
        if ref is None or type(ref) is not type(module):
            return None
        entry = _entry(module, ref)
        if entry:
            diff[name] = entry
    return diff if len(dict(fresh.base_model.named_modules())) == len(dict(model.base_model.named_modules())) \
        else None


def _entry(module: nn.Module, ref: nn.Module) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    params = {n: list(p.shape) for n, p in module.named_parameters(recurse=False)
              if n in ref._parameters and ref._parameters[n] is not None and tuple(ref._parameters[n].shape) != p.shape}
    buffers = {n: list(b.shape) for n, b in module.named_buffers(recurse=False)
               if n in ref._buffers and ref._buffers[n] is not None and tuple(ref._buffers[n].shape) != b.shape}
    attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and _scalar(v)
             and _scalar(getattr(ref, k, None)) and getattr(ref, k) != v}
    for key, value in (("params", params), ("buffers", buffers), ("attrs", attrs)):
        if value:
            entry[key] = value
    return entry


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def auto_classes(model: nn.Module) -> dict[str, str]:
    """``{Auto class name: transformers class name}`` that should load this model: AutoModel (the bare model)
    and every Auto class whose mapping gives the model's own class."""
    model_type, own = model.config.model_type, type(model).__name__
    found: dict[str, str] = {}
    for name in dir(transformers):
        if not name.startswith("AutoModel"):
            continue
        mapping = getattr(getattr(transformers, name, None), "_model_mapping", None)
        names = getattr(mapping, "_model_mapping", None)
        target = names.get(model_type) if isinstance(names, dict) else None
        if isinstance(target, str) and hasattr(transformers, target) and (name == "AutoModel" or target == own):
            found[name] = target
    return found


def prepare(model: nn.Module) -> str | None:
    """Before saving a pruned model: set (or clear) ``autolite_modules`` and our ``auto_map`` entries on its
    config; returns the modeling file's text when the saved directory needs one."""
    config = model.config
    if not getattr(config, "autolite_layout", None):
        return None
    _clear(config)
    try:
        diff = module_diff(model)
    except Exception:  # noqa: BLE001 - a hint only: autolite.load still rebuilds the model
        log.debug("could not compare the pruned model with its config's skeleton", exc_info=True)
        diff = None
    if not diff:  # None: autolite modules inside (autolite.load only); {}: the config says it all
        return None
    classes = auto_classes(model)
    setattr(config, MODULES_KEY, diff)
    config.auto_map = {**(getattr(config, "auto_map", None) or {}),
                       **{auto: f"{CODE_FILE[:-3]}.{_PREFIX}{target}" for auto, target in classes.items()}}
    return _CODE_HEAD + "".join(f"\n\nclass {_PREFIX}{t}(AutolitePrunedMixin, transformers.{t}):\n    pass\n"
                                for t in sorted(set(classes.values())))


def _clear(config: Any) -> None:
    if hasattr(config, MODULES_KEY):
        delattr(config, MODULES_KEY)
    auto_map = {k: v for k, v in (getattr(config, "auto_map", None) or {}).items() if CODE_FILE[:-3] not in v}
    if auto_map:
        config.auto_map = auto_map
    elif hasattr(config, "auto_map"):
        delattr(config, "auto_map")


def write(directory: Path, code: str | None) -> None:
    """Write the modeling file ``prepare`` returned (nothing when it returned None)."""
    if code:
        (Path(directory) / CODE_FILE).write_text(code, encoding="utf-8")


def needs_remote_code(config: Any) -> bool:
    """Whether a saved config loads through autolite's modeling file (``trust_remote_code=True``)."""
    return bool(getattr(config, MODULES_KEY, None) if not isinstance(config, dict) else config.get(MODULES_KEY))


def load_with_transformers(directory: str | Path, config: dict[str, Any]) -> nn.Module | None:
    """Load a saved directory that carries autolite's modeling file with plain transformers' Auto class for its
    saved architecture (``trust_remote_code=True``); None when the directory has no such file."""
    auto_map = config.get("auto_map") or {}
    own = [auto for auto, ref in auto_map.items() if CODE_FILE[:-3] in ref and
           ref.rsplit(".", 1)[-1] in {_PREFIX + a for a in config.get("architectures") or []}]
    if not config.get(MODULES_KEY) or not own:
        return None
    auto = getattr(transformers, sorted(own)[0])
    return auto.from_pretrained(str(directory), trust_remote_code=True, dtype="auto").eval()
