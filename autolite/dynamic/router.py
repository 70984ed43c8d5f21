"""The ``route`` pass: one unit holding a fast path and the main model, routing each row of a batch.

The fast path is a compressed copy of the main model (``fast``: a list of passes, a recipe name or file,
applied to a copy on the fit part of the calibration texts) or a saved model directory (same tokenizer and
label set, checked before any work). Rows go to the fast path by length (``max_tokens``: at most L real
tokens) and/or as a cascade (``cascade``: the fast path first, rows whose confidence -- max softmax
probability -- is below ``tau`` escalate to the main model). ``tau`` is calibrated on the held-out part of
the calibration texts: the lowest (fewest escalations) whose held-out accuracy stays within ``max_drop``
points of the main model's. Each path runs only its own rows, trimmed to their longest real length.

Saved with ``autolite.save_model``: the main model in the directory (its recipe ends with this pass, the
routing settings under ``autolite_route`` in config.json), the fast path in ``fast/`` with its own recipe;
``autolite.load`` rebuilds both bit-identically. Per-path row counts (``route_counts``) feed the server's
``/metrics``; :meth:`RoutedForSequenceClassification.path_report` gives ``autolite bench`` the route shares
and per-path latency on given texts.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import statistics
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from autolite.arch import family_for
from autolite.config import PassConfig, Recipe
from autolite.dynamic.calib import (check_budget, check_threshold, classifier_logits, has_classifier,
                                    split_calib, targets, text_batches)
from autolite.errors import ModelLoadError, RecipeError
from autolite.eval.bench import interleaved
from autolite.io import check_safetensors
from autolite.loading import _from_pretrained, load_tokenizer, model_class, read_config
from autolite.passes import PassContext, compress, register_pass
from autolite.prune import remote
from autolite.restore import load_compressed

log = logging.getLogger(__name__)
FAST_DIR = "fast"
PATHS = ("fast", "escalated", "main")  # fast only; fast then main; main only (by length)


@dataclasses.dataclass
class Route(PassConfig):
    """Route rows between a fast path and the main model (see module docstring).

    ``fast``: passes (list of ``{pass: ...}``), a recipe/preset name or file, or a saved model directory.
    ``max_tokens``: rows with at most this many real tokens may take the fast path (None: every row).
    ``cascade``: escalate fast-path rows below confidence ``tau`` (None: calibrated to ``max_drop`` points
    on the held-out ``holdout`` fraction of the calibration texts).
    """

    name = "route"
    fast: str | list[dict] = "int8-dynamic"
    max_tokens: int | None = None
    cascade: bool = True
    tau: float | None = None
    max_drop: float = 1.0
    holdout: float = 0.3
    max_length: int = 128

    def __post_init__(self) -> None:
        check_threshold(self.name, "tau", self.tau)
        check_budget(self.name, self.max_drop, self.holdout)
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise RecipeError(f"route: max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if self.max_tokens is None and not self.cascade:
            raise RecipeError("route: give max_tokens (route by length) and/or cascade: true")
        if not isinstance(self.fast, (str, list)) or not self.fast:
            raise RecipeError("route: fast must be a list of passes, a recipe name or file, or a model directory")


@dataclasses.dataclass
class RoutedOutput(ModelOutput):
    """Logits ``(B, C)``; each row's last hidden state from the path that answered it (zeros where the
    fast path's width differs); the path index of each row (see ``PATHS``)."""

    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    routes: torch.Tensor | None = None


class RoutedForSequenceClassification(nn.Module):
    """A fast path and the main classifier as one module; ``config`` is the main model's."""

    def __init__(self, main: nn.Module, fast: nn.Module, settings: dict[str, Any]) -> None:
        super().__init__()
        self.main, self.fast = main, fast
        self.max_tokens, self.cascade = settings.get("max_tokens"), bool(settings.get("cascade", True))
        self.tau = float(settings.get("tau") or 0.0)
        self.route_counts: Counter = Counter()  # rows per path since loading
        self._lock = threading.Lock()
        main.config.autolite_route = {"max_tokens": self.max_tokens, "cascade": self.cascade, "tau": self.tau}

    @property
    def config(self) -> Any:
        return self.main.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                **kwargs: Any) -> RoutedOutput:
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_type_ids}
        b = input_ids.shape[0]
        routes = torch.full((b,), PATHS.index("main"), dtype=torch.long)
        short = mask.sum(1).cpu() <= self.max_tokens if self.max_tokens else torch.ones(b, dtype=torch.bool)
        logits = hidden = None
        rows = short.nonzero().squeeze(1)
        if rows.numel():
            out = _run(self.fast, inputs, rows, output_hidden_states)
            logits = torch.zeros((b, out.logits.shape[-1]), device=out.logits.device)  # (B, C) FP32
            confident = out.logits.float().softmax(-1).amax(-1).cpu() >= self.tau if self.cascade else \
                torch.ones(rows.numel(), dtype=torch.bool)
            logits[rows[confident]] = out.logits[confident].float()
            routes[rows] = torch.where(confident, PATHS.index("fast"), PATHS.index("escalated"))
            hidden = _scatter_hidden(hidden, out, rows, confident, mask.shape, b)
        rows = (routes != PATHS.index("fast")).nonzero().squeeze(1)
        if rows.numel():
            out = _run(self.main, inputs, rows, output_hidden_states)
            if logits is None:
                logits = torch.zeros((b, out.logits.shape[-1]), device=out.logits.device)
            logits[rows] = out.logits.float()
            hidden = _scatter_hidden(hidden, out, rows, None, mask.shape, b)
        with self._lock:
            self.route_counts.update({PATHS[i]: int((routes == i).sum()) for i in range(len(PATHS))})
        return RoutedOutput(logits=logits, last_hidden_state=hidden, routes=routes)

    def save_pretrained(self, directory: str | Path, **options: Any) -> None:
        """The main model into ``directory``, the fast path into ``directory/fast``."""
        self.main.save_pretrained(str(directory), **options)
        sub = Path(directory) / FAST_DIR
        code = remote.prepare(self.fast)
        self.fast.save_pretrained(str(sub), **options)
        remote.write(sub, code)

    def route_shares(self, tokenizer: Any, texts: list[str], batch: int = 32,
                     max_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions ``(N,)`` and path per text ``(N,)`` (indices into ``PATHS``)."""
        preds, routes = [], []
        with torch.no_grad():
            for inputs in text_batches(tokenizer, texts, batch, max_length):
                out = self(**inputs)
                preds.append(out.logits.argmax(-1))
                routes.append(out.routes)
        return torch.cat(preds), torch.cat(routes)

    def path_report(self, tokenizer: Any, texts: list[str], labels: list[int] | None = None, batch: int = 32,
                    runs: int = 3, max_length: int = 128) -> dict[str, Any]:
        """Route shares, per-path accuracy (with ``labels``) and latency on ``texts``: the routed unit, the
        main model alone and the fast path alone over the same batches, timed interleaved (medians)."""
        preds, routes = self.route_shares(tokenizer, texts, batch, max_length)
        report: dict[str, Any] = {"texts": len(texts), "batch": batch, "max_tokens": self.max_tokens,
                                  "cascade": self.cascade, "tau": self.tau, "paths": {}}
        truth = torch.tensor(labels) if labels is not None else None
        for i, path in enumerate(PATHS):
            picked = routes == i
            entry = {"share": float(picked.float().mean()), "rows": int(picked.sum())}
            if truth is not None and bool(picked.any()):
                entry["accuracy"] = float((preds[picked] == truth[picked]).float().mean())
            report["paths"][path] = entry
        if truth is not None:
            report["accuracy"] = float((preds == truth).float().mean())
        timed = time_over_batches({"routed": self, "main": self.main, "fast": self.fast}, tokenizer, texts,
                                   batch, runs, max_length)
        report["ms_per_batch"] = timed
        report["speedup_vs_main"] = timed["main"] / timed["routed"]
        return report


def time_over_batches(models: dict[str, nn.Module], tokenizer: Any, texts: list[str], batch: int, runs: int,
                       max_length: int) -> dict[str, float]:
    """Median over ``runs`` of each model's mean milliseconds per batch of ``texts`` (interleaved A B C)."""
    batches = list(text_batches(tokenizer, texts, batch, max_length))

    def over_all(model: nn.Module):
        def run() -> None:
            with torch.no_grad():
                for inputs in batches:
                    model(**inputs)
        return run
    samples = interleaved({name: over_all(model) for name, model in models.items()}, runs=runs, warmup=1)
    return {name: statistics.median(values) / len(batches) for name, values in samples.items()}


def _run(model: nn.Module, inputs: dict[str, torch.Tensor | None], rows: torch.Tensor,
         hidden: bool) -> Any:
    """``model`` on the given rows only, trimmed to their longest real length."""
    mask = inputs["attention_mask"].index_select(0, rows.to(inputs["attention_mask"].device))
    length = int(mask.sum(0).nonzero().max()) + 1
    sub = {k: v.index_select(0, rows.to(v.device))[:, :length] for k, v in inputs.items() if v is not None}
    with torch.no_grad():
        return model(**sub, output_hidden_states=True) if hidden else model(**sub)


def _scatter_hidden(hidden: torch.Tensor | None, out: Any, rows: torch.Tensor, keep: torch.Tensor | None,
                    shape: torch.Size, b: int) -> torch.Tensor | None:
    """Put ``out``'s last hidden states of ``rows`` (where ``keep``) into the ``(B, T, H)`` result."""
    states = getattr(out, "hidden_states", None)
    if not states:
        return hidden
    last = states[-1]  # (R, T', H)
    if hidden is None:
        hidden = last.new_zeros((b, shape[1], last.shape[-1]))
    if last.shape[-1] == hidden.shape[-1]:
        pick = keep if keep is not None else torch.ones(rows.numel(), dtype=torch.bool)
        hidden[rows[pick], :last.shape[1]] = last[pick].to(hidden.dtype)
    return hidden


def check_compatible(main: nn.Module, tokenizer: Any, fast_config: dict[str, Any], fast_tokenizer: Any,
                     where: str) -> None:
    """One-line errors for a fast path with another tokenizer or label set."""
    if fast_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RecipeError(f"route: the fast path {where} has another tokenizer than the main model; "
                          "both paths must share one tokenizer")
    default = {i: f"LABEL_{i}" for i in range(int(fast_config.get("num_labels", 2)))}  # written only when not default
    labels = {int(k): v for k, v in (fast_config.get("id2label") or default).items()}
    main_labels = {int(k): v for k, v in (main.config.id2label or {}).items()}
    if labels != main_labels:
        raise RecipeError(f"route: the fast path {where} has another label set ({len(labels)} labels) than "
                          f"the main model ({len(main_labels)}); both must predict the same classes")


def load_model_only(directory: Path) -> nn.Module:
    """A saved (possibly autolite-compressed) model directory without its tokenizer."""
    config = read_config(directory)
    check_safetensors(directory)
    cls = model_class(config, family_for(config.get("model_type")))
    model = load_compressed(directory, cls) if config.get("autolite") else _from_pretrained(cls, directory)
    return model.eval()


def build_fast(model: nn.Module, config: Route, ctx: PassContext, fit_texts: list[str],
               fit_labels: list[int] | None) -> nn.Module:
    """The fast path: a saved directory (checked first) or ``config.fast`` applied to a copy of ``model``."""
    spec = config.fast
    if isinstance(spec, str) and Path(spec).is_dir():
        check_compatible(model, ctx.tokenizer, read_config(Path(spec)), load_tokenizer(Path(spec)), f"'{spec}'")
        return load_model_only(Path(spec))
    recipe = Recipe.from_dict({"passes": spec}, name="fast") if isinstance(spec, list) else spec
    sub = PassContext(family=ctx.family, tokenizer=ctx.tokenizer, calib=fit_texts, labels=fit_labels,
                      shape=ctx.shape)
    fast = compress(copy.deepcopy(model), recipe, ctx=sub)
    ctx.notes.extend(f"route fast path: {note}" for note in sub.notes)
    return fast.eval()


def calibrate_tau(fast_logits: torch.Tensor, main_logits: torch.Tensor, short: torch.Tensor,
                  truth: torch.Tensor, max_drop: float) -> tuple[float, float, float, float]:
    """(tau, held-out accuracy, main accuracy, escalated share of the short rows): the lowest tau within budget."""
    base = float((main_logits.argmax(-1) == truth).float().mean())
    conf = fast_logits.float().softmax(-1).amax(-1)
    for tau in torch.linspace(0.0, 1.0, 201).tolist()[1:]:
        use_fast = short & (conf >= tau)
        preds = torch.where(use_fast, fast_logits.argmax(-1), main_logits.argmax(-1))
        acc = float((preds == truth).float().mean())
        if acc >= base - max_drop / 100.0 - 1e-9:
            escalated = float((short & ~use_fast).sum()) / max(1, int(short.sum()))
            return tau, acc, base, escalated
    return 1.0 + 1e-6, base, base, 1.0  # nothing within budget: every short row escalates


@register_pass(Route, after_load=lambda model, config, ctx: attach_saved_fast(model))
def apply_route(model: nn.Module, config: Route, ctx: PassContext) -> nn.Module:
    """Build the fast path, calibrate ``tau`` (cascade), return the routed unit."""
    if not has_classifier(model):
        raise RecipeError(f"route needs a sequence classifier (both paths predict classes); "
                          f"{type(model).__name__} has no classification head")
    data = split_calib(ctx, "route", config.holdout)
    fast = build_fast(model, config, ctx, data.fit_texts, data.fit_labels)
    settings = {"max_tokens": config.max_tokens, "cascade": config.cascade, "tau": config.tau}
    main_logits = classifier_logits(model, ctx.tokenizer, data.held_texts, max_length=config.max_length)
    fast_logits = classifier_logits(fast, ctx.tokenizer, data.held_texts, max_length=config.max_length)
    lengths = torch.tensor([len(ids) for ids in ctx.tokenizer(data.held_texts, truncation=True,
                                                              max_length=config.max_length)["input_ids"]])
    short = lengths <= config.max_tokens if config.max_tokens else torch.ones(len(lengths), dtype=torch.bool)
    truth = targets(main_logits, data.held_labels)
    if config.cascade and config.tau is None:
        tau, acc, base, escalated = calibrate_tau(fast_logits, main_logits, short, truth, config.max_drop)
        settings["tau"] = tau
        ctx.note(f"route: tau {tau:.3f} calibrated on {len(truth)} held-out texts: accuracy {100 * acc:.2f} vs "
                 f"{100 * base:.2f} main, {100 * float(short.float().mean()):.1f}% to the fast path, "
                 f"{100 * escalated:.1f}% of those escalated")
    return RoutedForSequenceClassification(model, fast, settings).eval()


def attach_saved_fast(model: nn.Module) -> nn.Module:
    """On load: the main model is rebuilt; read the fast path from ``fast/`` beside it."""
    directory = Path(getattr(model.config, "_name_or_path", "") or ".")
    settings = getattr(model.config, "autolite_route", None)
    if not settings or not (directory / FAST_DIR / "config.json").is_file():
        raise ModelLoadError(f"{directory} is a routed model but its fast path ({FAST_DIR}/) or routing "
                             "settings are missing; save it again with autolite.save_model")
    return RoutedForSequenceClassification(model, load_model_only(directory / FAST_DIR), settings).eval()
