"""``autolite info``: what this machine has and what autolite would choose."""
from __future__ import annotations

import json

import typer

from autolite.cli.common import console, flag, rows_table
from autolite.runtime.hardware import choose_backend, probe


def info(as_json: bool = flag(False, "--json", help="Print the probe as JSON.")) -> None:
    """Show CPU, cores, NUMA, caches, ISA flags, GPUs, library versions and the chosen backend."""
    machine = probe()
    choice = choose_backend(machine)
    if as_json:
        data = machine.to_dict()
        data["choice"] = {"device": choice.device, "float_dtype": choice.float_dtype,
                          "int8_engine": choice.int8_engine, "reasons": choice.reasons}
        console.print_json(json.dumps(data))
        return
    console.print(rows_table("this machine", ("", ""), machine.summary_rows()))
    for reason in choice.reasons:
        console.print(f"  - {reason}")
    libraries = ", ".join(f"{k} {v}" for k, v in machine.libraries.items() if v)
    console.print(f"libraries: {libraries}")


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: autolite info --json")(info)
