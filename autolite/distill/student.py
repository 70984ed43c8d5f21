"""Students built from a teacher by keeping a subset of its layers (weights copied, HF config kept true).

The student is a plain transformers model of the same class: ``save_pretrained`` writes a config whose
layer count matches, so it loads with ``from_pretrained`` and with ``autolite.load``.
"""
from __future__ import annotations

import copy
import itertools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autolite.arch import ArchSpec, base_model
from autolite.errors import RecipeError, UnsupportedArchitectureError
from autolite.eval.forward import run_model, tokenize

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


@torch.no_grad()
def search_layers(teacher: nn.Module, family: ArchSpec, keep: int, tokenizer: Any, texts: list[str],
                  max_candidates: int = 64, max_length: int = 64) -> tuple[list[int], float]:
    """The ``keep`` teacher layers whose (untrained) student best matches the teacher on ``texts``.

    Tries every subset (only those ending with the last layer when there are more than ``max_candidates``;
    evenly spread layers when still too many). Score: pooled-embedding cosine (encoders) or minus the
    next-token KL (decoders). Returns (layers, score).
    """
    total = len(family.layers(teacher))
    even = select_layers(total, keep)  # also validates keep
    combos = list(itertools.combinations(range(total), keep))
    if len(combos) > max_candidates:
        combos = [c for c in combos if c[-1] == total - 1]
    if len(combos) > max_candidates or not texts:
        return even, float("nan")
    batch = tokenize(tokenizer, texts, max_length)
    teacher.eval()
    ref = run_model(teacher, family, batch)
    scored = []
    for combo in combos:
        out = run_model(build_student(teacher, family, list(combo)).eval(), family, batch)
        scored.append((_match(out, ref), list(combo)))
    score, best = max(scored, key=lambda item: item[0])
    log.info("layer search: best of %d subsets %s (score %.4f)", len(combos), best, score)
    return best, score


def _match(out, ref) -> float:
    if out.embeddings is not None and ref.embeddings is not None:
        return float(F.cosine_similarity(out.embeddings, ref.embeddings, dim=-1).mean())
    log_p, log_q = F.log_softmax(ref.logits, -1), F.log_softmax(out.logits, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return -float(kl[ref.mask.bool()].mean())


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
