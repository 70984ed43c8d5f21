"""``autolite <verb>``: one module per verb, each registering its command on the shared typer app."""
from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from autolite.errors import AutoliteError

app = typer.Typer(
    name="autolite", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Make transformer models smaller and faster, measured on this machine. "
         "MODEL is a built-in name (minilm, smollm2), random:<preset>, an HF model directory or a .gguf file.")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False, "registered": False}


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
            verbose: bool = typer.Option(False, "--verbose", "-v", help="Show info logs.")) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_verbs() -> None:
    if _state["registered"]:
        return
    _state["registered"] = True
    from autolite.cli import (bench, compress, distill, evaluate, export, info, loadtest, prune, qat, sensitivity,
                              serve)

    for module in (info, compress, evaluate, bench, serve, loadtest, distill, prune, export, sensitivity, qat):
        module.register(app)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for noisy in ("torchao", "torch.utils._pytree"):  # import-time chatter of optional kernels
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main() -> None:
    """Entry point: user errors print one line (exit 2); ``--debug`` shows the traceback."""
    _quiet_libraries()
    _register_verbs()
    try:
        app(standalone_mode=False)
    except AutoliteError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors and anything unexpected
        _handle_other(exc)


def _handle_other(exc: Exception) -> None:
    import click

    if isinstance(exc, click.exceptions.ClickException):
        exc.show()
        sys.exit(exc.exit_code)
    if isinstance(exc, click.exceptions.Exit):
        sys.exit(exc.exit_code)
    if isinstance(exc, click.exceptions.Abort):
        sys.exit(1)
    if _state["debug"]:
        raise exc
    err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                      " (rerun with --debug for the traceback, and please report it)", highlight=False)
    sys.exit(1)
