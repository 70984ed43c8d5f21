"""Dynamic batching on vs off: `autolite serve` in a subprocess, 64 closed-loop clients, short sentences.

    python benchmarks/serve_batching.py      # the whole table: minilm FP32 and INT8 x 7 configs, writes docs/SERVING.md
    python benchmarks/serve_batching.py --duration 5 --rounds 2            # shorter rounds
    python benchmarks/serve_batching.py --models minilm --configs 1:0,32:0,32:5 --encoding-format base64

Each config is ``max_batch_size:max_wait_ms[:threads]``; ``1:0`` is batch-size-1 serving (no batching).
Each model is a spec ``autolite serve`` takes, or ``SPEC+RECIPE`` (e.g. ``minilm+int8-dynamic``): the
script first runs ``autolite compress SPEC --recipe RECIPE`` into a temporary directory and serves that.
Besides throughput and latency, each row gives the server's CPU time per request (process CPU seconds
over answered requests), which shared cores distort far less than wall-clock numbers. The server, the
load generator and anything else running share this machine's cores: the load average is recorded.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil

from autolite.data import load_texts
from autolite.errors import BackendUnavailableError
from autolite.runtime.hardware import probe
from autolite.serve.loadgen import default_bodies, run_load, short_sentences
from autolite.serve.server import wait_healthy

log = logging.getLogger("serve_batching")
CLI = "from autolite.cli import main; main()"
BEGIN, END = "<!-- serve_batching:begin -->", "<!-- serve_batching:end -->"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: str, batch: int, wait_ms: float, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-c", CLI, "serve", model, "--port", str(port), "--max-batch-size", str(batch),
           "--max-wait-ms", str(wait_ms), "--max-queue", "4096"]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, lambda: proc.poll() is None, timeout_s=180)
    except BackendUnavailableError as exc:
        proc.kill()
        raise RuntimeError(f"{exc}: {proc.stderr.read()[-2000:]}") from None
    return proc, url


def mean_batch(url: str) -> float:
    values = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(("autolite_batch_size_sum", "autolite_batch_size_count")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("autolite_batch_size_sum", 0) / max(1.0, values.get("autolite_batch_size_count", 0))


def measured_threads(url: str) -> str:
    """The intra-op thread count the server measured and kept (from /health), e.g. ``"1 (measured)"``."""
    workers = httpx.get(f"{url}/health").json().get("workers", [""])
    match = re.search(r"; (\d+) threads", workers[0])
    return f"{match.group(1)} (measured)" if match else "auto"


def parse_spec(spec: str) -> tuple[int, float, int | None]:
    parts = spec.split(":")
    return int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) > 2 else None


def prepare_model(model: str, workdir: Path) -> str:
    """``model`` itself, or for ``SPEC+RECIPE`` the directory ``autolite compress`` writes for it."""
    if "+" not in model:
        return model
    spec, recipe = model.split("+", 1)
    out = workdir / model.replace(":", "_").replace("/", "_")
    log.info("compressing %s with %s (once, into a temporary directory)", spec, recipe)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", CLI, "compress", spec, "--recipe", recipe, "--out", str(out)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compress {model} failed: {done.stderr[-2000:]}")
    return str(out)


def one_round(args: argparse.Namespace, proc: subprocess.Popen, url: str, bodies: list[dict]) -> dict:
    """One timed load run against ``url``, with the server's and this client's CPU seconds per request."""
    server, client = psutil.Process(proc.pid), psutil.Process()
    asyncio.run(run_load(f"{url}/v1/embeddings", bodies, concurrency=args.concurrency, requests=args.concurrency,
                         client=args.client))  # warm-up, untimed
    cpu0, own0 = sum(server.cpu_times()[:2]), sum(client.cpu_times()[:2])
    result = asyncio.run(run_load(f"{url}/v1/embeddings", bodies, concurrency=args.concurrency,
                                  requests=args.requests, duration=args.duration, client=args.client))
    summary, ok = result.summary(), max(1, len(result.latencies_ms))
    summary["server_cpu_ms"] = round((sum(server.cpu_times()[:2]) - cpu0) * 1000 / ok, 2)
    summary["client_cpu_ms"] = round((sum(client.cpu_times()[:2]) - own0) * 1000 / ok, 2)
    return summary


def measure(args: argparse.Namespace, model: str, path: str, specs: list[str], bodies: list[dict]) -> list[dict]:
    """Start one server per config, then run the configs in rounds (rotating order); median per config.

    Interleaving matters on a shared machine: contention drifts over minutes, and a config measured
    only at a busy moment would look worse than it is.
    """
    servers = {}
    try:
        for spec in specs:
            servers[spec] = start_server(path, *parse_spec(spec))
        runs: dict[str, list[dict]] = {spec: [] for spec in specs}
        for round_index in range(args.rounds):
            order = specs[round_index % len(specs):] + specs[:round_index % len(specs)]
            for spec in order:
                runs[spec].append(one_round(args, *servers[spec], bodies))
                last = runs[spec][-1]
                log.info("%s round %d %s: %.1f req/s, p99 %.1f ms, errors %d, server CPU %.2f ms/req", model,
                         round_index + 1, spec, last["throughput_rps"], last["p99_ms"], last["errors"],
                         last["server_cpu_ms"])
        return [aggregate(model, spec, runs[spec], servers[spec][1]) for spec in specs]
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _ in servers.values():
            proc.wait(timeout=60)


def aggregate(model: str, spec: str, runs: list[dict], url: str) -> dict:
    """The run with the median throughput for ``spec`` (its latencies belong to that run), all errors summed."""
    batch, wait_ms, threads = parse_spec(spec)
    ranked = sorted(runs, key=lambda r: r["throughput_rps"])
    row = dict(ranked[len(ranked) // 2])
    row.update(model=model, max_batch_size=batch, max_wait_ms=wait_ms, threads=threads or measured_threads(url),
               mean_batch=round(mean_batch(url), 1), errors=sum(r["errors"] for r in runs),
               rounds_rps=[r["throughput_rps"] for r in runs])
    return row


def markdown(rows: list[dict], args: argparse.Namespace, loads: tuple[str, str], minutes: float) -> str:
    base = {r["model"]: r["throughput_rps"] for r in rows if r["max_batch_size"] == 1}
    machine = probe()
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `benchmarks/serve_batching.py` in "
        f"{minutes:.0f} min (`/v1/embeddings`, one short corpus sentence per request, `encoding_format: "
        f"{args.encoding_format}`, {args.concurrency} closed-loop clients ({args.client} client), loopback HTTP). "
        f"Each row is the median of {args.rounds} rounds of up to {args.duration:g} s, the configs of a model "
        "interleaved; `rounds req/s` shows every round. `server CPU` is the server process's CPU time per "
        "answered request (all threads).",
        f"Machine: {machine.cpu_model}, {machine.usable_cores} usable cores. Server, load generator and other "
        f"work share these cores (load average before/after: {loads[0]} / {loads[1]}).", "",
        "| model | max batch | max wait ms | threads | req/s | vs batch 1 | p50 ms | p90 ms | p99 ms | errors |"
        " mean batch | server CPU ms/req | rounds req/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        b = base.get(r["model"])
        speedup = f"{r['throughput_rps'] / b:.2f}x" if b else "-"
        lines.append(f"| {r['model']} | {r['max_batch_size']} | {r['max_wait_ms']:g} | {r['threads']} | "
                     f"{r['throughput_rps']} | {speedup} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
                     f"{r['errors']} | {r['mean_batch']} | {r['server_cpu_ms']} | "
                     f"{', '.join(str(x) for x in r['rounds_rps'])} |")
    lines += ["", f"Rerun: `python benchmarks/serve_batching.py` ({len(rows)} rows; `--duration 5 --rounds 2` "
              "halves the time; `--models minilm --configs 1:0,32:0,32:5` chooses rows)."]
    return "\n".join(lines)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,minilm+int8-dynamic",
                        help="comma-separated specs; SPEC+RECIPE compresses SPEC first")
    parser.add_argument("--configs", default="1:0,8:0,32:0,32:2,32:5,32:10,64:5")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=5000, help="per round and config (upper bound)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per round and config (upper bound)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encoding-format", default="float", choices=["float", "base64"])
    parser.add_argument("--client", default="raw", choices=["raw", "httpx"])
    parser.add_argument("--out", type=Path, default=Path("docs/SERVING.md"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    bodies = default_bodies("/v1/embeddings", short_sentences(load_texts(None).texts, 12),
                            encoding_format=args.encoding_format)
    start, before = time.monotonic(), " ".join(f"{x:.1f}" for x in os.getloadavg())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="serve_batching-") as workdir:
        for model in args.models.split(","):
            path = prepare_model(model, Path(workdir))
            rows += measure(args, model, path, args.configs.split(","), bodies)
    after = " ".join(f"{x:.1f}" for x in os.getloadavg())
    minutes = (time.monotonic() - start) / 60
    write_atomic(args.out, splice(args.out, markdown(rows, args, (before, after), minutes)))
    if args.json:
        write_atomic(args.json, json.dumps(rows, indent=2))
    log.info("wrote %s after %.1f min", args.out, minutes)


if __name__ == "__main__":
    main()
