"""The QAT training driver and workflow: a fake-quantized copy of the model distilled from the FP32 model
itself (``run_qat``), and ``qat_to_dir`` behind ``autolite qat`` (data, GPTQ start, training, packed save)."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, ContextManager

from torch import nn

from autolite.data.distill_corpus import distill_training_texts
from autolite.distill.checkpoint import has_checkpoint
from autolite.distill.train import TrainConfig, distill
from autolite.distill.workflow import Progress, Stage, no_progress, quiet_stage, training_data
from autolite.errors import RecipeError
from autolite.export.hf import write_model_files
from autolite.io import atomic_dir
from autolite.paths import check_output_dir
from autolite.loading import load
from autolite.passes import compress
from autolite.quant.formats import engine_format, parse_format
from autolite.quant.qat import convert_qat, prepare_qat, prepare_qat_from_packed
from autolite.quant.weight_only import WeightOnly

log = logging.getLogger(__name__)


def gptq_start(model: nn.Module, tokenizer, family, texts: list[str] | None, group_size: int = 64,
               embedding: bool = True, calib_tokens: int = 8192, method: str = "gptq") -> nn.Module:
    """A copy of ``model`` quantized as the ``w4gG`` presets (GPTQ, asymmetric, INT8 embedding when asked):
    the starting point of ``init="gptq"``. ``method="rtn"`` builds the same modules by rounding alone, for a
    run resumed from a checkpoint (which holds every trained weight, scale and zero)."""
    config = WeightOnly(bits=4, group_size=group_size, symmetric=False, method=method, embedding=embedding,
                        calib_tokens=calib_tokens)
    return compress(copy.deepcopy(model), [config], calib=texts, tokenizer=tokenizer, family=family, inplace=True)


def run_qat(model: nn.Module, tokenizer, family, bits: int | dict[str, int], data, config, *,
            heldout=None, group_size: int | None = 64, mode: str = "ema", act_bits: int | None = None,
            checkpoint_dir=None, progress=None, init: str = "minmax", start: nn.Module | None = None,
            embedding: bool = True):
    """Short, bounded QAT: ``model`` (FP32) is the teacher of a fake-quantized copy trained with the
    distillation trainer (``config``: a ``TrainConfig``). Returns the TrainResult whose ``student`` still
    holds FakeQuantLinear modules; pass it to :func:`convert_qat` to fold the quantized weights.

    ``init="gptq"`` (4-bit, LSQ): start from ``start`` (a packed INT4 model, e.g. the ``w4g64`` preset) or
    from :func:`gptq_start` on the training texts (INT8 embedding with ``embedding``); step 0 is that model."""
    if init == "gptq":
        if bits != 4 or act_bits:
            raise RecipeError("QAT init gptq starts from GPTQ INT4 weights: use a w4gG format without act_bits")
        packed = copy.deepcopy(start) if start is not None else gptq_start(
            model, tokenizer, family, data.texts, group_size or 64, embedding)
        student = prepare_qat_from_packed(packed, mode)
        if not isinstance(student.get_input_embeddings(), nn.Embedding):  # INT8 rows: nothing to freeze or train
            config = dataclasses.replace(config, freeze_embeddings=False)
    else:
        student = prepare_qat(copy.deepcopy(model), family, bits, group_size, mode=mode, act_bits=act_bits,
                              init=init)
    for param in student.parameters():  # trains the same set whatever the teacher's (frozen) flags say
        param.requires_grad_(True)
    return distill(model, student, tokenizer, family, config, data, heldout, checkpoint_dir=checkpoint_dir,
                   progress=progress)


def format_and_init(fmt: str, init: str) -> tuple[int, int | None, str]:
    """(bits, group, init) for a QAT format and init (``auto``: gptq for 4-bit, search for w8), or a
    RecipeError that says what would work."""
    bits, group = parse_format(fmt, 64)
    if engine_format(fmt, 64, 1024) is None:
        raise RecipeError(f"--format {fmt} has no packed engine module; use w4g32/w4g64/w4g128/w4g256/w8")
    if init not in ("auto", "gptq", "search", "minmax"):
        raise RecipeError(f"--init must be auto, gptq, search or minmax, got '{init}'")
    init = ("gptq" if bits == 4 else "search") if init == "auto" else init
    if init == "gptq" and bits != 4:
        raise RecipeError(f"--init gptq starts from GPTQ INT4 weights; use a w4gG format or --init search with {fmt}")
    return bits, group, init


def qat_to_dir(model_name: str, out: Path, *, config: TrainConfig, fmt: str = "w4g64", data: Path | None = None,
               extra_text: bool = True, mode: str = "lsq", init: str = "auto", embedding: bool = True,
               force: bool = False, stage: Stage = quiet_stage,
               progress: Callable[[], ContextManager[Progress]] | None = None) -> dict[str, Any]:
    """QAT of ``model_name``'s linears to ``fmt`` distilled from the FP32 model, saved as packed modules in
    ``out`` (with ``qat.json``); resumes from ``out.checkpoint``. Returns the summary."""
    check_output_dir(out, overwrite=force)
    bits, group, init = format_and_init(fmt, init)
    train, heldout = training_data(data, extra_text)
    calib = distill_training_texts(extra=False) if extra_text and data is None else train  # GPTQ: calib split only
    with stage(f"loading {model_name}"):
        base, tokenizer, family = load(model_name)
    ckpt = out.with_name(out.name + ".checkpoint")
    start = None
    if init == "gptq":  # resuming: the same modules by rounding alone (the checkpoint holds the trained codes)
        method = "rtn" if has_checkpoint(ckpt) else "gptq"
        start = gptq_start(base, tokenizer, family, calib.texts, group or 64, embedding, method=method)
    with (progress or no_progress)() as on_step:  # after GPTQ: one live progress display at a time
        result = run_qat(base, tokenizer, family, bits, train, config, heldout=heldout, group_size=group,
                         mode=mode, checkpoint_dir=ckpt, progress=on_step, init=init, start=start)
    summary = _summary(model_name, fmt, mode, init, result, "cosine" if family.kind == "encoder" else "perplexity")
    real = convert_qat(result.student.eval())
    with atomic_dir(out, overwrite=force) as tmp:
        write_model_files(real, tokenizer, tmp)
        (tmp / "qat.json").write_text(json.dumps({"summary": summary, "history": result.history}, indent=1,
                                                 default=str), encoding="utf-8")
    shutil.rmtree(ckpt, ignore_errors=True)
    return summary


def _summary(model_name: str, fmt: str, mode: str, init: str, result: Any, key: str) -> dict[str, Any]:
    evals = [r["eval"] for r in result.history if r.get("eval", {}).get(key) is not None]
    return {"model": model_name, "format": fmt, "mode": mode, "init": init, "steps": result.step,
            "elapsed_s": result.elapsed_s, "stopped": result.stopped,
            key + "_start": evals[0][key] if evals else None, key + "_end": evals[-1][key] if evals else None,
            "fp32_" + key: evals[0].get("perplexity_ref") if key == "perplexity" else 1.0}
