"""The search space: structural pruning x dynamic inference x precision/backend, as Optuna suggestions.

A trial's recipe has two parts. The *structural* part (prune layers / heads / FFN, then a short recovery
that distills from the original model) is expensive and cached per setting; the *runtime* part (dynamic
passes, then one dense backend candidate) is cheap to apply on top. Dynamic passes are discovered at run time:
every registered pass from ``autolite.dynamic`` that builds with its defaults (routing, which needs a second
model, is left out). A dynamic config may declare ``search_space: ClassVar[dict[str, list]]`` to have its
fields searched; a ``max_drop`` field is set from the search's own budget.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch

from autolite.config import PassConfig, known_passes
from autolite.errors import RecipeError
from autolite.passes import import_builtin_passes
from autolite.runtime.fast_dense import DEFAULT_CANDIDATES, candidate_passes
from autolite.runtime.hardware import native_dtypes

# every candidate fast-dense measures (ONNX Runtime, OpenVINO, INT8 engines, compile), plus two presets it leaves out
BACKENDS = list(DEFAULT_CANDIDATES) + [b for b in ("bf16", "int8-static") if b not in DEFAULT_CANDIDATES]
# the dense seeds, likely fastest first; the first present is the structural seeds' backend
INT8_SEEDS = ("openvino-int8", "ort-int8", "int8-dynamic", "int8-dynamic+compile", "ort-int8-static", "int8-static")
RATIOS = {"layers": [0.0, 0.33, 0.5, 0.67], "heads": [0.0, 0.25, 0.5], "ffn": [0.0, 0.25, 0.5, 0.75]}
# mild to strong cuts, each well past what a dense backend alone reaches (a structure cannot beat it otherwise)
STRUCTURAL_SEEDS = [{"layers": 0.33, "heads": 0.0, "ffn": 0.0}, {"layers": 0.0, "heads": 0.25, "ffn": 0.5},
                    {"layers": 0.33, "heads": 0.0, "ffn": 0.5}, {"layers": 0.5, "heads": 0.0, "ffn": 0.0},
                    {"layers": 0.5, "heads": 0.25, "ffn": 0.5}]
STRUCTURAL_PASSES = {"layers": "prune-layers", "heads": "prune-heads", "ffn": "prune-ffn"}
GRAPH_PASSES = ("onnxruntime", "openvino")  # backends that run one exported graph (no dynamic pass inside it)


def native_backends() -> list[str]:
    """The dense candidates this machine runs natively (BF16 only with native BF16 support)."""
    bf16 = "bf16" in native_dtypes(torch.device("cpu"))
    return [b for b in BACKENDS if bf16 or "bf16" not in b]


def dynamic_passes() -> dict[str, type[PassConfig]]:
    """Registered dynamic-inference passes usable with their defaults: ``{name: config class}``."""
    import_builtin_passes()
    found = {}
    for name in known_passes():
        try:
            config = PassConfig.from_dict({"pass": name})
        except RecipeError:
            continue
        module = type(config).__module__
        if module.startswith("autolite.dynamic.") and "rout" not in name:
            found[name] = type(config)
    return found


@dataclasses.dataclass
class Space:
    """What a search may choose from (recorded in optimize.json)."""

    backends: list[str]
    dynamic: list[str]
    ratios: dict[str, list[float]]
    recover_steps: int
    max_drop: float

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Draw one configuration from ``trial`` (an Optuna trial); returns its params."""
        params = {kind: trial.suggest_categorical(kind, values) for kind, values in self.ratios.items()}
        classes = dynamic_passes()
        for name in self.dynamic:
            params[f"dyn:{name}"] = trial.suggest_categorical(f"dyn:{name}", [False, True])
            if params[f"dyn:{name}"]:
                for field, values in _dynamic_fields(classes[name], self.max_drop).items():
                    params[f"dyn:{name}:{field}"] = trial.suggest_categorical(f"dyn:{name}:{field}", values)
        params["backend"] = trial.suggest_categorical("backend", self.backends)
        return params

    def seeds(self) -> list[dict[str, Any]]:
        """Trials to run first: the INT8 dense backends on the unpruned model, likely fastest first (what
        ``fast-dense`` alone picks on CPUs with INT8 units; FP32/BF16 backends are left to the sampler, or all
        backends when none is INT8), then the structural points (``STRUCTURAL_SEEDS``) on the first of them."""
        base = {kind: 0.0 for kind in self.ratios}
        base.update({f"dyn:{name}": False for name in self.dynamic})
        int8 = [b for b in INT8_SEEDS if b in self.backends]
        seeds = [dict(base, backend=b) for b in (int8 or self.backends)]
        int8 = int8[0] if int8 else self.backends[-1]
        for point in STRUCTURAL_SEEDS:
            if all(point[k] in self.ratios[k] for k in point):
                seeds.append(dict(base, **point, backend=int8))
        return seeds


def _dynamic_fields(config_cls: type[PassConfig], max_drop: float) -> dict[str, list]:
    fields = {f.name for f in dataclasses.fields(config_cls)}
    space = dict(getattr(config_cls, "search_space", None) or {})
    if "max_drop" in fields:
        space.setdefault("max_drop", [round(max_drop / 2, 3), max_drop])
    return {k: v for k, v in space.items() if k in fields}


def make_space(max_drop: float, recover_steps: int, backends: list[str] | None = None,
               num_layers: int | None = None) -> Space:
    """The default space for a classifier on this machine."""
    ratios = {k: list(v) for k, v in RATIOS.items()}
    if num_layers is not None and num_layers < 3:
        ratios["layers"] = [0.0, 0.5]
    chosen = native_backends() if backends is None else backends
    return Space(backends=chosen, dynamic=sorted(dynamic_passes()), ratios=ratios,
                 recover_steps=recover_steps, max_drop=max_drop)


def structural_passes(params: dict[str, Any], recover_steps: int) -> list[dict[str, Any]]:
    """Layers, heads, FFN cut by the params' ratios; the last cut carries the recovery (distillation)."""
    passes: list[dict[str, Any]] = []
    for kind in ("layers", "heads", "ffn"):
        ratio = float(params.get(kind, 0.0))
        if ratio > 0:
            passes.append({"pass": STRUCTURAL_PASSES[kind], "ratio": ratio})
    if passes and recover_steps > 0:
        if passes[-1]["pass"] == "prune-layers":  # prune-layers has no recovery: a zero-ratio FFN pass does it
            passes.append({"pass": "prune-ffn", "ratio": 0.0})
        passes[-1]["recover_steps"] = recover_steps
        passes[-1]["recover_from"] = "original"  # a replay distils from the unpruned model, as the search did
    return passes


def runtime_passes(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The dynamic passes switched on (with their searched fields), then the dense backend's passes."""
    passes = []
    for key, value in sorted(params.items()):
        if key.startswith("dyn:") and key.count(":") == 1 and value:
            name = key.split(":", 1)[1]
            fields = {k.rsplit(":", 1)[1]: v for k, v in params.items() if k.startswith(f"{key}:")}
            passes.append({"pass": name, **fields})
    return passes + candidate_passes(params["backend"])


def structural_key(passes: list[dict[str, Any]]) -> str:
    """A stable name for a structural setting (the cache key of its pruned model)."""
    if not passes:
        return "dense"
    return "-".join(f"{p['pass'].split('-')[1]}{p.get('ratio', 0):g}" for p in passes) + (
        f"-r{passes[-1].get('recover_steps', 0)}")


def screen_passes(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The params' structure cut cheaply for timing only: no recovery, no least-squares refit, magnitude
    importance (which units go does not change the speed; their shapes do)."""
    cheap = {"recover_steps": 0, "reconstruct": False, "importance": "magnitude"}
    return [p if p["pass"] == "prune-layers" else dict(p, **cheap) for p in structural_passes(params, 0)]


def is_structural(params: dict[str, Any]) -> bool:
    return any(params.get(k) for k in STRUCTURAL_PASSES)


def has_dynamic(params: dict[str, Any]) -> bool:
    return any(v is True for k, v in params.items() if k.startswith("dyn:") and k.count(":") == 1)


def is_dense(params: dict[str, Any]) -> bool:
    """Only a dense backend: no pruning, no dynamic pass (what ``fast-dense`` alone could pick)."""
    return not is_structural(params) and not has_dynamic(params)


def is_graph_backend(backend: str) -> bool:
    """Whether ``backend`` runs the model as one exported graph (ONNX Runtime, OpenVINO)."""
    return any(p["pass"] in GRAPH_PASSES for p in candidate_passes(backend))


def describe(params: dict[str, Any]) -> str:
    """A short label for plots and tables, e.g. ``L0.5 H0.25 F0 +early-exit ort-int8``."""
    label = " ".join(f"{k[0].upper()}{params.get(k, 0):g}" for k in ("layers", "heads", "ffn"))
    dyn = "".join(f" +{k.split(':')[1]}" for k, v in sorted(params.items()) if k.count(":") == 1 and v is True)
    return f"{label}{dyn} {params.get('backend', '?')}"


def params_json(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)
