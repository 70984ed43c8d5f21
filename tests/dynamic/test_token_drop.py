"""Token dropping on tiny BERT: shapes, later layers really see fewer tokens, reload bit-identical, bad input."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import autolite
from autolite.dynamic.drop_encoder import keep_counts, select
from autolite.dynamic.token_drop import TokenDrop, install
from autolite.errors import RecipeError, UnsupportedArchitectureError
from autolite.eval.forward import tokenize

LONG = ["the cat sat on the mat and looked at the long row of houses across the quiet street " * 2,
        "a second sentence that is somewhat shorter than the first one but still long enough here"]


def _layer_lengths(model: torch.nn.Module) -> tuple[list[int], list]:
    """Pre-hooks recording the sequence length each layer's FFN (``intermediate``) computes on."""
    seen: list[int] = []
    hooks = [layer.intermediate.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
             for layer in model.bert.encoder.layer]
    return seen, hooks


def test_dropped_tokens_are_not_computed_in_later_layers(tiny_bert, tokenizer):
    model, _, _ = tiny_bert
    batch = tokenize(tokenizer, LONG)
    seq = batch["input_ids"].shape[1]
    install(model, [1.0, 0.5], min_length=4, output="restore")
    seen, hooks = _layer_lengths(model)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    assert seen == [seq, -(-seq // 2)]
    assert out.logits.shape == (2, 2)
    assert out.hidden_states[-1].shape[:2] == (2, seq)  # restored to the input length


def test_full_schedule_and_short_inputs_match_dense(tiny_bert, tokenizer):
    model, _, _ = tiny_bert
    dense = copy.deepcopy(model)
    batch = tokenize(tokenizer, ["short text"])
    install(model, [1.0, 0.5], min_length=16, output="restore")  # "short text" is 4 tokens: runs unchanged
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, dense(**batch).logits)
    install(dense, [1.0, 1.0], min_length=1, output="restore")
    long = tokenize(tokenizer, LONG)
    with torch.no_grad():
        reference = copy.deepcopy(dense)
        reference.bert.encoder.schedule = (1.0, 1.0)
        assert torch.equal(dense(**long).logits, reference(**long).logits)


def test_select_keeps_special_tokens_and_ranks_padding_last():
    received = torch.tensor([[0.0, 5.0, 0.1, 4.0, 0.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, True, True, True, False, False]])
    keep = select(received, valid, 3)
    assert keep.tolist() == [[0, 1, 4]]  # [CLS], the most attended real token, the final [SEP] at position 4
    assert select(received, None, 3).tolist() == [[0, 5, 6]]
    assert keep_counts((1.0, 0.5, 0.25), 8, min_length=8) is None
    assert keep_counts((1.0, 0.5, 0.25), 20, min_length=8) == [20, 10, 5]


def test_kept_mean_output_pools_over_kept_tokens(tiny_bert, tokenizer):
    model, _, _ = tiny_bert
    batch = tokenize(tokenizer, LONG[:1])
    install(model, [1.0, 0.3], min_length=4, output="kept-mean")
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state[0]  # (T, H)
    distinct = torch.unique(hidden, dim=0)
    assert distinct.shape[0] <= -(-hidden.shape[0] * 3 // 10) + 1  # kept tokens + one shared mean row


def test_compress_save_load_is_bit_identical(tmp_path, tiny_bert, tokenizer):
    model, tok, family = tiny_bert
    texts = LONG + ["one more text about dogs and cats and the weather in spring", "quite short"]
    autolite.passes.import_builtin_passes()
    small = autolite.compress(model, [TokenDrop(max_drop=100.0, rates=[0.5, 0.9], starts=[1], score="cls"),
                                      autolite.config.PassConfig.from_dict({"pass": "int8-dynamic"})],
                              calib=texts, tokenizer=tok, family=family)
    assert small.config.token_drop["schedule"] == [1.0, 0.5]  # the cheapest within a 100-point budget
    autolite.save_model(small, tok, tmp_path / "out")
    loaded, _, _ = autolite.load(tmp_path / "out")
    batch = tokenize(tokenizer, LONG)
    with torch.no_grad():
        assert torch.equal(small(**batch).logits, loaded(**batch).logits)
    assert type(loaded.bert.encoder).__name__ == "TokenDropEncoder" and loaded.bert.encoder.score == "cls"


def test_search_with_labels_respects_the_accuracy_bound(tiny_bert, tokenizer):
    model, tok, family = tiny_bert
    texts = LONG * 3
    ctx = autolite.passes.PassContext(family=family, tokenizer=tok, calib=texts, labels=[0, 1] * 3)
    config = TokenDrop(max_drop=0.0, rates=[0.5, 0.9], starts=[1])
    small = autolite.passes.handler_for(config).apply(model, config, ctx)
    assert small.config.token_drop["schedule"][0] == 1.0
    assert config.schedule is None  # the input config is not mutated
    assert any("token-drop: schedule" in note for note in ctx.notes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule=[1.0, 0.05], min_length=16), "fewer than the 2 special tokens"),
    (dict(schedule=[0.5, 0.5]), "schedule[0] must be 1"),
    (dict(schedule=[1.0, 0.5, 0.8]), "must not rise"),
    (dict(schedule=[1.0, 0.0]), "shares in (0, 1]"),
    (dict(output="drop"), "output must be one of"),
    (dict(score="magnitude"), "score must be one of"),
    (dict(rates=[1.5]), "rates in (0, 1)"),
])
def test_bad_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(RecipeError, match=None) as info:
        TokenDrop(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_wrong_length_and_architecture_fail_before_work(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    with pytest.raises(RecipeError, match="has 2 layers"):
        autolite.compress(model, [TokenDrop(schedule=[1.0, 0.5, 0.5])], calib=texts, tokenizer=tok)
    distil, tok, _ = load_model("tiny-distilbert")
    with pytest.raises(UnsupportedArchitectureError, match="BERT-like"):
        autolite.compress(distil, [TokenDrop(schedule=[1.0, 0.5])], calib=texts, tokenizer=tok)


def test_recipe_file_round_trip():
    recipe = autolite.load_recipe(Path(__file__).parents[2] / "recipes" / "minilm-token-drop.yaml")
    assert recipe.passes[0].name == "token-drop"


def test_onnx_runtime_after_token_drop_is_a_clear_error(load_model, texts):
    pytest.importorskip("onnxruntime")
    from autolite.errors import BackendUnavailableError

    model, tok, family = load_model("tiny-bert")
    autolite.passes.import_builtin_passes()
    recipe = [TokenDrop(schedule=[1.0, 0.5]), autolite.config.PassConfig.from_dict({"pass": "onnxruntime"})]
    with pytest.raises(BackendUnavailableError, match="cannot be exported to ONNX"):
        autolite.compress(model, recipe, calib=texts, tokenizer=tok, family=family)


@pytest.mark.slow
def test_token_drop_composes_with_int8_and_compile(load_model, tokenizer):
    model, tok, family = load_model("tiny-bert")
    autolite.passes.import_builtin_passes()
    recipe = [TokenDrop(schedule=[1.0, 0.5], min_length=4), autolite.config.PassConfig.from_dict({"pass": "int8-dynamic"})]
    eager = autolite.compress(model, recipe, tokenizer=tok, family=family)
    compiled = autolite.compress(eager, [autolite.config.PassConfig.from_dict({"pass": "compile"})],
                                 tokenizer=tok, family=family)
    batch = tokenize(tokenizer, LONG)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**batch).logits, eager(**batch).logits, atol=1e-4, rtol=1e-4)


def test_recovery_distils_the_dropping_model(load_model):
    model, tok, family = load_model("tiny-bert")
    before = copy.deepcopy(model.bert.encoder.layer[1].output.dense.weight)
    ctx = autolite.passes.PassContext(family=family, tokenizer=tok, calib=LONG * 2, labels=[0, 1, 0, 1])
    config = TokenDrop(schedule=[1.0, 0.5], min_length=4, recover_steps=2, recover_batch=2)
    small = autolite.passes.handler_for(config).apply(model, config, ctx)
    assert not torch.equal(small.bert.encoder.layer[1].output.dense.weight, before)
    assert any("recovery 2 steps" in note for note in ctx.notes)
    assert not small.training


def test_search_starts_past_the_last_layer_fail_before_work(load_model):
    model, tok, family = load_model("tiny-bert")
    ctx = autolite.passes.PassContext(family=family, tokenizer=tok, calib=LONG)
    config = TokenDrop(starts=[5])
    with pytest.raises(RecipeError, match="leave no layer"):
        autolite.passes.handler_for(config).apply(model, config, ctx)
