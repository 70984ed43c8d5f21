"""The compile pass gives Inductor freezing to its own compilation, never to the whole process."""
import torch
import torch._inductor.config as inductor_config

from autolite.passes import PassContext
from autolite.runtime.compile import Compile, apply_compile, compile_options


def test_freezing_is_a_per_compilation_option():
    assert compile_options(Compile()) == {"options": {"freezing": True}}
    assert compile_options(Compile(mode="max-autotune"))["options"]["max_autotune"] is True
    assert compile_options(Compile(backend="eager")) == {"mode": None}
    assert compile_options(Compile(freeze=False, mode="reduce-overhead")) == {"mode": "reduce-overhead"}


def test_compile_pass_leaves_the_global_inductor_flag_alone(load_model):
    model, _, _ = load_model("tiny-bert")
    before = inductor_config.freezing
    apply_compile(model, Compile(), PassContext())
    assert inductor_config.freezing == before and model._compiled_call_impl is not None
    torch._dynamo.reset()
