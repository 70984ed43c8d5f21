"""Distil all-MiniLM-L6-v2 (6 layers) into a 3-layer student on the embedded corpus and print the report.

    python benchmarks/distill_minilm.py --minutes 20 --out out/minilm-3l

Target (issue 5): held-out embedding cosine vs the teacher >= 0.95 after 20 minutes, about 2x faster.
The report (report.md in --out) has the before/after cosine, the interleaved speed measurement and the
training curve. Timings are only as good as the machine is quiet.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--out", default="out/minilm-distilled")
    args = parser.parse_args()
    command = [sys.executable, "-m", "autolite.cli", "distill", "minilm", "--student-layers", str(args.layers),
               "--minutes", str(args.minutes), "--lr", str(args.lr), "--eval-every", str(args.eval_every),
               "--out", args.out, "--force"]
    subprocess.run(command, check=True)
    print((Path(args.out) / "report.md").read_text())


if __name__ == "__main__":
    main()
