"""autolite: make HuggingFace transformer models lightweight and fast, and prove it with measurements.

Public verbs::

    model, tok, family = autolite.load("minilm")
    small = autolite.compress(model, "default", calib=texts)
    autolite.evaluate(small, tok, reference=model)
"""
from __future__ import annotations

__version__ = "0.1.0"

from autolite.config import PassConfig, Recipe  # noqa: E402
from autolite.errors import AutoliteError  # noqa: E402
from autolite.eval.fidelity import evaluate  # noqa: E402
from autolite.export.hf import save_model  # noqa: E402
import autolite.export as export  # noqa: E402  (callable: autolite.export(model, tok, out, format=...))
from autolite.loading import load  # noqa: E402
from autolite.search import optimize  # noqa: E402
from autolite.passes import compress, compress_, load_recipe  # noqa: E402

__all__ = ["AutoliteError", "PassConfig", "Recipe", "compress", "compress_", "evaluate", "load", "load_recipe", "optimize",
           "save_model", "export", "__version__"]
