"""Pure parsers of the OS's hardware descriptions (cpuinfo, sysfs CPU lists and cache sizes)."""

from __future__ import annotations

import re
from typing import Any

#: /proc/cpuinfo flags that matter for transformer inference kernels.
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni",
)

_SIZE_UNITS_KIB = {"K": 1, "M": 1024, "G": 1024 * 1024}


def parse_cpulist(text: str) -> list[int]:
    """Parse a kernel CPU list such as ``"0-3,8,10-11"`` into sorted unique ints.

    An empty/blank string gives ``[]`` (e.g. a memory-only NUMA node). Raises ``ValueError`` on a
    malformed list.
    """
    cpus: set[int] = set()
    for token in text.strip().split(","):
        token = token.strip()
        if not token:
            continue
        start, sep, end = token.partition("-")
        lo = int(start)
        hi = int(end) if sep else lo
        if hi < lo or lo < 0:
            raise ValueError(f"bad CPU range {token!r} in cpulist {text!r}")
        cpus.update(range(lo, hi + 1))
    return sorted(cpus)


def parse_cache_size(text: str) -> int:
    """Parse a sysfs cache size (``"32K"``, ``"2048K"``, ``"35M"``, ``"1G"``) into KiB.

    Raises ``ValueError`` when there is no K/M/G unit or the number is malformed.
    """
    match = re.fullmatch(r"\s*(\d+)\s*([KMG])(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if match is None:
        raise ValueError(f"unrecognised cache size {text!r} (expected e.g. '32K', '35M')")
    return int(match.group(1)) * _SIZE_UNITS_KIB[match.group(2).upper()]


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """Parse ``/proc/cpuinfo`` text.

    Returns ``{"model_name", "vendor", "flags", "physical_cores"}``: the first processor's model
    name and vendor_id (``None`` if absent), its flag set (``flags``, or ``Features`` on ARM), and
    the number of unique (physical id, core id) pairs (``None`` if the file lists no core ids).
    """
    model = vendor = None
    flags: set[str] | None = None
    cores: set[tuple[str | None, str]] = set()
    for block in re.split(r"\n\s*\n", text):
        fields = _cpuinfo_fields(block)
        if not fields:
            continue
        model = model or fields.get("model name")
        vendor = vendor or fields.get("vendor_id")
        if flags is None and ("flags" in fields or "Features" in fields):
            flags = set((fields.get("flags") or fields.get("Features") or "").split())
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return {
        "model_name": model,
        "vendor": vendor,
        "flags": flags if flags is not None else set(),
        "physical_cores": len(cores) or None,
    }


def isa_from_flags(flags: set[str]) -> dict[str, bool]:
    """Map a cpuinfo flag set to ``{flag: bool}`` for the flags in :data:`ISA_FLAGS`."""
    return {name: name in flags for name in ISA_FLAGS}


def _cpuinfo_fields(block: str) -> dict[str, str]:
    """Split one cpuinfo processor block into ``{key: value}``."""
    fields = {}
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _parse_capability(text: Any) -> tuple[int, int] | None:
    """Parse a CUDA capability such as ``"8.0"`` or ``"10.0"`` into ``(major, minor)``."""
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", str(text))
    return (int(match.group(1)), int(match.group(2))) if match else None
