"""The QAT training driver: a fake-quantized copy of the model distilled from the FP32 model itself."""
from __future__ import annotations

import copy
import dataclasses

from torch import nn

from autolite.distill.train import distill
from autolite.errors import RecipeError
from autolite.passes import compress
from autolite.quant.qat import prepare_qat, prepare_qat_from_packed
from autolite.quant.weight_only import WeightOnly


def gptq_start(model: nn.Module, tokenizer, family, texts: list[str] | None, group_size: int = 64,
               embedding: bool = True, calib_tokens: int = 8192, method: str = "gptq") -> nn.Module:
    """A copy of ``model`` quantized as the ``w4gG`` presets (GPTQ, asymmetric, INT8 embedding when asked):
    the starting point of ``init="gptq"``. ``method="rtn"`` builds the same modules by rounding alone, for a
    run resumed from a checkpoint (which holds every trained weight, scale and zero)."""
    config = WeightOnly(bits=4, group_size=group_size, symmetric=False, method=method, embedding=embedding,
                        calib_tokens=calib_tokens)
    return compress(copy.deepcopy(model), [config], calib=texts, tokenizer=tokenizer, family=family)


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
