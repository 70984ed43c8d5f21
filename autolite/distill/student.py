"""Students built from a teacher by keeping a subset of its layers (weights copied, HF config kept true).

The student is a plain transformers model of the same class: ``save_pretrained`` writes a config whose
layer count matches, so it loads with ``from_pretrained`` and with ``autolite.load``.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from autolite.arch import ArchSpec, base_model
from autolite.errors import RecipeError, UnsupportedArchitectureError

log = logging.getLogger(__name__)


def select_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices spread evenly over ``total`` layers, always including the first and the last."""
    if not 1 <= keep <= total:
        raise RecipeError(f"--student-layers must be between 1 and the teacher's {total} layers, got {keep}")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def build_student(teacher: nn.Module, family: ArchSpec, layers: int | list[int]) -> nn.Module:
    """A deep copy of ``teacher`` keeping ``layers`` (a count spread evenly, or explicit teacher indices)."""
    if family.kind not in ("encoder", "decoder"):
        raise UnsupportedArchitectureError(
            f"layer-dropping students support encoders and decoders, not {family.kind} ({family.name})")
    total = len(family.layers(teacher))
    keep = select_layers(total, layers) if isinstance(layers, int) else sorted(set(layers))
    if not keep or keep[0] < 0 or keep[-1] >= total:
        raise RecipeError(f"student layer indices {layers} must lie in 0..{total - 1}")
    student = copy.deepcopy(teacher)
    stack = _layer_list(student, family)
    kept = nn.ModuleList([stack[i] for i in keep])
    _replace_list(base_model(student), stack, kept)
    for new_index, layer in enumerate(kept):
        _renumber(layer, new_index)
    _update_config(student.config, family, keep)
    log.info("student keeps teacher layers %s of %d", keep, total)
    return student


def _layer_list(model: nn.Module, family: ArchSpec) -> nn.ModuleList:
    """The ModuleList holding the family's layers."""
    first = family.layers(model)[0].module
    for module in base_model(model).modules():
        if isinstance(module, nn.ModuleList) and len(module) and module[0] is first:
            return module
    raise UnsupportedArchitectureError(f"could not find the layer list of {family.name}")


def _replace_list(root: nn.Module, old: nn.ModuleList, new: nn.ModuleList) -> None:
    for module in root.modules():
        for name, child in module.named_children():
            if child is old:
                setattr(module, name, new)
                return
    raise UnsupportedArchitectureError("layer list is not a direct child of any module")


def _renumber(layer: nn.Module, index: int) -> None:
    """Attention modules keep their layer index for the KV cache; keep it consistent."""
    for module in layer.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def _update_config(config, family: ArchSpec, keep: list[int]) -> None:
    setattr(config, family.config_keys["layers"], len(keep))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) > max(keep):
        config.layer_types = [layer_types[i] for i in keep]
    config.autolite_student_of = {"layers": keep}


@torch.no_grad()
def copy_check(teacher: nn.Module, student: nn.Module, family: ArchSpec, keep: list[int]) -> bool:
    """True when each student layer's weights equal the teacher layer it came from."""
    t_layers, s_layers = family.layers(teacher), family.layers(student)
    for s_view, t_index in zip(s_layers, keep):
        for (name, a), (_, b) in zip(s_view.module.state_dict().items(), t_layers[t_index].module.state_dict().items()):
            if not torch.equal(a, b):
                log.debug("layer %d tensor %s differs", t_index, name)
                return False
    return True
