"""Training checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

Layout of a checkpoint directory (written atomically, replaced as a whole)::

    weights.safetensors     trainable modules' state dicts, keys prefixed by module name
    optimizer.safetensors   optimizer per-parameter tensors, keys "<param index>.<name>"
    state.json              step, elapsed seconds, history, config, optimizer scalars and param groups
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from autolite.errors import CorruptWeightsError
from autolite.io import atomic_dir

STATE_FILE = "state.json"


def save_checkpoint(directory: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> Path:
    """Write ``modules``' weights, the optimizer state and ``state`` (JSON-able) to ``directory``."""
    directory = Path(directory)
    weights = {f"{prefix}.{key}": value.detach().cpu().clone().contiguous()
               for prefix, module in modules.items() for key, value in module.state_dict().items()}
    tensors, opt_meta = _split_optimizer(optimizer.state_dict())
    with atomic_dir(directory, overwrite=True) as tmp:
        save_file(weights, str(tmp / "weights.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        payload = dict(state, optimizer=opt_meta)
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return directory


def load_checkpoint(directory: str | Path, modules: dict[str, torch.nn.Module],
                    optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore ``modules`` and ``optimizer`` in place from ``directory``; returns the JSON state."""
    directory = Path(directory)
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
        weights = load_file(str(directory / "weights.safetensors"))
        tensors = load_file(str(directory / "optimizer.safetensors"))
    except (OSError, ValueError) as exc:
        raise CorruptWeightsError(f"checkpoint {directory} is incomplete or corrupt ({exc}); "
                                  "delete it to start over") from exc
    for prefix, module in modules.items():
        part = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
        result = module.load_state_dict(part, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CorruptWeightsError(f"checkpoint {directory} does not match the model being trained "
                                      f"({prefix}: missing {result.missing_keys[:3]}); was it made for another model?")
    optimizer.load_state_dict(_join_optimizer(tensors, state.pop("optimizer")))
    return state


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / STATE_FILE).is_file()


def _split_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in opt_state["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}
