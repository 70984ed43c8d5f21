"""Energy per inference: RAPL counters where readable, NVML on a GPU, else a stated model.

Sources, best first:
- ``rapl``: the package energy counters under ``/sys/class/powercap`` (Intel, and AMD on recent kernels);
  they count the whole package, so other load on the machine is included.
- ``nvml``: the GPU's total-energy counter (``pynvml``, when installed and a CUDA model runs).
- ``modelled``: the process's CPU-seconds (all threads, user + system) times ``WATTS_PER_CORE``. This is an
  estimate, not a measurement, and every result says so.
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any


log = logging.getLogger(__name__)
RAPL_ROOT = Path("/sys/class/powercap")
WATTS_PER_CORE = 10.0  # modelled: a busy server core draws ~8-12 W (package TDP / cores of current EPYC/Xeon)


def rapl_zones(root: Path = RAPL_ROOT) -> list[Path]:
    """Package-level RAPL zones whose ``energy_uj`` this process can read (none without permission)."""
    zones = []
    for zone in sorted(root.glob("*-rapl:*")):
        if zone.name.count(":") != 1:  # sub-zones (core, dram) are inside the package count
            continue
        try:
            int((zone / "energy_uj").read_text())
        except (OSError, ValueError):
            continue
        zones.append(zone)
    return zones


def _nvml_handle(device: Any) -> Any:
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        import pynvml  # optional: only on GPU machines that have it

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(getattr(device, "index", None) or 0)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        return handle
    except Exception:  # no pynvml, no driver support: fall back
        return None


class EnergyMeter:
    """Joules spent between ``start()`` and ``stop()``, from the best source this machine offers."""

    def __init__(self, device: Any = None, root: Path = RAPL_ROOT) -> None:
        self._nvml = _nvml_handle(device)
        self._zones = [] if self._nvml is not None else rapl_zones(root)
        self.source = "nvml" if self._nvml is not None else "rapl" if self._zones else "modelled"
        self._start = 0.0

    @property
    def note(self) -> str:
        if self.source == "rapl":
            return f"measured: RAPL package counters ({len(self._zones)} zone(s); whole package, other load included)"
        if self.source == "nvml":
            return "measured: NVML GPU total-energy counter (GPU only)"
        return (f"modelled, not measured: process CPU-seconds x {WATTS_PER_CORE:g} W per busy core "
                "(no readable RAPL counter)")

    def _read(self) -> float:
        if self._nvml is not None:
            import pynvml  # optional: see _nvml_handle

            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml) / 1000.0  # mJ -> J
        if self._zones:
            return sum(int((z / "energy_uj").read_text()) for z in self._zones) / 1e6
        return time.process_time() * WATTS_PER_CORE  # CPU-seconds of all threads (ns resolution)

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        delta = self._read() - self._start
        if delta < 0 and self._zones:  # a RAPL counter wrapped: add its range
            delta += sum(int((z / "max_energy_range_uj").read_text()) for z in self._zones) / 1e6
        return max(delta, 0.0)


def summarize(joules_per_call: list[float], items_per_call: int, source: str, note: str) -> dict[str, Any]:
    """Median joules per call and per inference (one row of the batch)."""
    if not joules_per_call:
        return {"source": source, "note": note, "joules_per_inference": None}
    per_call = statistics.median(joules_per_call)
    return {"source": source, "note": note, "joules_per_call": per_call,
            "joules_per_inference": per_call / max(items_per_call, 1), "calls": len(joules_per_call)}
