"""``benchmarks/tables.py``: the original's tables rendered from benchmark JSON."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tables  # noqa: E402 - the benchmark helper, importable once its folder is on the path

NOTES = ["prune-layers: removed 6 of 12 layers (encoder.0, encoder.1); parameters 1 -> 2",
         "prune-heads: removed 36 of 72 heads (taylor, per_layer; per layer now 6); parameters 2 -> 3",
         "prune-ffn: removed 13824 of 18432 FFN neurons (taylor, per_layer; per layer now 768); parameters 3 -> 4",
         "fast-dense at batch 32 x seq 128 chose int8-dynamic+compile [measured in 109 s]: ort-int8: 1.29x"]
MACHINE = {"cpu_model": "AMD EPYC", "usable_cores": 2, "isa": {"avx512f": True, "avx512_bf16": True}}


def _timing(ms: float, size: float, joules: float) -> dict:
    return {"median_ms": ms, "size_mb": size, "energy": {"source": "modelled", "joules_per_inference": joules}}


def _case(speedup: float, notes=NOTES, name: str = "bert-base-e2e") -> dict:
    return {"model": "random:bert-base", "recipe": {"name": name}, "batch": 32, "seq": 128, "threads": 2,
            "baseline": _timing(1000.0 * speedup, 418, 0.5), "candidate": _timing(1000.0, 105, 0.05),
            "speedup": speedup, "fidelity": {"cosine": 0.5878}, "notes": notes, "machine": MACHINE,
            "load": {"before": 1.5, "after": 2.0}}


def test_structure_and_engine_read_from_the_notes():
    assert tables.structure(NOTES) == "layers 12->6, heads 12->6 per layer, FFN 3072->768"
    assert tables.engine_choice(NOTES) == "fast-dense -> int8-dynamic+compile"
    ort = ["onnxruntime int8: forward runs in ONNX Runtime 1.32.0 (2 threads; cached graph x.onnx)"]
    assert tables.engine_choice(ort) == "ONNX Runtime 1.32.0 INT8"
    assert tables.engine_choice([]) == "torch" and tables.structure([]) == "-"


def test_e2e_table_checks_the_target_and_names_the_machine():
    text = "\n".join(tables.e2e_table({"e2e-a-b32": _case(13.17), "e2e-b-b1": _case(6.5), "other": _case(2.0)}))
    assert "**13.17x** | met" in text and "**6.50x** | **not met**" in text and "2.00x" not in text
    assert "AMD EPYC, 2 threads (avx512f, avx512_bf16); load 1.5 -> 2.0" in text
    assert "not accuracy" in text
    assert "Not run yet" in "\n".join(tables.e2e_table({}))


def test_precision_and_energy_tables():
    results = {"minilm-bf16-b32": _case(1.9, notes=["fell back"], name="bf16"),
               "minilm-int8-dynamic-b32": _case(1.5, notes=[], name="int8-dynamic")}
    text = "\n".join(tables.precision_table(results))
    assert "| FP32 (eager) | 1900.0 |" in text and "| BF16 | 1900.0 | 1000.0 | 1.90x | 105 | 0.41220 |" in text
    assert "INT4" not in text.split("|---|")[-1]  # no row for a case that was not run
    energy = "\n".join(tables.energy_table(results))
    assert "| 0.5000 | 0.0500 | 10.00x | modelled |" in energy and "not measured" in energy
    assert "No run recorded" in "\n".join(tables.energy_table({"x": {"candidate": {"energy": None}}}))


def test_missing_sources_say_how_to_make_them():
    assert "optimize_bench.py" in "\n".join(tables.technique_table(None, {}))
    assert "serve_batching.py" in "\n".join(tables.batching_table(None))
