"""What the backends that run the forward outside PyTorch (ONNX Runtime, OpenVINO) share.

- :func:`route_forward`: the HF model keeps its class and config; its ``forward`` is routed to a runner that
  takes ``input_ids``/``attention_mask`` and returns named outputs, wrapped in the HF output type.
- :func:`offload_weights`: the torch weights are written once to a safetensors file in the autolite cache and
  memory-mapped back (copy-on-write, read only when touched), so the process does not keep a second FP32 copy
  resident next to the engine's own weights; ``save_model`` still reads them.
- :func:`held_mb`: the memory such a model really holds: the engine's (measured as the RSS its build kept)
  plus the torch tensors still in RAM (mapped ones excluded). ``autolite bench`` reports it.
"""
from __future__ import annotations

import json
import types
from typing import Any

import psutil
import torch
from safetensors.torch import save_file

from autolite.cache import cache_root, mark_used, stored
from autolite.errors import BackendUnavailableError
from autolite.eval.bench import release_free_heap
from autolite.io import atomic_file

HELD_ATTR = "_autolite_held_mb"  # read by autolite.eval.bench (no import: eval sits below runtime)
MAPPED_ATTR = "_autolite_mapped"  # storage pointers of memory-mapped weights, not counted as held


class Runner:
    """Holds an engine session; shared (not copied) by ``copy.deepcopy`` and never pickled."""

    kind = "external"

    def __init__(self, inputs: list[str], outputs: list[str], how: str) -> None:
        self.inputs, self.outputs, self.how = inputs, outputs, how
        self.has_head = "logits" in outputs

    def __deepcopy__(self, memo: dict) -> "Runner":
        return self

    def __getstate__(self) -> dict:
        raise BackendUnavailableError(f"a {self.kind} model cannot be pickled; save it with autolite (save_model)")

    def feeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, Any]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        given = {"input_ids": input_ids, "attention_mask": attention_mask}
        return {k: given[k].detach().cpu().to(torch.int64).numpy() for k in self.inputs}

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def runner_of(model: torch.nn.Module) -> Runner | None:
    """The external runner serving ``model``'s forward, or None."""
    return getattr(model, "_autolite_backend", None)


def _external_forward(self: torch.nn.Module, input_ids: torch.Tensor | None = None,
                      attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                      output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs: Any):
    """HF-style forward served by the runner in ``self._autolite_backend``."""
    from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

    runner: Runner = self._autolite_backend
    if input_ids is None:
        raise BackendUnavailableError(f"the {runner.kind} model takes input_ids (inputs_embeds is not exported)")
    if token_type_ids is not None and bool(token_type_ids.any()):
        raise BackendUnavailableError(f"the {runner.kind} graph was exported without token_type_ids; "
                                      "pass all-zero segment ids or use the torch model")
    if kwargs.get("labels") is not None or kwargs.get("output_attentions"):
        raise BackendUnavailableError(f"the {runner.kind} model returns hidden states and logits only "
                                      "(no loss from labels, no attentions)")
    out = runner.run(input_ids, attention_mask)
    hidden = out["last_hidden_state"]  # (B, T, H)
    states = (hidden,) if output_hidden_states else None
    if runner.has_head:
        return SequenceClassifierOutput(logits=out["logits"], hidden_states=states)
    return BaseModelOutput(last_hidden_state=hidden, hidden_states=states)


def route_forward(model: torch.nn.Module, runner: Runner) -> None:
    """Serve ``model.forward`` from ``runner`` (the torch modules stay for saving)."""
    model._autolite_backend = runner
    model.forward = types.MethodType(_external_forward, model)
    model.eval()


def rss_mb() -> float:
    """This process's resident memory after handing free heap pages back to the OS."""
    release_free_heap()
    return psutil.Process().memory_info().rss / 2**20


def _named_tensors(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, str, torch.Tensor]]:
    """(full name, owner module, attribute, tensor) of every unique parameter and buffer."""
    seen: set[int] = set()
    found = []
    for prefix, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for attr, tensor in table.items():
                if tensor is None or id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                found.append((f"{prefix}.{attr}" if prefix else attr, module, attr, tensor))
    return found


def offload_weights(model: torch.nn.Module, key: str) -> int:
    """Replace the model's float weights by memory-mapped views of ``<cache>/weights/<key>.safetensors``
    (written once); returns how many tensors were mapped. The mapping is private: nothing writes the file."""
    path = cache_root() / "weights" / f"{key}.safetensors"
    tensors = _named_tensors(model)
    if path.is_file():
        mark_used(path)
    else:
        with atomic_file(path) as tmp:
            save_file({name: t.detach().contiguous() for name, _, _, t in tensors}, str(tmp))
        stored(path)
    size = path.stat().st_size
    data = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    header_len = int.from_bytes(bytes(data[:8].tolist()), "little")
    header = json.loads(bytes(data[8:8 + header_len].tolist()))
    mapped, count = getattr(model, MAPPED_ATTR, set()), 0
    for name, module, attr, tensor in tensors:
        begin, end = (8 + header_len + offset for offset in header[name]["data_offsets"])
        if not tensor.is_floating_point() or begin % tensor.element_size() or end - begin != tensor.nbytes:
            continue  # small integer buffers and misaligned entries stay in RAM
        view = data[begin:end].view(tensor.dtype).view(tensor.shape)
        with torch.no_grad():
            if attr in module._parameters:
                module._parameters[attr].data = view
            else:
                module._buffers[attr] = view
        mapped.add(view.untyped_storage().data_ptr())
        count += 1
    setattr(model, MAPPED_ATTR, mapped)
    return count
