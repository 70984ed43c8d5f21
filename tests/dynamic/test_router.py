"""Fast/main path routing on tiny BERT: counts per path, each path sees only its rows, reload, bad input."""
import copy

import pytest
import torch
import transformers

import autolite
from autolite.dynamic.router import PATHS, Route, RoutedForSequenceClassification
from autolite.errors import RecipeError
from autolite.passes import PassContext

FAST = [{"pass": "prune-heads", "ratio": 0.5, "importance": "magnitude", "reconstruct": False}]
TEXTS = ["Short.", "Tiny one.", "A somewhat longer sentence with more than six tokens in it.",
         "Another fairly long sentence that should go to the main model.", "Ok.", "Yes no maybe so."] * 4


@pytest.fixture(scope="module")
def bert():
    model, tok, _ = autolite.load("random:tiny-bert")
    return model, tok


def routed(bert, **options):
    model, tok = bert
    ctx = PassContext(tokenizer=tok, calib=TEXTS, labels=[i % 2 for i in range(len(TEXTS))])
    return autolite.compress(copy.deepcopy(model), [Route(fast=FAST, **options)], ctx=ctx), ctx


def test_length_routing_counts_and_each_path_sees_only_its_rows(bert):
    unit, _ = routed(bert, max_tokens=6, cascade=False)
    tok = bert[1]
    batch = tok(TEXTS[:6], padding=True, return_tensors="pt")
    seen = {}
    unit.fast.register_forward_pre_hook(lambda m, a, kw: seen.update(fast=kw["input_ids"].shape), with_kwargs=True)
    unit.main.register_forward_pre_hook(lambda m, a, kw: seen.update(main=kw["input_ids"].shape), with_kwargs=True)
    with torch.no_grad():
        out = unit(**batch)
    short = batch["attention_mask"].sum(1) <= 6
    assert seen["fast"][0] == int(short.sum()) and seen["main"][0] == int((~short).sum())
    assert seen["fast"][1] <= 6  # the fast rows are trimmed to their own length
    assert out.routes.tolist() == [PATHS.index("fast") if s else PATHS.index("main") for s in short]
    assert unit.route_counts["fast"] == int(short.sum()) and unit.route_counts["main"] == int((~short).sum())
    with torch.no_grad():
        main_only = unit.main(**{k: v[~short] for k, v in batch.items()}).logits
    assert torch.allclose(out.logits[~short], main_only, atol=1e-5)


def test_cascade_escalates_low_confidence_rows(bert):
    unit, _ = routed(bert, tau=1.0)
    batch = bert[1](TEXTS[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = unit(**batch)
    assert out.routes.tolist() == [PATHS.index("escalated")] * 6  # a random head is never fully sure
    assert unit.route_counts["escalated"] == 6


def test_saved_pair_reloads_bit_identical(bert, tmp_path):
    unit, ctx = routed(bert, max_tokens=8, max_drop=50.0)
    assert any(note.startswith("route: tau") for note in ctx.notes)
    autolite.save_model(unit, bert[1], tmp_path / "pair")
    assert (tmp_path / "pair" / "fast" / "config.json").is_file()
    again, tok, _ = autolite.load(str(tmp_path / "pair"))
    assert isinstance(again, RoutedForSequenceClassification) and again.tau == unit.tau
    batch = tok(TEXTS[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        a, b = unit(**batch), again(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.routes, b.routes)


def test_fast_path_with_other_labels_or_tokenizer_is_an_error(bert, tmp_path):
    model, tok = bert
    config = copy.deepcopy(model.config)
    config.num_labels, config.id2label, config.label2id = 3, {0: "a", 1: "b", 2: "c"}, {"a": 0, "b": 1, "c": 2}
    autolite.save_model(transformers.BertForSequenceClassification(config), tok, tmp_path / "labels")
    with pytest.raises(RecipeError, match="another label set"):
        autolite.compress(model, [Route(fast=str(tmp_path / "labels"))], calib=TEXTS, tokenizer=tok)
    other = copy.deepcopy(tok)
    other.add_tokens(["zzqxv"])
    autolite.save_model(model, other, tmp_path / "tok")
    with pytest.raises(RecipeError, match="another tokenizer"):
        autolite.compress(model, [Route(fast=str(tmp_path / "tok"))], calib=TEXTS, tokenizer=tok)


def test_bad_settings_and_models_without_classifier_are_errors(bert):
    with pytest.raises(RecipeError, match=r"tau must be in \(0, 1\]"):
        Route(tau=1.2)
    with pytest.raises(RecipeError, match="max_tokens"):
        Route(cascade=False)
    bare = transformers.BertModel(bert[0].config)
    with pytest.raises(RecipeError, match="sequence classifier"):
        autolite.compress(bare, [Route()], calib=TEXTS, tokenizer=bert[1])


def test_server_counts_rows_per_path(bert):
    import asyncio

    import httpx

    from autolite.serve import Engine, ServeConfig, create_app

    unit, _ = routed(bert, max_tokens=6, cascade=False)
    app = create_app(Engine(unit, bert[1], autolite.arch.family_of(unit.main), name="pair"),
                     ServeConfig(threads=1))

    def rows(path: str) -> float:
        return app.state.metrics.registry.get_sample_value("autolite_route_rows_total", {"path": path}) or 0.0

    async def body():
        async with app.router.lifespan_context(app):
            before = {p: rows(p) for p in PATHS}
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                reply = await client.post("/v1/classify", json={"input": ["Ok.", TEXTS[2], TEXTS[3]]})
            return reply, before

    reply, before = asyncio.run(body())
    assert reply.status_code == 200 and len(reply.json()["data"]) == 3
    assert rows("fast") - before["fast"] == 1 and rows("main") - before["main"] == 2


def test_saved_fast_path_with_default_labels_is_accepted(bert, tmp_path):
    model, tok = bert  # default LABEL_i names: transformers leaves id2label out of config.json
    autolite.save_model(model, tok, tmp_path / "copy")
    unit = autolite.compress(copy.deepcopy(model), [Route(fast=str(tmp_path / "copy"), max_tokens=6, cascade=False)],
                             calib=TEXTS, tokenizer=tok)
    assert isinstance(unit, RoutedForSequenceClassification)
