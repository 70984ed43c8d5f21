"""Shared fixtures: tiny random models built from configs (no network), the bundled tokenizer."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_PRESETS = ["tiny-bert", "tiny-roberta", "tiny-distilbert", "tiny-t5", "tiny-gpt2", "tiny-llama",
                "tiny-qwen2", "tiny-mistral"]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times.",
         "Call me Ishmael.", "A short one.", "Alice was beginning to get very tired of sitting by her sister."]


@pytest.fixture(scope="session")
def tokenizer():
    from autolite.loading import bundled_tokenizer

    return bundled_tokenizer()


def load_tiny(name: str):
    """(model, tokenizer, family) of a tiny random preset, deterministic."""
    import autolite

    return autolite.load(f"random:{name}")


@pytest.fixture(params=TINY_PRESETS)
def tiny(request):
    """Each tiny preset in turn: (model, tokenizer, family)."""
    return load_tiny(request.param)


@pytest.fixture(scope="session")
def load_model():
    """Factory fixture: ``load_model("tiny-bert")`` -> (model, tokenizer, family)."""
    return load_tiny


@pytest.fixture
def tiny_bert():
    return load_tiny("tiny-bert")


@pytest.fixture
def tiny_llama():
    return load_tiny("tiny-llama")


@pytest.fixture
def texts():
    return list(TEXTS)


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run ``autolite ARGS`` in-process: ``run_cli("info", "--json") -> (exit code, stdout, stderr)``.

    stderr has its whitespace collapsed (rich wraps long messages to the terminal width).
    """
    import sys

    from autolite import cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["autolite", *args])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code or 0
        out, err = capsys.readouterr()
        return code, out, " ".join(err.split())

    return run
