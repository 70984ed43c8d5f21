"""The pass registry and ``compress``: config class -> handler(model, config, ctx) -> model."""
from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from autolite import presets
from autolite.arch import family_of
from autolite.config import PassConfig, Recipe
from autolite.errors import ArgumentError, RecipeError
from autolite.fields import syntax_error
from autolite.weights import describe_weights, stored_weights

log = logging.getLogger(__name__)

# Modules whose import registers passes. Each capability folder adds its own module here.
BUILTIN_PASS_MODULES = [
    "autolite.runtime.precision",
    "autolite.runtime.compile",
    "autolite.prune",
    "autolite.quant.mixed",
    "autolite.quant.int8",
    "autolite.quant.weight_only",
    "autolite.quant.int8_static",
    "autolite.runtime.ort",
    "autolite.runtime.openvino",
    "autolite.runtime.fast_dense",
    "autolite.dynamic.token_drop",
    "autolite.dynamic.early_exit",
    "autolite.dynamic.router",
    "autolite.dynamic.head_select",
    "autolite.runtime.act_sparsity",
]

# A handler returns the model, or ``(model, applied_config)`` when it fills in config fields (the layers it
# quantized, a planned bits map): a ``dataclasses.replace`` copy; the config it was given is never changed.
Handler = Callable[[torch.nn.Module, PassConfig, "PassContext"],
                   "torch.nn.Module | tuple[torch.nn.Module, PassConfig]"]


@dataclasses.dataclass
class PassContext:
    """What a pass may need besides the model: family, tokenizer, calibration data, notes to report."""

    family: Any = None
    tokenizer: Any = None
    calib: list[str] | None = None
    labels: list[int] | None = None
    shape: tuple[int, int] | None = None  # (batch, seq) the model will be measured at, when known
    notes: list[str] = dataclasses.field(default_factory=list)
    teacher: Any = None  # the model pruning recovery distills from (None: see recover_from)
    original: Any = None  # the model compress() was given, unchanged (recover_from: original)
    prune_batches: dict[int, list] = dataclasses.field(default_factory=dict)  # calibration batches by sample count
    prune_scores: dict[str, dict] = dataclasses.field(default_factory=dict)  # last importance scores per target

    def note(self, message: str) -> None:
        """Record something the user should read in the report (a fallback, a skipped layer), once."""
        if message in self.notes:
            return
        log.info(message)
        self.notes.append(message)


@dataclasses.dataclass
class PassHandler:
    """How a pass runs: ``apply`` once; on load, ``restore`` rebuilds its modules before the weights
    are read (quantized layers), ``after_load`` re-applies what is not stored in weights (compilation)."""

    apply: Handler
    restore: Handler | None = None
    after_load: Handler | None = None


_HANDLERS: dict[type[PassConfig], PassHandler] = {}


def register_pass(config_cls: type[PassConfig], *, restore: Handler | None = None,
                  after_load: Handler | None = None) -> Callable[[Handler], Handler]:
    """Decorator: register ``fn`` as the handler that applies ``config_cls``."""
    def decorator(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = PassHandler(apply=fn, restore=restore, after_load=after_load)
        return fn
    return decorator


def import_builtin_passes() -> None:
    """Import every module that registers a built-in pass (idempotent)."""
    for name in BUILTIN_PASS_MODULES:
        importlib.import_module(name)


def load_recipe(spec: "str | Path | Recipe | list[PassConfig] | None") -> Recipe:
    """Resolve a recipe: a Recipe, a list of configs, a YAML/JSON file, or a preset name."""
    import_builtin_passes()
    if spec is None:
        spec = "default"
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, (list, tuple)):  # configs or {"pass": ...} dicts
        return Recipe(passes=[p if isinstance(p, PassConfig) else PassConfig.from_dict(p) for p in spec])
    text = str(spec)
    path = Path(text)
    if text.endswith((".yaml", ".yml", ".json")) or path.is_file():
        return _recipe_from_file(path)
    return presets.get_preset(text)


def _recipe_from_file(path: Path) -> Recipe:
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist; pass a YAML/JSON file or a preset name")
    try:
        raw = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (ValueError, yaml.YAMLError) as exc:
        raise RecipeError(f"recipe file {path} is not valid YAML/JSON: {syntax_error(exc)}") from exc
    return Recipe.from_dict(raw, name=path.stem)


def handler_for(config: PassConfig) -> PassHandler:
    import_builtin_passes()
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise RecipeError(f"no handler registered for pass '{config.name}'")
    return handler


def apply_pass(model: torch.nn.Module, config: PassConfig, ctx: PassContext
               ) -> tuple[torch.nn.Module, PassConfig]:
    """Run ``config``'s handler: the (possibly new) model and the config to record in the recipe."""
    result = handler_for(config).apply(model, config, ctx)
    return result if isinstance(result, tuple) else (result, config)


def compress(model: torch.nn.Module, recipe: Any, calib: list[str] | None = None, *,
             tokenizer: Any = None, family: Any = None, ctx: PassContext | None = None,
             inplace: bool = False) -> torch.nn.Module:
    """Return a compressed copy of ``model``: every pass of ``recipe`` (a Recipe, a list of configs or of
    ``{"pass": ...}`` dicts, a YAML/JSON file or a preset name) applied in order.

    ``model`` itself is left unchanged (it can serve as the reference) unless ``inplace=True`` (or
    :func:`compress_`), which transforms it in place and saves the copy's memory. The applied recipe is
    recorded in the result's ``config.autolite`` so that a saved model can be rebuilt by ``autolite.load``.
    """
    import_builtin_passes()
    recipe = load_recipe(recipe)
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise ArgumentError(f"compress() needs an HF model (torch.nn.Module with a config), got {type(model).__name__}")
    source = model
    if not inplace:
        model = copy.deepcopy(model)
    if family is None:
        family = family_of(model)
    ctx = ctx or PassContext(family=family, tokenizer=tokenizer, calib=calib)
    if ctx.original is None and _recovers_from_original(recipe):
        ctx.original = copy.deepcopy(model) if inplace else source
    positions = getattr(model.config, "max_position_embeddings", None)  # T5: relative positions, no limit
    if ctx.shape is not None and positions and ctx.shape[1] > positions:
        raise ArgumentError(f"sequence length {ctx.shape[1]} is longer than the model's {positions} positions")
    applied = []
    for config in recipe.passes:
        log.info("applying pass %s", config.to_dict())
        model, done = apply_pass(model, config, ctx)
        applied.append(done)
    counts = stored_weights(model)
    if set(counts) - {"FP32"}:  # parameters() alone misses packed weights: say what is stored
        ctx.note(f"stored weights: {describe_weights(counts)}")
    record_recipe(model, Recipe(passes=applied, name=recipe.name), ctx.notes)
    return model


def _recovers_from_original(recipe: Recipe) -> bool:
    return any(getattr(config, "recover_from", None) == "original" and getattr(config, "recover_steps", 0)
               for config in recipe.passes)


def compress_(model: torch.nn.Module, recipe: Any, calib: list[str] | None = None, **options: Any) -> torch.nn.Module:
    """:func:`compress` in place: ``model`` itself is transformed (no copy) and returned; it is no longer
    the original afterwards (load a fresh reference to compare with)."""
    return compress(model, recipe, calib, inplace=True, **options)


def record_recipe(model: torch.nn.Module, recipe: Recipe, notes: list[str] | None = None) -> None:
    """Append ``recipe`` to the recipe history stored in the model's HF config."""
    history = applied_recipe(model)
    merged = Recipe(passes=history.passes + recipe.passes,
                    name=recipe.name if not history.passes else f"{history.name}+{recipe.name}")
    state = {"format_version": 1, "recipe": merged.to_dict(), "notes": list(notes or [])}
    model.config.autolite = state


def applied_recipe(model: torch.nn.Module) -> Recipe:
    """The recipe recorded on a model (empty for an uncompressed model)."""
    state = getattr(model.config, "autolite", None)
    if not state:
        return Recipe(passes=[], name="none")
    import_builtin_passes()
    return Recipe.from_dict(state["recipe"])
