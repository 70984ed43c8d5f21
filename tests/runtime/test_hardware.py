"""Tests for autolite.runtime.hardware: pure parsers, backend choice, and the real probe."""

import dataclasses
import json
import os

import pytest

from autolite.runtime import hardware
from autolite.runtime.hardware import (
    EMULATED_BF16_REASON,
    ISA_FLAGS,
    BackendChoice,
    MachineInfo,
    choose_backend,
    isa_from_flags,
    parse_cache_size,
    parse_cpuinfo,
    parse_cpulist,
    probe,
)

VNNI_FLAGS = (
    "fpu vme sse sse2 ht avx fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
)

CPUINFO_TWO_CORES = f"""\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: {VNNI_FLAGS}

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
physical id\t: 0
core id\t\t: 1
flags\t\t: {VNNI_FLAGS}

processor\t: 2
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor @ 2.50GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: {VNNI_FLAGS}
"""

ALL_ENGINES = ["qnnpack", "onednn", "x86", "fbgemm"]


def _isa(*flags):
    return {name: name in flags for name in ISA_FLAGS}


# ---------------------------------------------------------------- parse_cpulist


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("0", [0]),
        ("0-0", [0]),
        ("0-3,8-11\n", [0, 1, 2, 3, 8, 9, 10, 11]),
        ("", []),
        ("\n", []),
        ("5,1-2,2", [1, 2, 5]),
        (" 0 - 1 , 4 ", [0, 1, 4]),
    ],
)
def test_parse_cpulist(text, expected):
    assert parse_cpulist(text) == expected


@pytest.mark.parametrize("text", ["a", "3-1", "1-", "0-3,x", "-1"])
def test_parse_cpulist_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_cpulist(text)


# ---------------------------------------------------------------- parse_cache_size


@pytest.mark.parametrize(
    ("text", "kib"),
    [("32K", 32), ("2048K", 2048), ("35M", 35 * 1024), ("1G", 1024 * 1024), ("36608K\n", 36608),
     ("32k", 32)],
)
def test_parse_cache_size(text, kib):
    assert parse_cache_size(text) == kib


@pytest.mark.parametrize("text", ["", "32", "K", "1.5M", "32T"])
def test_parse_cache_size_rejects_malformed(text):
    with pytest.raises(ValueError):
        parse_cache_size(text)


# ---------------------------------------------------------------- parse_cpuinfo


def test_parse_cpuinfo_two_physical_cores_vnni_no_amx():
    parsed = parse_cpuinfo(CPUINFO_TWO_CORES)
    assert parsed["model_name"] == "Intel(R) Xeon(R) Processor @ 2.50GHz"
    assert parsed["vendor"] == "GenuineIntel"
    assert parsed["physical_cores"] == 2  # three logical CPUs, two (physical id, core id) pairs
    isa = isa_from_flags(parsed["flags"])
    assert set(isa) == set(ISA_FLAGS)
    assert isa["avx512_vnni"] is True
    assert isa["avx512f"] is isa["avx2"] is isa["fma"] is True
    assert isa["amx_tile"] is isa["amx_bf16"] is isa["amx_int8"] is False
    assert isa["avx512_bf16"] is False
    assert isa["avx_vnni"] is False  # "avx512_vnni" must not be mistaken for "avx_vnni"


def test_parse_cpuinfo_without_core_ids_or_flags_reports_none():
    parsed = parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 50.00\n")
    assert parsed["model_name"] is None
    assert parsed["vendor"] is None
    assert parsed["physical_cores"] is None
    assert parsed["flags"] == set()


def test_parse_cpuinfo_two_sockets_same_core_ids():
    text = "physical id: 0\ncore id: 0\n\nphysical id: 1\ncore id: 0\n"
    assert parse_cpuinfo(text)["physical_cores"] == 2


# ---------------------------------------------------------------- choose_backend


def test_choose_backend_amx_cpu_prefers_bf16_and_onednn():
    info = MachineInfo(
        isa=_isa("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"),
        quantized_engines=ALL_ENGINES,
    )
    choice = choose_backend(info)
    assert isinstance(choice, BackendChoice)
    assert (choice.device, choice.float_dtype, choice.int8_engine) == ("cpu", "bf16", "onednn")
    assert choice.reasons


def test_choose_backend_vnni_only_cpu_is_fp32_with_emulated_reason():
    info = MachineInfo(isa=_isa("avx2", "avx512f", "avx512_vnni"), quantized_engines=ALL_ENGINES)
    choice = choose_backend(info)
    assert (choice.device, choice.float_dtype, choice.int8_engine) == ("cpu", "fp32", "onednn")
    assert EMULATED_BF16_REASON in choice.reasons
    assert any("emulated" in reason for reason in choice.reasons)


def test_choose_backend_gpu_capability_8_prefers_cuda_bf16():
    gpu = {"index": 0, "name": "Fake A100", "memory_gib": 40.0, "capability": "8.0", "bf16": True}
    choice = choose_backend(MachineInfo(gpus=[gpu], isa=_isa("avx2"), quantized_engines=ALL_ENGINES))
    assert (choice.device, choice.float_dtype) == ("cuda", "bf16")


def test_choose_backend_old_gpu_uses_fp16_and_capability_10_is_bf16():
    old = {"index": 0, "name": "Fake T4", "capability": "7.5"}
    assert choose_backend(MachineInfo(gpus=[old])).float_dtype == "fp16"
    new = {"index": 0, "name": "Fake B200", "capability": "10.0"}  # not a string comparison
    assert choose_backend(MachineInfo(gpus=[new])).float_dtype == "bf16"


def test_choose_backend_int8_engine_fallbacks():
    avx2 = _isa("avx2", "fma")
    assert choose_backend(MachineInfo(isa=avx2, quantized_engines=ALL_ENGINES)).int8_engine == "x86"
    fbgemm_only = MachineInfo(isa=avx2, quantized_engines=["fbgemm"])
    assert choose_backend(fbgemm_only).int8_engine == "fbgemm"
    vnni_no_onednn = MachineInfo(isa=_isa("avx512_vnni"), quantized_engines=["x86", "fbgemm"])
    assert choose_backend(vnni_no_onednn).int8_engine == "x86"
    assert choose_backend(MachineInfo(isa=avx2, quantized_engines=["qnnpack"])).int8_engine is None
    assert choose_backend(MachineInfo()).int8_engine is None  # nothing known: no engine, no crash


# ---------------------------------------------------------------- sysfs readers on fixtures


def test_read_numa_nodes_missing_dir_is_empty(tmp_path):
    assert hardware._read_numa_nodes(str(tmp_path / "no-such-dir")) == []


def test_read_numa_nodes_and_caches_from_fixture(tmp_path):
    for node, cpus in ((0, "0-3\n"), (1, "4-7\n"), (10, "\n")):
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(cpus)
    nodes = hardware._read_numa_nodes(str(tmp_path))
    assert nodes == [{"id": 0, "cpus": [0, 1, 2, 3]}, {"id": 1, "cpus": [4, 5, 6, 7]},
                     {"id": 10, "cpus": []}]
    cache_dir = tmp_path / "cache"
    for index, (level, ctype, size, shared) in enumerate(
        [("1", "Data", "48K", "0,32"), ("2", "Unified", "2048K", "0,32"), ("3", "Unified", "105M", "0-63")]
    ):
        entry = cache_dir / f"index{index}"
        entry.mkdir(parents=True)
        for name, value in (("level", level), ("type", ctype), ("size", size), ("shared_cpu_list", shared)):
            (entry / name).write_text(value + "\n")
    caches = hardware._read_caches(str(cache_dir))
    assert caches[0] == {"level": 1, "type": "Data", "size_kib": 48, "shared_cpus": [0, 32]}
    assert caches[2]["size_kib"] == 105 * 1024 and caches[2]["shared_cpus"] == list(range(64))
    info = MachineInfo(caches=caches)
    assert dict(info.summary_rows())["Caches"] == "L1d 48 KiB, L2 2 MiB, L3 105 MiB"


# ---------------------------------------------------------------- summary rows


def test_summary_rows_on_synthetic_machine():
    info = MachineInfo(
        cpu_model="Test CPU", logical_cores=4, physical_cores=2, usable_cores=4,
        caches=[{"level": 1, "type": "Data", "size_kib": 32, "shared_cpus": [0]},
                {"level": 1, "type": "Instruction", "size_kib": 32, "shared_cpus": [0]},
                {"level": 2, "type": "Unified", "size_kib": 1024, "shared_cpus": [0]},
                {"level": 3, "type": "Unified", "size_kib": 36608, "shared_cpus": [0, 1]}],
        isa=_isa("avx2", "avx512f", "avx512_vnni"), quantized_engines=ALL_ENGINES,
    )
    rows = dict(info.summary_rows())
    assert rows["CPU"].startswith("Test CPU x2 cores")
    assert rows["ISA"] == "AVX-512, VNNI (no AMX, no AVX512-BF16)"
    assert rows["Caches"] == "L1d 32 KiB, L2 1 MiB, L3 35.8 MiB"
    assert rows["NUMA nodes"].startswith("unknown")
    assert rows["GPU"] == "none"
    assert rows["Chosen"] == "cpu, fp32, int8 engine onednn"
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in info.summary_rows())


# ---------------------------------------------------------------- the real machine


def test_probe_on_this_machine():
    info = probe()
    assert info.logical_cores == os.cpu_count()
    assert all(isinstance(value, bool) for value in info.isa.values())
    data = info.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["libraries"]["python"]
    assert data["libraries"]["torch"]  # torch is a hard dependency
    assert probe() is info  # cached in-process
    refreshed = probe(refresh=True)
    assert refreshed is not info and refreshed.logical_cores == info.logical_cores
    rows = refreshed.summary_rows()
    assert [label for label, _ in rows][-1] == "Chosen"
    assert isinstance(choose_backend(refreshed), BackendChoice)


def test_machine_info_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        MachineInfo().cpu_model = "x"  # type: ignore[misc]


def test_read_gpus_with_mocked_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    props = type("Props", (), {"name": "Fake H200", "total_memory": 141 * 2**30, "major": 9, "minor": 0})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    gpus = hardware._read_gpus()
    assert gpus == [{"index": 0, "name": "Fake H200", "memory_gib": 141.0, "capability": "9.0", "bf16": True}]
    rows = dict(MachineInfo(gpus=gpus).summary_rows())
    assert rows["GPU"] == "Fake H200 (141.0 GiB, capability 9.0, bf16)"
    assert rows["Chosen"].startswith("cuda, bf16")


def test_read_gpus_broken_cuda_is_empty(monkeypatch):
    torch = pytest.importorskip("torch")

    def boom():
        raise RuntimeError("driver mismatch")

    monkeypatch.setattr(torch.cuda, "is_available", boom)
    assert hardware._read_gpus() == []
