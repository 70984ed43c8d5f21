"""The distillation trainer: deterministic data order, periodic evaluation, checkpoints, exact resume.

Determinism: batch ``s`` is a pure function of (seed, step) (a seeded permutation per epoch), the RNG is
reseeded at every step (dropout), the learning rate is a function of the step, and the optimizer state
is checkpointed. So a run interrupted and resumed from its checkpoint ends with the same weights as an
uninterrupted one (same machine and thread count).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch

from autolite.arch import ArchSpec
from autolite.data import TextData
from autolite.distill.augment import Augmenter
from autolite.distill.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from autolite.distill.losses import DistillLoss
from autolite.distill.model_io import capture_qkv, forward_outputs, hidden_width
from autolite.errors import AutoliteError, DataError, NumericsError, RecipeError
from autolite.eval.fidelity import evaluate

log = logging.getLogger(__name__)
_RESUME_KEYS = ("seed", "batch_size", "max_length", "freeze_embeddings", "kd", "hidden", "attention", "cosine",
                "temperature", "alpha", "augment", "hidden_layers")


@dataclasses.dataclass
class TrainConfig:
    """Budget (``steps`` and/or ``minutes``), optimisation, loss weights and data augmentation.

    None means the kind's default. ``augment``: share of training samples that are augmented variants
    (see :mod:`autolite.distill.augment`; default 0.7 for unlabeled encoder data, else 0).
    ``hidden_layers``: ``"mapped"`` aligns every student layer with the teacher layer it was copied
    from (students built by :func:`build_student`), ``"last"`` only the last hidden state.
    """

    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 16
    max_length: int = 128
    lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    eval_texts: int = 64
    checkpoint_every: int = 50
    freeze_embeddings: bool = True
    kd: float | None = None
    hidden: float | None = None
    attention: float = 0.0
    cosine: float | None = None
    temperature: float = 2.0
    alpha: float = 0.5
    augment: float | None = None
    hidden_layers: str = "mapped"

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise RecipeError("give a training budget: steps and/or minutes")
        if (self.steps is not None and self.steps < 1) or (self.minutes is not None and self.minutes <= 0):
            raise RecipeError("steps must be >= 1 and minutes > 0")
        if self.batch_size < 1 or self.lr <= 0:
            raise RecipeError("batch_size must be >= 1 and lr > 0")
        if self.augment is not None and not 0.0 <= self.augment <= 1.0:
            raise RecipeError(f"augment is the share of augmented samples, 0..1; got {self.augment}")
        if self.hidden_layers not in ("mapped", "last"):
            raise RecipeError(f"hidden_layers must be 'mapped' or 'last', got '{self.hidden_layers}'")

    def loss_weights(self, kind: str) -> dict[str, float]:
        """Defaults: encoders align pooled embeddings, hidden states and logits; decoders distil logits."""
        encoder = kind == "encoder"
        pick = lambda value, default: default if value is None else value  # noqa: E731
        return {"kd": pick(self.kd, 1.0), "hidden": pick(self.hidden, 1.0 if encoder else 0.0),
                "attention": self.attention, "cosine": pick(self.cosine, 4.0 if encoder else 0.0)}

    def augment_share(self, kind: str, labelled: bool) -> float:
        """Share of augmented samples: labels do not survive augmentation, decoders keep real text."""
        if self.augment is not None:
            return self.augment
        return 0.7 if kind == "encoder" and not labelled else 0.0


@dataclasses.dataclass
class TrainResult:
    student: torch.nn.Module
    step: int
    elapsed_s: float
    history: list[dict[str, Any]]
    stopped: str  # "steps" | "minutes"


def check_compatible(teacher: torch.nn.Module, student: torch.nn.Module, student_tokenizer: Any = None,
                     teacher_tokenizer: Any = None) -> None:
    """Teacher and student must share the tokenizer (same vocabulary): the losses compare them token by token."""
    t_vocab = teacher.get_input_embeddings().num_embeddings
    s_vocab = student.get_input_embeddings().num_embeddings
    same_tok = (student_tokenizer is None or teacher_tokenizer is None
                or student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab())
    if t_vocab != s_vocab or not same_tok:
        raise AutoliteError(f"teacher and student use different tokenizers (vocabularies {t_vocab} vs {s_vocab} "
                            "tokens); build the student from the teacher (--student-layers) or use one tokenizer")


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of batch ``step``: epoch ``e`` walks a permutation seeded by (seed, e); last partial batch dropped."""
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    epoch, index = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return order[index * batch_size:(index + 1) * batch_size].tolist()


def lr_at(config: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to 5% over the budget: steps, or elapsed time under a time budget."""
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    if config.steps is not None:
        done = step / config.steps
    else:
        done = elapsed_s / (config.minutes * 60)
    return config.lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0))))


class Trainer:
    """One distillation run of ``student`` towards ``teacher``; see :func:`distill`."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, tokenizer: Any, family: ArchSpec,
                 config: TrainConfig, data: TextData, heldout: TextData | None, checkpoint_dir: Path | None) -> None:
        if not data.texts:
            raise DataError("no training texts")
        check_compatible(teacher, student)
        self.teacher, self.student, self.tokenizer, self.family = teacher.eval(), student, tokenizer, family
        self.config, self.data, self.heldout, self.checkpoint_dir = config, data, heldout, checkpoint_dir
        for p in teacher.parameters():
            p.requires_grad_(False)
        if config.freeze_embeddings:  # the student's copied token embeddings stay as the teacher's (faster)
            student.get_input_embeddings().weight.requires_grad_(False)
        self.loss = DistillLoss(family.kind, hidden_width(student), hidden_width(teacher),
                                temperature=config.temperature, alpha=config.alpha,
                                layer_pairs=layer_pairs(student, config), **config.loss_weights(family.kind))
        share = config.augment_share(family.kind, data.labels is not None)
        self.augmenter = Augmenter(tokenizer, data.texts, config.max_length, share, config.seed)
        params = [p for p in (*student.parameters(), *self.loss.parameters()) if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, foreach=False)
        self.step, self.elapsed, self.history = 0, 0.0, []
        self._qkv = config.attention > 0

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"student": self.student, "loss": self.loss}

    def resume(self) -> bool:
        """Load the checkpoint when there is one (config must match); returns whether it resumed."""
        if self.checkpoint_dir is None or not has_checkpoint(self.checkpoint_dir):
            return False
        state = load_checkpoint(self.checkpoint_dir, self.modules(), self.optimizer)
        saved = state.get("config", {})
        current = dataclasses.asdict(self.config)
        changed = [k for k in _RESUME_KEYS if k in saved and saved[k] != current[k]]
        if changed:
            raise AutoliteError(f"checkpoint {self.checkpoint_dir} was made with different {changed}; "
                                "use the same settings or another output directory")
        self.step, self.elapsed, self.history = state["step"], state["elapsed_s"], state["history"]
        log.info("resumed from %s at step %d", self.checkpoint_dir, self.step)
        return True

    def save(self) -> None:
        if self.checkpoint_dir is None:
            return
        state = {"step": self.step, "elapsed_s": self.elapsed, "history": self.history,
                 "config": dataclasses.asdict(self.config)}
        save_checkpoint(self.checkpoint_dir, self.modules(), self.optimizer, state)

    def evaluate(self) -> dict[str, Any]:
        """Held-out fidelity of the student vs the teacher (cosine for encoders, perplexity for decoders)."""
        if self.heldout is None:
            return {}
        self.student.eval()
        with torch.no_grad():
            result = evaluate(self.student, self.tokenizer, reference=self.teacher, data=self.heldout,
                              family=self.family, max_texts=self.config.eval_texts, max_length=self.config.max_length)
        keys = ("cosine", "top1_agreement", "next_token_agreement", "perplexity", "perplexity_ref")
        return {k: result[k] for k in keys if k in result}

    def train_step(self) -> dict[str, float]:
        """One optimisation step on batch ``self.step``; raises NumericsError on NaN/inf (weights untouched)."""
        config = self.config
        torch.manual_seed(config.seed * 7919 + self.step)
        idx = batch_indices(len(self.data.texts), config.batch_size, self.step, config.seed)
        batch = self.augmenter.batch(idx, self.step)
        labels = self._labels(batch, idx)
        self.student.train()
        with torch.no_grad(), capture_qkv(self.teacher, self.family, self._qkv) as t_qkv:
            teacher_out = forward_outputs(self.teacher, batch)
        with capture_qkv(self.student, self.family, self._qkv) as s_qkv:
            student_out = forward_outputs(self.student, batch)
        teacher_out["qkv"], student_out["qkv"] = t_qkv, s_qkv
        total, parts = self.loss(student_out, teacher_out, batch["attention_mask"], labels)
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(total):
            total.backward()
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if not torch.isfinite(total) or not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(float(total.detach()))
        lr = lr_at(config, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        return dict(parts, loss=float(total.detach()), lr=lr, tokens=int(batch["attention_mask"].sum()))

    def _labels(self, batch: dict[str, torch.Tensor], idx: list[int]) -> torch.Tensor | None:
        if self.family.kind == "decoder":
            return batch["input_ids"]
        if self.data.labels is not None and not self.augmenter.augment:
            return torch.tensor([self.data.labels[i] for i in idx])
        return None

    def _diverged(self, loss: float) -> None:
        self.save()  # the weights are still those of the last good step
        where = (f"; the last good state (step {self.step}) is kept in {self.checkpoint_dir}"
                 if self.checkpoint_dir else "")
        raise NumericsError(f"training diverged: loss is {loss} (or gradients non-finite) at step {self.step}"
                            f"{where}; lower the learning rate (--lr) and resume")

    def done(self) -> str | None:
        if self.config.steps is not None and self.step >= self.config.steps:
            return "steps"
        if self.config.minutes is not None and self.elapsed >= self.config.minutes * 60:
            return "minutes"
        return None

    def run(self, progress: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
        """Train until the budget is spent, evaluating and checkpointing periodically."""
        config = self.config
        if self.step == 0 and not self.history:
            self.history.append({"step": 0, "eval": self.evaluate()})
        try:
            while (stopped := self.done()) is None:
                start = time.perf_counter()
                metrics = self.train_step()
                record: dict[str, Any] = {"step": self.step, **metrics}
                self.elapsed += time.perf_counter() - start
                if self.step % config.eval_every == 0 or self.done():
                    record["eval"] = self.evaluate()
                self.history.append(record)
                if self.step % config.checkpoint_every == 0 or self.done():
                    self.save()
                if progress is not None:
                    progress(self.step, record)
        except KeyboardInterrupt:
            self.save()
            raise
        self.student.eval()
        return TrainResult(self.student, self.step, self.elapsed, self.history, stopped)


def layer_pairs(student: torch.nn.Module, config: TrainConfig) -> list[tuple[int, int]] | None:
    """(student, teacher) hidden-state indices: each student layer's output vs the output of the teacher
    layer it was copied from (index 0 = embeddings); None when the student does not record its origin."""
    origin = getattr(student.config, "autolite_student_of", None)
    if config.hidden_layers != "mapped" or not isinstance(origin, dict) or not origin.get("layers"):
        return None
    return [(j + 1, t + 1) for j, t in enumerate(origin["layers"])]


def distill(teacher: torch.nn.Module, student: torch.nn.Module, tokenizer: Any, family: ArchSpec,
            config: TrainConfig, data: TextData, heldout: TextData | None = None,
            checkpoint_dir: str | Path | None = None, resume: bool = True,
            progress: Callable[[int, dict[str, Any]], None] | None = None,
            student_tokenizer: Any = None) -> TrainResult:
    """Distil ``teacher`` into ``student`` (in place) on ``data``; resumes from ``checkpoint_dir`` if present.

    ``student_tokenizer``: when the student comes with its own tokenizer, it must equal the teacher's.
    """
    check_compatible(teacher, student, student_tokenizer, tokenizer)
    trainer = Trainer(teacher, student, tokenizer, family, config, data, heldout,
                      Path(checkpoint_dir) if checkpoint_dir else None)
    if resume:
        trainer.resume()
    return trainer.run(progress)


def final_metric(history: list[dict[str, Any]], key: str) -> float | None:
    """The last evaluated value of ``key`` in a history (NaN-safe)."""
    for record in reversed(history):
        value = record.get("eval", {}).get(key)
        if value is not None and not math.isnan(value):
            return value
    return None
