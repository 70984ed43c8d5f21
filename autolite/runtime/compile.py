"""The ``compile`` pass: torch.compile (Inductor) with weight freezing, applied in place.

Freezing lets Inductor constant-fold the weights and pre-pack them for oneDNN; the compiled graph is
built lazily on the first forward (expect tens of seconds for a base-size model). Compilation is not
stored in the weights: ``autolite.load`` re-applies it (``after_load``).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.runtime.opaque import make_opaque

log = logging.getLogger(__name__)
BACKENDS = ("inductor", "eager", "aot_eager")


@dataclasses.dataclass
class Compile(PassConfig):
    """Compile the model's forward with ``torch.compile``.

    ``freeze``: treat weights as constants (inference only), ``dynamic``: allow shape changes without
    recompiling (None lets torch decide after the first change).
    """

    name = "compile"
    backend: str = "inductor"
    freeze: bool = True
    dynamic: bool | None = None
    mode: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise RecipeError(f"compile backend must be one of {BACKENDS}, got '{self.backend}'")
        if self.mode not in (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise RecipeError(f"unknown torch.compile mode '{self.mode}'")


def compile_options(config: Compile) -> dict:
    """``torch.compile`` keywords for ``config``. Freezing goes in Inductor's per-compilation ``options``
    (applied while the lazily built graph compiles), never into the process-wide Inductor config."""
    if config.backend != "inductor" or not config.freeze:
        return {"mode": config.mode}
    mode = torch._inductor.list_mode_options(config.mode, config.dynamic) if config.mode else {}
    return {"options": {**mode, "freezing": True}}


def apply_compile(model: torch.nn.Module, config: Compile, ctx: PassContext) -> torch.nn.Module:
    model.eval()
    opaque = make_opaque(model)
    model.compile(backend=config.backend, dynamic=config.dynamic, **compile_options(config))
    ctx.note(f"torch.compile(backend={config.backend}, freeze={config.freeze}): compiled on first call"
             + (f"; {opaque} INT8 engine layers run as opaque graph nodes (no graph breaks)" if opaque else ""))
    return model


register_pass(Compile, after_load=apply_compile)(apply_compile)


def is_compiled(model: torch.nn.Module) -> bool:
    """True when ``model.compile()`` was applied."""
    return getattr(model, "_compiled_call_impl", None) is not None
