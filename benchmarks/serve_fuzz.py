"""Fuzz the serving API from its own OpenAPI schema (schemathesis): no request may get a 5xx.

    python benchmarks/serve_fuzz.py --out docs/SERVING.md   # 100 cases per route and mode, ~2.5 min on 2 cores
    python benchmarks/serve_fuzz.py --examples 20 --json fuzz.json

Two real uvicorn servers on loopback ports: ``random:tiny-bert`` (embeddings, classify) and
``random:tiny-llama`` (completions, streamed or not). For every operation of each server's
``/openapi.json``, schemathesis (via hypothesis) generates ``--examples`` *positive* cases (bodies the
schema allows) and as many *negative* ones (bodies it forbids: wrong types, missing fields, bad
values), sends them over HTTP and the script tallies the status codes. Any 5xx is printed with its
request and makes the exit status 1. Needs ``pip install 'autolite[fuzz]'``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator


log = logging.getLogger("serve_fuzz")
SERVERS = {"random:tiny-bert": {}, "random:tiny-llama": {"max_new_tokens": 16}}


@contextlib.contextmanager
def live_server(spec: str, **config: Any) -> Iterator[str]:
    """``autolite serve SPEC`` in a thread (uvicorn) on a free loopback port; yields its URL."""
    import autolite
    from autolite.serve import Engine, ServeConfig, create_app
    from autolite.serve.server import serve_in_thread

    model, tok, family = autolite.load(spec)
    app = create_app(Engine(model, tok, family, name=spec), ServeConfig(threads=1, timeout_s=60, **config))
    with serve_in_thread(app, log_level="error") as url:
        yield url


def fuzz_server(url: str, examples: int, seed: int) -> tuple[dict[str, Counter], list[dict[str, Any]]]:
    """Status counts per ``"METHOD /path (mode)"`` and the 5xx failures, for every operation at ``url``."""
    import hypothesis
    import schemathesis
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    counts: dict[str, Counter] = defaultdict(Counter)
    failures: list[dict[str, Any]] = []
    settings = hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                                   suppress_health_check=list(hypothesis.HealthCheck),
                                   phases=[hypothesis.Phase.generate])
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.method.upper()} {operation.path} ({mode.value})"
            check = _checker(url, label, counts[label], failures)
            test = settings(hypothesis.seed(seed)(hypothesis.given(operation.as_strategy(generation_mode=mode))(check)))
            try:
                test()
            except hypothesis.errors.Unsatisfiable:  # e.g. no invalid request exists for a GET without inputs
                log.info("%-45s no case can be generated", label)
                continue
            log.info("%-45s %s", label, dict(sorted(counts[label].items())))
    return counts, failures


def _checker(url: str, label: str, counts: Counter, failures: list[dict[str, Any]]) -> Any:
    def check(case: Any) -> None:
        response = case.call(base_url=url, timeout=120)
        counts[response.status_code] += 1
        if response.status_code >= 500:
            failures.append({"route": label, "status": response.status_code, "body": repr(case.body)[:300],
                             "answer": response.text[:300]})

    return check


def markdown(report: dict[str, Any], examples: int) -> str:
    """The tallies as a table: one row per server, route and mode."""
    lines = [f"`python benchmarks/serve_fuzz.py --examples {examples}`: {report['cases']} requests in "
             f"{report['seconds']:.0f} s, {len(report['failures'])} answered 5xx.", "",
             "| server | route (mode) | requests | answers |", "|---|---|---:|---|"]
    for label, counts in report["routes"].items():
        if not counts:  # e.g. no invalid request exists for a GET without inputs
            continue
        spec, route = label.split(" ", 1)
        answers = ", ".join(f"{code}: {n}" for code, n in counts.items())
        lines.append(f"| {spec} | {route} | {sum(counts.values())} | {answers} |")
    return "\n".join(lines)


def splice(path: Path, table: str) -> None:
    """Replace the text between the serve_fuzz markers of ``path`` with ``table`` (atomically)."""
    begin, end = "<!-- serve_fuzz:begin -->", "<!-- serve_fuzz:end -->"
    old = path.read_text(encoding="utf-8")
    if begin not in old or end not in old:
        old = old.rstrip() + f"\n\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}", encoding="utf-8")
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="cases per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the tallies and failures here")
    parser.add_argument("--out", type=Path, default=None, help="splice the table into this markdown file "
                        "(between <!-- serve_fuzz:begin/end --> markers), e.g. docs/SERVING.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "schemathesis", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    start, report = time.monotonic(), {"routes": {}, "failures": []}
    for spec, config in SERVERS.items():
        with live_server(spec, **config) as url:
            counts, failures = fuzz_server(url, args.examples, args.seed)
        report["routes"].update({f"{spec} {label}": {str(k): v for k, v in sorted(c.items())}
                                 for label, c in counts.items()})
        report["failures"] += failures
    report["cases"] = sum(sum(c.values()) for c in report["routes"].values())
    report["seconds"] = round(time.monotonic() - start, 1)
    for failure in report["failures"]:
        log.error("5xx: %s", failure)
    log.info("%d cases in %.0f s, %d answered 5xx", report["cases"], report["seconds"], len(report["failures"]))
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2), encoding="utf-8")
        tmp.replace(args.json)
    if args.out:
        splice(args.out, markdown(report, args.examples))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
