"""``autolite generate``: a completion from a decoder on autolite's own decode loop, with tokens/s."""
from __future__ import annotations

from pathlib import Path

import typer

from autolite.cli.common import console, err_console
from autolite.cli.common import MODEL_ARG, THREADS_OPT, flag, write_json_atomic
from autolite.loading import load
from autolite.runtime.decode import Decoder, check_request, generate as run
from autolite.runtime.sampling import Sampling


def generate(
    model: str = MODEL_ARG,
    prompt: str = typer.Option(..., "--prompt", "-p", help="The text to continue."),
    max_tokens: int = typer.Option(64, "--max-tokens", "-n", min=1, help="Most new tokens to generate."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0, max=100.0, help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, help="Nucleus sampling mass (0 < p <= 1)."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable); not included in the text."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for sampling."),
    json_path: Path | None = typer.Option(None, "--json", help="Also write the result and timings as JSON."),
    eager: bool = flag(False, "--eager", help="Skip torch.compile of the decode step (starts faster)."),
    threads: int | None = THREADS_OPT,
) -> None:
    """Continue PROMPT with MODEL (Llama-like or GPT-2) and print the text and decode tokens/s."""
    import torch

    sampling = Sampling(temperature=temperature, top_p=top_p, seed=seed, stop=tuple(stop))
    if threads is not None:
        torch.set_num_threads(threads)
    net, tokenizer, family = load(model)
    decoder = Decoder(net, family, compile=not eager)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    check_request(len(ids), max_tokens, decoder.max_positions)
    if not eager:
        err_console.print("compiling the decode step (once per process; --eager skips it)", highlight=False)
        run(decoder, tokenizer, ids, min(max_tokens, 3), Sampling())  # compile outside the timed run
    result = run(decoder, tokenizer, ids, max_tokens, sampling)
    console.print(result.text, markup=False, highlight=False, soft_wrap=True)
    err_console.print(f"{len(result.tokens)} tokens ({result.finish_reason}); prefill {result.prefill_s * 1000:.0f} ms "
                      f"for {len(ids)} tokens; decode {result.tokens_per_s:.1f} tokens/s "
                      f"({'compiled' if decoder.compiled else 'eager'}, {torch.get_num_threads()} threads)",
                      highlight=False)
    if json_path is not None:
        data = result.to_dict()
        data.update(model=model, compiled=decoder.compiled, threads=torch.get_num_threads(),
                    sampling={"temperature": temperature, "top_p": top_p, "seed": seed, "stop": list(stop)})
        write_json_atomic(json_path, data)


def register(app: typer.Typer) -> None:
    app.command()(generate)
