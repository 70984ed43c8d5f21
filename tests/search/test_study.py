import optuna
from optuna.distributions import CategoricalDistribution

from autolite.search.study import follow_up, gate


def finished(study, params, val_acc, speedup, small_acc=90.0):
    dists = {k: CategoricalDistribution([v]) for k, v in params.items()}
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=dists, values=[val_acc, speedup],
        user_attrs={"params": params, "val_acc": val_acc, "speedup": speedup, "score": speedup,
                    "small_acc": small_acc}))


def test_a_structure_near_budget_is_queued_under_the_fastest_dense_backends():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"])
    dense = {"layers": 0.0, "heads": 0.0, "ffn": 0.0}
    for backend, speed in (("fp32", 1.0), ("ort-int8", 2.5), ("openvino-int8", 3.5), ("int8-dynamic", 2.0)):
        finished(study, dict(dense, backend=backend), 88.0, speed)
    finished(study, dict(dense, layers=0.5, backend="int8-dynamic"), 86.5, 4.0)
    queued = follow_up(study, 4, budget=87.0)
    assert [q["backend"] for q in queued] == ["openvino-int8", "ort-int8"] and all(q["layers"] == 0.5 for q in queued)
    assert follow_up(study, 4, budget=87.0) == [] and len(study.trials) == 7  # queued once
    finished(study, dict(dense, layers=0.67, backend="int8-dynamic"), 80.0, 6.0)
    assert follow_up(study, len(study.trials) - 1, budget=87.0) == []  # far past the budget
    leader = gate(study, ref_small=90.0, max_drop=1.0, ref_val=87.5)["leader"]
    assert leader == {"number": 4, "score": 4.0}
