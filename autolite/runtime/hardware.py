"""Hardware probe: what this machine is, read from the OS, and which backend to prefer on it.

Every value is read (``/proc/cpuinfo``, ``/sys``, ``os``, ``psutil``, ``torch``); a value that
cannot be read is ``None`` (or an empty list/dict), never a made-up default. ``choose_backend`` is a
pure function of :class:`MachineInfo` and gives a *preference* that the engine later measures.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import logging
import os
import platform
from dataclasses import dataclass, field
from typing import Any

from autolite.runtime.sysparse import (  # noqa: F401  (re-exported: the probe's parsing API)
    ISA_FLAGS, _parse_capability, isa_from_flags, parse_cache_size, parse_cpuinfo, parse_cpulist)

logger = logging.getLogger(__name__)

CPUINFO_PATH = "/proc/cpuinfo"
NODE_DIR = "/sys/devices/system/node"
CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"

#: Library name -> distribution names to try (first installed wins). "python" is special-cased.
LIBRARY_DISTS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "safetensors": ("safetensors",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "openvino": ("openvino",),
    "torchao": ("torchao",),
    "mlx": ("mlx",),
    "numpy": ("numpy",),
}

EMULATED_BF16_REASON = (
    "no native BF16 on this CPU (no AMX-BF16/AVX512-BF16): BF16 would be emulated and slower"
)



# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class BackendChoice:
    """Preferred device, float dtype and int8 engine, with the reason for each decision."""

    device: str
    float_dtype: str
    int8_engine: str | None
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MachineInfo:
    """What the probe read about this machine; ``None`` / empty means "could not be read"."""

    cpu_model: str | None = None
    vendor: str | None = None
    logical_cores: int | None = None
    physical_cores: int | None = None
    usable_cores: int | None = None
    numa_nodes: list[dict[str, Any]] = field(default_factory=list)
    caches: list[dict[str, Any]] = field(default_factory=list)
    isa: dict[str, bool] = field(default_factory=dict)
    memory_gib: float | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    torch_cpu_capability: str | None = None
    quantized_engines: list[str] | None = None
    libraries: dict[str, str | None] = field(default_factory=dict)
    os: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    def summary_rows(self) -> list[tuple[str, str]]:
        """Return human-readable (label, value) rows for a report or the CLI."""
        choice = choose_backend(self)
        int8 = choice.int8_engine or "none"
        return [
            ("CPU", _cpu_row(self)),
            ("ISA", _isa_row(self.isa)),
            ("Caches", _caches_row(self.caches)),
            ("NUMA nodes", str(len(self.numa_nodes)) if self.numa_nodes else "unknown"),
            ("Memory", _fmt_opt(self.memory_gib, "{:.1f} GiB")),
            ("GPU", _gpus_row(self.gpus)),
            ("Torch", _torch_row(self)),
            ("OS", self.os or "unknown"),
            ("Chosen", f"{choice.device}, {choice.float_dtype}, int8 engine {int8}"),
        ]


# --------------------------------------------------------------------------- OS readers


def _read_text(path: str) -> str | None:
    """Return a file's text, or ``None`` if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        logger.debug("cannot read %s: %s", path, exc)
        return None


def _read_numa_nodes(node_dir: str = NODE_DIR) -> list[dict[str, Any]]:
    """Read NUMA nodes and their CPUs from sysfs; ``[]`` when sysfs does not expose them."""
    nodes = []
    for path in glob.glob(os.path.join(node_dir, "node[0-9]*")):
        node_id = int(os.path.basename(path)[4:])
        text = _read_text(os.path.join(path, "cpulist"))
        try:
            cpus = parse_cpulist(text) if text is not None else None
        except ValueError as exc:
            logger.debug("bad cpulist for node %d: %s", node_id, exc)
            cpus = None
        nodes.append({"id": node_id, "cpus": cpus})
    return sorted(nodes, key=lambda node: node["id"])


def _read_caches(cache_dir: str = CACHE_DIR) -> list[dict[str, Any]]:
    """Read cpu0's cache hierarchy from sysfs; entries that cannot be read are skipped."""
    caches = []
    paths = glob.glob(os.path.join(cache_dir, "index[0-9]*"))
    for path in sorted(paths, key=lambda p: int(os.path.basename(p)[5:])):
        level, ctype, size, shared = (
            _read_text(os.path.join(path, name))
            for name in ("level", "type", "size", "shared_cpu_list")
        )
        if level is None or ctype is None:
            continue
        try:
            size_kib = parse_cache_size(size) if size is not None else None
            shared_cpus = parse_cpulist(shared) if shared is not None else None
            caches.append({"level": int(level), "type": ctype.strip(),
                           "size_kib": size_kib, "shared_cpus": shared_cpus})
        except ValueError as exc:
            logger.debug("skipping unreadable cache entry %s: %s", path, exc)
    return caches


def _usable_cores() -> int | None:
    """Number of CPUs this process may run on (affinity mask), or ``None`` if unavailable."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError) as exc:
        logger.debug("sched_getaffinity unavailable: %s", exc)
        return None


def _psutil_values() -> tuple[float | None, int | None]:
    """Return (total memory in GiB, physical core count) from psutil, ``None`` where unknown."""
    try:
        import psutil
    except ImportError:
        logger.debug("psutil not installed; memory and physical-core fallback unknown")
        return None, None
    total = psutil.virtual_memory().total
    return round(total / 2**30, 2), psutil.cpu_count(logical=False)


def _read_gpus() -> list[dict[str, Any]]:
    """List CUDA GPUs via ``torch.cuda``; ``[]`` when torch or CUDA is unavailable."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        gpus = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({
                "index": index,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 2),
                "capability": f"{props.major}.{props.minor}",
                "bf16": props.major >= 8,
            })
        return gpus
    except Exception as exc:  # noqa: BLE001 - a broken CUDA setup must not break the probe
        logger.warning("could not query CUDA GPUs: %s", exc)
        return []


def _read_torch_cpu() -> tuple[str | None, list[str] | None]:
    """Return torch's CPU kernel capability and quantized engines (``None`` if unknown)."""
    try:
        import torch
    except ImportError:
        return None, None
    capability = None
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError) as exc:
        logger.debug("torch CPU capability unavailable: %s", exc)
    engines = [str(engine) for engine in torch.backends.quantized.supported_engines]
    return capability, engines


def _library_versions() -> dict[str, str | None]:
    """Installed versions from package metadata (no heavy imports); ``None`` if not installed."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in LIBRARY_DISTS.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


# --------------------------------------------------------------------------- probe


_CACHED: MachineInfo | None = None


def probe(refresh: bool = False) -> MachineInfo:
    """Probe this machine once per process (``refresh=True`` re-reads everything)."""
    global _CACHED
    if _CACHED is None or refresh:
        _CACHED = _probe_uncached()
    return _CACHED


def _probe_uncached() -> MachineInfo:
    """Read every field of :class:`MachineInfo` from the OS, psutil and torch."""
    cpuinfo_text = _read_text(CPUINFO_PATH)
    cpuinfo = parse_cpuinfo(cpuinfo_text) if cpuinfo_text is not None else None
    memory_gib, psutil_physical = _psutil_values()
    capability, engines = _read_torch_cpu()
    physical = cpuinfo["physical_cores"] if cpuinfo else None
    info = MachineInfo(
        cpu_model=cpuinfo["model_name"] if cpuinfo else None,
        vendor=cpuinfo["vendor"] if cpuinfo else None,
        logical_cores=os.cpu_count(),
        physical_cores=physical if physical is not None else psutil_physical,
        usable_cores=_usable_cores(),
        numa_nodes=_read_numa_nodes(),
        caches=_read_caches(),
        isa=isa_from_flags(cpuinfo["flags"]) if cpuinfo and cpuinfo["flags"] else {},
        memory_gib=memory_gib,
        gpus=_read_gpus(),
        torch_cpu_capability=capability,
        quantized_engines=engines,
        libraries=_library_versions(),
        os=platform.platform(),
    )
    logger.debug("hardware probe: %s", info)
    return info


# --------------------------------------------------------------------------- backend choice


def native_dtypes(device: Any) -> set[str]:
    """Float dtypes this device computes natively (read from the hardware probe)."""
    if device.type == "cuda":
        import torch  # lazy: the rest of the probe runs without torch

        major, _ = torch.cuda.get_device_capability(device)
        return {"fp32", "fp16", "bf16"} if major >= 8 else {"fp32", "fp16"}

    isa = probe().isa
    native = {"fp32"}
    if isa.get("amx_bf16") or isa.get("avx512_bf16"):
        native.add("bf16")
    if isa.get("avx512_fp16") or isa.get("amx_fp16"):
        native.add("fp16")
    return native


def choose_backend(info: MachineInfo) -> BackendChoice:
    """Prefer a device, float dtype and int8 engine for ``info``; every decision gets a reason.

    Pure function of ``info``. The choice is a preference: the engine still measures.
    """
    reasons: list[str] = []
    if info.gpus:
        device, float_dtype = "cuda", _gpu_float_dtype(info.gpus[0], reasons)
    else:
        reasons.append("no CUDA GPU detected: running on CPU")
        device, float_dtype = "cpu", _cpu_float_dtype(info.isa, reasons)
    int8_engine = _int8_engine(info.isa, info.quantized_engines or [], reasons)
    return BackendChoice(device, float_dtype, int8_engine, reasons)


def _gpu_float_dtype(gpu: dict[str, Any], reasons: list[str]) -> str:
    """BF16 on compute capability >= 8.0 (Ampere+), else FP16."""
    cap = _parse_capability(gpu.get("capability"))
    name, capability = gpu.get("name", "unknown"), gpu.get("capability")
    label = f"GPU {gpu.get('index', 0)} ({name}, capability {capability})"
    if cap is not None and cap >= (8, 0):
        reasons.append(f"{label}: CUDA with native BF16 (capability >= 8.0)")
        return "bf16"
    reasons.append(f"{label}: CUDA without native BF16 (capability < 8.0 or unknown): using FP16")
    return "fp16"


def _cpu_float_dtype(isa: dict[str, bool], reasons: list[str]) -> str:
    """BF16 only with native BF16 instructions (AMX-BF16 or AVX512-BF16), else FP32."""
    native = [name for name in ("amx_bf16", "avx512_bf16") if isa.get(name)]
    if native:
        reasons.append(f"native BF16 on this CPU ({', '.join(native)}): using BF16")
        return "bf16"
    reasons.append(EMULATED_BF16_REASON)
    return "fp32"


def _int8_engine(isa: dict[str, bool], engines: list[str], reasons: list[str]) -> str | None:
    """Prefer oneDNN with VNNI/AMX-INT8, else x86, else fbgemm, else none (CPU quantized engine)."""
    int8_isa = [name for name in ("amx_int8", "avx512_vnni") if isa.get(name)]
    if "onednn" in engines and int8_isa:
        reasons.append(f"int8 engine onednn: supported by torch and CPU has {', '.join(int8_isa)}")
        return "onednn"
    for engine in ("x86", "fbgemm"):
        if engine in engines:
            why = "no AVX512-VNNI/AMX-INT8" if "onednn" in engines else "onednn not supported"
            reasons.append(f"int8 engine {engine}: {why}")
            return engine
    reasons.append(f"no preferred int8 engine among torch's supported engines {engines}")
    return None


# --------------------------------------------------------------------------- summary helpers


def _fmt_opt(value: Any, fmt: str = "{}") -> str:
    """Format ``value`` or say ``unknown`` when it is ``None``."""
    return "unknown" if value is None else fmt.format(value)


def _fmt_kib(size_kib: int | None) -> str:
    """Human size: ``32 KiB``, ``1 MiB``, ``35.8 MiB``."""
    if size_kib is None:
        return "unknown"
    if size_kib < 1024:
        return f"{size_kib} KiB"
    return f"{size_kib / 1024:.1f}".rstrip("0").rstrip(".") + " MiB"


def _cpu_row(info: MachineInfo) -> str:
    """``<model> x<physical> cores (<logical> logical, <usable> usable)``."""
    model = info.cpu_model or "unknown CPU"
    return (f"{model} x{_fmt_opt(info.physical_cores)} cores "
            f"({_fmt_opt(info.logical_cores)} logical, {_fmt_opt(info.usable_cores)} usable)")


def _isa_row(isa: dict[str, bool]) -> str:
    """E.g. ``AVX-512, VNNI (no AMX, no AVX512-BF16)``."""
    if not isa:
        return "unknown (no /proc/cpuinfo flags)"
    have = []
    if isa.get("avx512f"):
        have.append("AVX-512")
    elif isa.get("avx2"):
        have.append("AVX2")
    extras = (("avx512_vnni", "VNNI"), ("avx_vnni", "AVX-VNNI"),
              ("avx512_bf16", "AVX512-BF16"), ("avx512_fp16", "AVX512-FP16"))
    have += [label for flag, label in extras if isa.get(flag)]
    amx = [kind for kind in ("bf16", "int8") if isa.get(f"amx_{kind}")]
    if isa.get("amx_tile"):
        have.append(f"AMX ({', '.join(k.upper() for k in amx)})" if amx else "AMX")
    missing = [label for flag, label in (("amx_tile", "AMX"), ("avx512_bf16", "AVX512-BF16"))
               if not isa.get(flag)]
    text = ", ".join(have) or "no AVX2/AVX-512"
    return f"{text} (no {', no '.join(missing)})" if missing else text


def _caches_row(caches: list[dict[str, Any]]) -> str:
    """E.g. ``L1d 32 KiB, L2 1 MiB, L3 35.8 MiB`` (instruction caches left out)."""
    parts = []
    for cache in caches:
        if cache.get("type") == "Instruction":
            continue
        suffix = "d" if cache.get("type") == "Data" else ""
        parts.append(f"L{cache.get('level')}{suffix} {_fmt_kib(cache.get('size_kib'))}")
    return ", ".join(parts) or "unknown"


def _gpus_row(gpus: list[dict[str, Any]]) -> str:
    """E.g. ``NVIDIA H100 (79.2 GiB, capability 9.0, bf16)`` per GPU, or ``none``."""
    if not gpus:
        return "none"
    return "; ".join(
        f"{gpu.get('name')} ({_fmt_opt(gpu.get('memory_gib'), '{:.1f} GiB')}, "
        f"capability {gpu.get('capability')}{', bf16' if gpu.get('bf16') else ''})"
        for gpu in gpus
    )


def _torch_row(info: MachineInfo) -> str:
    """Torch version, CPU kernel capability and quantized engines."""
    version = info.libraries.get("torch") or "not installed"
    engines = ", ".join(info.quantized_engines) if info.quantized_engines else "none"
    return f"{version} (CPU kernels {_fmt_opt(info.torch_cpu_capability)}; int8 engines {engines})"
