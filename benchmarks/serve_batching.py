"""Serving vs the bare forward: `autolite serve` in a subprocess, 64 closed-loop clients, short sentences.

    python benchmarks/serve_batching.py      # minilm as served by default (fast-dense) and as loaded (FP32)
    python benchmarks/serve_batching.py --models minilm --configs 1:0,32:5 --duration 5 --rounds 2
    python benchmarks/serve_batching.py --from-json    # rewrite docs/SERVING.md from the last JSON, no measuring

Each config is ``max_batch_size:max_wait_ms[:threads]``; ``1:0`` is batch-size-1 serving (no batching).
Each model is a spec ``autolite serve`` takes, or ``SPEC+RECIPE`` for ``autolite serve SPEC --recipe RECIPE``
(``minilm+none``: the model as loaded, FP32 eager). Next to the servers, the bare forward of the same model and
recipe (loaded the same way, in this process) runs on the same short sentences, grouped by length bucket in
batches of ``--forward-batch`` (32) padded to their longest as the batcher builds them: its sequences/s is what
serving is compared with. ``--infinity`` adds a row for Infinity (its own environment) next to the FP32 model.
Rounds interleave the bare forward and every server config, so drift in a shared machine's load hits them alike.
Besides throughput and latency, each row gives the server's CPU time per request (process CPU seconds over
answered requests). The JSON (``benchmarks/results/serve/serve_batching.json``) holds everything; the doc table is
generated from it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import torch

from autolite.data import load_texts
from autolite.errors import BackendUnavailableError
from autolite.eval.forward import run_model
from autolite.runtime.hardware import probe
from autolite.serve.app import ServeConfig
from autolite.serve.batcher import bucket_of
from autolite.serve.loadgen import default_bodies, run_load, short_sentences
from autolite.serve.server import load_engine, wait_healthy

log = logging.getLogger("serve_batching")
CLI = "from autolite.cli import main; main()"
BEGIN, END = "<!-- serve_batching:begin -->", "<!-- serve_batching:end -->"
JSON_OUT = Path("benchmarks/results/serve/serve_batching.json")
INFINITY = "infinity"  # the config name of the Infinity peer row
TARGET_OF_FORWARD, TARGET_OF_BATCH1 = 0.70, 3.0  # issue 18: >= 70% of the bare forward, >= 3x batch 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_model(model: str) -> tuple[str, str]:
    """``SPEC+RECIPE`` -> (SPEC, RECIPE); a plain spec is served with ``--recipe auto``."""
    spec, _, recipe = model.partition("+")
    return spec, recipe or "auto"


def start_server(model: str, batch: int, wait_ms: float, threads: int | None) -> tuple[subprocess.Popen, str]:
    spec, recipe = split_model(model)
    port = free_port()
    cmd = [sys.executable, "-c", CLI, "serve", spec, "--recipe", recipe, "--port", str(port), "--max-batch-size",
           str(batch), "--max-wait-ms", str(wait_ms), "--max-queue", "4096"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: proc.poll() is None, timeout_s=600)  # a first fast-dense search takes a minute
    except BackendUnavailableError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}: {proc.stderr.read()[-2000:]}") from None
    return proc, url


def start_infinity(executable: str, batch: int) -> tuple[subprocess.Popen, str]:
    """Infinity (a Python embedding server users pick), on the same MiniLM weights: its torch engine on the CPU,
    its own dynamic batching up to ``batch``; run from its own environment (it pins older transformers)."""
    from autolite.loading import minilm_dir

    port = free_port()
    cmd = [executable, "v2", "--model-id", str(minilm_dir()), "--port", str(port), "--host", "127.0.0.1",
           "--batch-size", str(batch), "--engine", "torch", "--device", "cpu", "--pooling-method", "mean",
           "--log-level", "warning", "--no-model-warmup"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: proc.poll() is None, timeout_s=300)
    except BackendUnavailableError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}: {proc.stderr.read()[-2000:]}") from None
    return proc, url


def infinity_version(executable: str) -> str:
    """``infinity-emb X`` as its environment's pip metadata says (``?`` when unreadable)."""
    python = Path(executable).with_name("python")
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('infinity_emb'))"],
                          capture_output=True, text=True)
    return f"Infinity {done.stdout.strip() or '?'}"


def mean_batch(url: str) -> float:
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(("autolite_batch_size_sum", "autolite_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("autolite_batch_size_sum", 0) / max(1.0, values.get("autolite_batch_size_count", 0))


def parse_spec(spec: str) -> tuple[int, float, int | None]:
    parts = spec.split(":")
    return int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) > 2 else None


class BareForward:
    """The served model's forward alone, in this process: the same load and recipe as ``autolite serve``, the
    same texts grouped by length bucket in batches of ``batch``, each padded to its longest (what the server's
    batcher builds when its queue is full)."""

    def __init__(self, model: str, batch: int, texts: list[str]) -> None:
        spec, recipe = split_model(model)
        self.engine = load_engine(spec, ServeConfig(max_batch_size=batch, recipe=recipe), "cpu")
        ids = sorted(self.engine.encode(texts, truncate=True), key=lambda seq: bucket_of(len(seq)))
        self.batches = [self.engine._pad(ids[i:i + batch]) for i in range(0, len(ids) - batch + 1, batch)]
        self.shape = {"batch": batch, "mean_padded_tokens": round(statistics.mean(
            b["input_ids"].shape[1] for b in self.batches), 1), "backend": self.engine.backend,
            "threads": torch.get_num_threads()}

    @torch.inference_mode()
    def round(self, seconds: float) -> tuple[float, float]:
        """Sequences per second over ``seconds`` of back-to-back batches (after one warm-up batch), and this
        process's CPU milliseconds per sequence (all threads)."""
        run_model(self.engine.model, self.engine.family, self.batches[0])
        done, start, index, cpu = 0, time.perf_counter(), 0, time.process_time()
        while time.perf_counter() - start < seconds:
            batch = self.batches[index % len(self.batches)]
            run_model(self.engine.model, self.engine.family, batch)
            done, index = done + batch["input_ids"].shape[0], index + 1
        return done / (time.perf_counter() - start), (time.process_time() - cpu) * 1000 / max(1, done)


def one_round(args: argparse.Namespace, proc: subprocess.Popen, url: str, bodies: list[dict], route: str) -> dict:
    """One timed load run against ``url + route``, with the server's and this client's CPU seconds per request."""
    server, client = psutil.Process(proc.pid), psutil.Process()
    server_cpu = lambda: sum(sum(p.cpu_times()[:2]) for p in [server, *server.children(recursive=True)])  # noqa: E731
    asyncio.run(run_load(f"{url}{route}", bodies, concurrency=args.concurrency, requests=args.concurrency,
                         client=args.client))  # warm-up, untimed
    cpu0, own0 = server_cpu(), sum(client.cpu_times()[:2])
    result = asyncio.run(run_load(f"{url}{route}", bodies, concurrency=args.concurrency,
                                  requests=args.requests, duration=args.duration, client=args.client))
    summary, ok = result.summary(), max(1, len(result.latencies_ms))
    summary["server_cpu_ms"] = round((server_cpu() - cpu0) * 1000 / ok, 2)
    summary["client_cpu_ms"] = round((sum(client.cpu_times()[:2]) - own0) * 1000 / ok, 2)
    return summary


def measure(args: argparse.Namespace, model: str, specs: list[str], bodies: list[dict]) -> dict:
    """Start one server per config, then run rounds (bare forward, then the configs in rotating order); median
    per config. Interleaving matters on a shared machine: contention drifts over minutes."""
    bare = BareForward(model, args.forward_batch, [b["input"] for b in bodies])
    servers, forward_rates, forward_cpu = {}, [], []
    if args.infinity and split_model(model)[1] == "none":  # the peer runs FP32 torch too: same bare forward
        specs = [*specs, INFINITY]
    try:
        for spec in specs:
            servers[spec] = (start_infinity(args.infinity, args.forward_batch) if spec == INFINITY
                             else start_server(model, *parse_spec(spec)))
        runs: dict[str, list[dict]] = {spec: [] for spec in specs}
        for round_index in range(args.rounds):
            rate, cpu_ms = bare.round(args.duration)
            forward_rates.append(round(rate, 1))
            forward_cpu.append(round(cpu_ms, 2))
            log.info("%s round %d bare forward: %.1f seq/s", model, round_index + 1, forward_rates[-1])
            order = specs[round_index % len(specs):] + specs[:round_index % len(specs)]
            for spec in order:
                route = "/embeddings" if spec == INFINITY else "/v1/embeddings"
                runs[spec].append(one_round(args, *servers[spec], bodies, route))
                last = runs[spec][-1]
                log.info("%s round %d %s: %.1f req/s, p99 %.1f ms, errors %d, server CPU %.2f ms/req", model,
                         round_index + 1, spec, last["throughput_rps"], last["p99_ms"], last["errors"],
                         last["server_cpu_ms"])
        rows = [aggregate(model, spec, runs[spec], servers[spec][1], args) for spec in specs]
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(timeout=60)
    return {"model": model, "forward": {**bare.shape, "seq_per_s": statistics.median(forward_rates),
                                        "rounds_seq_per_s": forward_rates, "cpu_ms_per_seq": statistics.median(
                                            forward_cpu)}, "rows": rows}


def aggregate(model: str, spec: str, runs: list[dict], url: str, args: argparse.Namespace) -> dict:
    """The run with the median throughput for ``spec`` (its latencies belong to that run), all errors summed."""
    ranked = sorted(runs, key=lambda r: r["throughput_rps"])
    row = dict(ranked[len(ranked) // 2])
    row.update(errors=sum(r["errors"] for r in runs), rounds_rps=[r["throughput_rps"] for r in runs])
    if spec == INFINITY:
        return {**row, "model": model, "server": infinity_version(args.infinity), "max_batch_size": args.forward_batch,
                "max_wait_ms": None, "backend": "PyTorch float32 (its torch engine)", "threads": "torch default",
                "mean_batch": None}
    batch, wait_ms, threads = parse_spec(spec)
    health = httpx.get(f"{url}/health").json()
    row.update(model=model, server="autolite", max_batch_size=batch, max_wait_ms=wait_ms,
               backend=health.get("backend", "?"), mean_batch=round(mean_batch(url), 1),
               threads=threads or health.get("workers", ["?"])[0].split("; ")[-1].split(" (measured")[0])
    return row


def markdown(data: dict) -> str:
    """The doc section for one benchmark JSON (see :func:`main`)."""
    args, load = data["args"], data["load"]
    lines = [
        f"Measured {data['timestamp'][:16].replace('T', ' ')} UTC by `{data['command']}` in {data['minutes']:.0f} min "
        f"(`/v1/embeddings`, one short corpus sentence per request, `encoding_format: {args['encoding_format']}`, "
        f"{args['concurrency']} closed-loop clients ({args['client']} client), loopback HTTP). Each row is the "
        f"median of {args['rounds']} rounds of up to {args['duration']:g} s; the bare forward and the configs "
        "of a model interleaved (`rounds` shows every round). `server CPU` is the server process's CPU time per "
        "answered request (all threads).",
        f"Machine: {data['machine']}, {data['cores']} usable cores; server, load generator and bare forward share "
        f"them. Load average before/after: {load['before']} / {load['after']}; CPU steal "
        f"{load['cpu_steal_share']:.1%}{' (shared machine)' if load['cpu_steal_share'] > 0.02 else ''}.", ""]
    for model in data["models"]:
        lines += _model_table(model)
    lines.append(_verdict(data))
    return "\n".join(lines)


def _model_table(model: dict) -> list[str]:
    fwd = model["forward"]
    base = next((r["throughput_rps"] for r in model["rows"] if r["max_batch_size"] == 1), None)
    lines = [f"**{model['model']}** served by autolite as {fwd['backend']}. Bare forward of the same model: "
             f"**{fwd['seq_per_s']:g} seq/s** (batch {fwd['batch']}, padded to {fwd['mean_padded_tokens']:g} tokens "
             f"on average, {fwd['threads']} threads, {fwd['cpu_ms_per_seq']:g} CPU ms per sequence; rounds "
             f"{', '.join(f'{x:g}' for x in fwd['rounds_seq_per_s'])}). `beyond forward`: the server's CPU per "
             "request minus the bare forward's per sequence (HTTP, JSON, tokenizing, batching, threads waiting).",
             "", "| server | max batch | max wait ms | threads | req/s | of bare forward | vs batch 1 | p50 ms | "
             "p99 ms | errors | mean batch | server CPU ms/req | beyond forward | rounds req/s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in model["rows"]:
        share = f"{r['throughput_rps'] / fwd['seq_per_s']:.0%}" if fwd["seq_per_s"] else "-"
        speedup = f"{r['throughput_rps'] / base:.2f}x" if base else "-"
        wait = "its own" if r["max_wait_ms"] is None else f"{r['max_wait_ms']:g}"
        lines.append(f"| {r.get('server', 'autolite')} | {r['max_batch_size']} | {wait} | {r['threads']} | "
                     f"{r['throughput_rps']} | "
                     f"{share} | {speedup} | {r['p50_ms']} | {r['p99_ms']} | {r['errors']} | "
                     f"{r['mean_batch'] or '-'} | "
                     f"{r['server_cpu_ms']} | {r['server_cpu_ms'] - fwd['cpu_ms_per_seq']:.2f} | "
                     f"{', '.join(str(x) for x in r['rounds_rps'])} |")
    return lines + [""]


def _verdict(data: dict) -> str:
    """Issue 18's serving targets, met or not, per model (best batched row)."""
    parts = []
    for model in data["models"]:
        rows, fwd = model["rows"], model["forward"]["seq_per_s"]
        base = next((r["throughput_rps"] for r in rows if r["max_batch_size"] == 1), None)
        best = max((r for r in rows if r["max_batch_size"] > 1 and r.get("server", "autolite") == "autolite"),
                   key=lambda r: r["throughput_rps"], default=None)
        if best is None or not fwd:
            continue
        share, errors = best["throughput_rps"] / fwd, sum(r["errors"] for r in rows)
        gain = best["throughput_rps"] / base if base else 0.0
        checks = (("share of the bare forward", share >= TARGET_OF_FORWARD),
                  ("gain over batch 1", gain >= TARGET_OF_BATCH1), ("errors", not errors))
        missed = [name for name, ok in checks if not ok]
        parts.append(f"{model['model']}: best batched {best['throughput_rps']} req/s = {share:.0%} of the bare "
                     f"forward, {gain:.2f}x batch 1, {errors} errors ("
                     + ("all met" if not missed else "not met: " + ", ".join(missed)) + ")")
    return (f"Targets (>= {TARGET_OF_FORWARD:.0%} of the bare forward, >= {TARGET_OF_BATCH1:g}x batch 1, 0 errors): "
            + "; ".join(parts) + ".")


def splice(path: Path, table: str) -> str:
    """``path``'s text with the part between the benchmark markers replaced (the rest is kept)."""
    old = path.read_text(encoding="utf-8") if path.exists() else f"# Serving\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old or END not in old:
        old = old.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def run_all(args: argparse.Namespace) -> dict:
    """Measure every model; the JSON that :func:`markdown` renders."""
    bodies = default_bodies("/v1/embeddings", short_sentences(load_texts(None).texts, 12),
                            encoding_format=args.encoding_format)
    start, before, cpu0 = time.monotonic(), " ".join(f"{x:.1f}" for x in os.getloadavg()), psutil.cpu_times()
    models = [measure(args, model, args.configs.split(","), bodies) for model in args.models.split(",")]
    cpu1, machine = psutil.cpu_times(), probe()
    total = max(1e-9, sum(cpu1) - sum(cpu0))
    return {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/serve_batching.py", *_public(sys.argv[1:])]),
            "minutes": round((time.monotonic() - start) / 60, 2), "machine": machine.cpu_model,
            "cores": machine.usable_cores, "args": {k: str(v) if isinstance(v, Path) else v for k, v in
                                                    vars(args).items() if k != "infinity"},
            "load": {"before": before, "after": " ".join(f"{x:.1f}" for x in os.getloadavg()),
                     "cpu_steal_share": round((getattr(cpu1, "steal", 0.0) - getattr(cpu0, "steal", 0.0)) / total, 4)},
            "models": models}


def _public(argv: list[str]) -> list[str]:
    """The command line as recorded: the Infinity executable's local path replaced by its name."""
    return ["infinity_emb" if i and argv[i - 1] == "--infinity" else a for i, a in enumerate(argv)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,minilm+none",
                        help="comma-separated specs; SPEC+RECIPE serves SPEC with --recipe RECIPE")
    parser.add_argument("--configs", default="1:0,32:0,32:5,32:10")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=20000, help="per round and config (upper bound)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per round and config (upper bound)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forward-batch", type=int, default=32, help="batch of the bare forward (and of Infinity)")
    parser.add_argument("--infinity", default=None,
                        help="the infinity_emb executable of a separate environment: adds an Infinity row next to "
                             "the FP32 model (pip install 'infinity-emb[server,torch]==0.0.78' torch==2.13.0 there)")
    parser.add_argument("--encoding-format", default="float", choices=["float", "base64"])
    parser.add_argument("--client", default="raw", choices=["raw", "httpx"])
    parser.add_argument("--out", type=Path, default=Path("docs/SERVING.md"))
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    parser.add_argument("--from-json", action="store_true", help="only rewrite --out from --json (no measuring)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.from_json:
        data = json.loads(args.json.read_text(encoding="utf-8"))
    else:
        data = run_all(args)
        write_atomic(args.json, json.dumps(data, indent=1))
    write_atomic(args.out, splice(args.out, markdown(data)))
    log.info("wrote %s from %s", args.out, args.json)


if __name__ == "__main__":
    main()
