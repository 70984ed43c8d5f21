"""Knowledge distillation: losses, students built from a teacher, a resumable trainer.

::

    from autolite.distill import build_student, distill, TrainConfig
    student = build_student(teacher, family, layers=3)
    result = distill(teacher, student, tokenizer, family, TrainConfig(steps=200), out_dir="ckpt")
"""
from autolite.distill.losses import (DistillLoss, attention_alignment_loss, embedding_cosine_loss,
                                     hidden_mse_loss, kd_loss)
from autolite.distill.student import build_student, select_layers
from autolite.distill.train import TrainConfig, TrainResult, distill

__all__ = ["DistillLoss", "TrainConfig", "TrainResult", "attention_alignment_loss", "build_student", "distill",
           "embedding_cosine_loss", "hidden_mse_loss", "kd_loss", "select_layers"]
