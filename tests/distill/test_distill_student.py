"""Students keep teacher layers, with weights copied and a config that reloads with plain transformers."""
import pytest
import torch
import transformers

from autolite.distill.student import build_student, copy_check, select_layers
from autolite.errors import RecipeError


def test_select_layers():
    assert select_layers(6, 3) == [0, 2, 5]
    assert select_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert select_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(RecipeError, match="between 1"):
        select_layers(6, 7)


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-llama", "tiny-distilbert", "tiny-gpt2"])
def test_student_saves_and_reloads(load_model, preset, tmp_path):
    teacher, tok, family = load_model(preset)
    student = build_student(teacher, family, [1])
    assert len(family.layers(student)) == 1 and len(family.layers(teacher)) == 2
    assert getattr(student.config, family.config_keys["layers"]) == 1
    assert copy_check(teacher, student, family, [1])
    student.save_pretrained(tmp_path)
    reloaded = getattr(transformers, type(student).__name__).from_pretrained(tmp_path).eval()
    ids = tok(["hello world, a test"], return_tensors="pt")
    with torch.no_grad():
        a = student(**ids).logits
        b = reloaded(**ids).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_decoder_student_generates_with_cache(load_model):
    teacher, tok, family = load_model("tiny-llama")
    student = build_student(teacher, family, [1])
    ids = tok(["one two three"], return_tensors="pt")
    out = student.generate(input_ids=ids["input_ids"], max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
