from autolite.search.space import (Space, describe, is_dense, is_graph_backend, runtime_passes, screen_passes,
                                   structural_key, structural_passes)


def space(**kw):
    base = dict(backends=["int8-dynamic", "ort-int8"], dynamic=["early-exit"], ratios={"layers": [0.0, 0.5],
                "heads": [0.0, 0.25], "ffn": [0.0, 0.5]}, recover_steps=10, max_drop=1.0)
    return Space(**dict(base, **kw))


def test_layer_cut_gets_recovery_through_a_zero_ratio_ffn_pass():
    passes = structural_passes({"layers": 0.5, "heads": 0.0, "ffn": 0.0}, recover_steps=10)
    assert passes == [{"pass": "prune-layers", "ratio": 0.5}, {"pass": "prune-ffn", "ratio": 0.0, "recover_steps": 10,
                                                                 "recover_from": "original"}]
    assert structural_key(passes) == "layers0.5-ffn0-r10"
    assert structural_passes({"layers": 0.0, "heads": 0.0, "ffn": 0.0}, 10) == []


def test_runtime_passes_put_dynamic_before_the_backend():
    params = {"layers": 0.0, "dyn:early-exit": True, "dyn:early-exit:max_drop": 0.5, "backend": "int8-dynamic"}
    passes = runtime_passes(params)
    assert passes[0] == {"pass": "early-exit", "max_drop": 0.5} and [p["pass"] for p in passes] == ["early-exit",
                                                                                                  "int8-dynamic"]
    assert describe(params).endswith("+early-exit int8-dynamic")


def test_seeds_are_int8_dense_backends_then_structural_points_on_the_first():
    seeds = space().seeds()
    assert [s["backend"] for s in seeds[:2]] == ["ort-int8", "int8-dynamic"]
    assert all(s["layers"] == 0.0 and not s["dyn:early-exit"] for s in seeds[:2])
    assert {s["backend"] for s in seeds[2:]} == {"ort-int8"} and len(seeds) == 5
    assert not any(is_dense(s) for s in seeds[2:])
    assert [s["backend"] for s in space(backends=["fp32", "compile"]).seeds()[:2]] == ["fp32", "compile"]


def test_screen_cuts_the_same_shapes_without_recovery_or_refit():
    params = {"layers": 0.5, "heads": 0.25, "ffn": 0.0, "backend": "ort-int8"}
    assert screen_passes(params) == [{"pass": "prune-layers", "ratio": 0.5},
                                     {"pass": "prune-heads", "ratio": 0.25, "recover_steps": 0, "reconstruct": False,
                                      "importance": "magnitude"}]
    assert is_graph_backend("openvino-int8") and is_graph_backend("ort-int8") and not is_graph_backend("int8-dynamic")
