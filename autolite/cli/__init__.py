"""``autolite <verb>``: one module per verb, each registering its command on the shared typer app."""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
import signal
import sys
import threading
from typing import Any, Iterator

import typer
from rich.markup import escape

from autolite.cli.common import console, err_console  # noqa: F401 - the verbs' consoles, re-exported
from autolite import __version__
from autolite.cli import (bench, cache, compress, distill, evaluate, export, generate, info, loadtest, optimize, prune,
                          qat, sensitivity, serve)
from autolite.errors import AutoliteError
from autolite.paths import OutputExistsError

# typer vendors its own click: its exception classes, found through a public name (click's own never match)
click_exceptions = sys.modules[typer.BadParameter.__module__]

app = typer.Typer(
    name="autolite", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Make transformer models smaller and faster, measured on this machine. "
         "MODEL is a built-in name (minilm, smollm2), random:<preset>, an HF model directory or a .gguf file.")
_state = {"debug": False, "registered": False}


def _print_version(value: bool) -> None:
    if value:
        console.print(f"autolite {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global(debug: bool = typer.Option(False, "--debug", metavar="", help="Show full tracebacks and debug logs."),
            verbose: bool = typer.Option(False, "--verbose", "-v", metavar="", help="Show info logs."),
            version: bool = typer.Option(False, "--version", metavar="", is_eager=True, callback=_print_version,
                                         help="Print autolite's version and exit.")) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_verbs() -> None:
    if _state["registered"]:
        return
    _state["registered"] = True
    for module in (info, compress, evaluate, bench, serve, loadtest, distill, prune, export, sensitivity, qat, optimize,
                   generate, cache):
        module.register(app)


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for noisy in ("torchao", "torch.utils._pytree"):  # import-time chatter of optional kernels
        logging.getLogger(noisy).setLevel(logging.ERROR)


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def main(argv: list[str] | None = None) -> None:
    """Entry point. Exit status: 0 success, 1 a reported error (one line; ``--debug`` shows the traceback),
    2 a usage mistake (usage line + nearest valid name), 130 interrupted, 143 terminated (SIGTERM)."""
    sys.exit(run(sys.argv[1:] if argv is None else list(argv)))


def run(args: list[str]) -> int:
    """Run ``autolite ARGS`` and return its exit status instead of exiting."""
    _quiet_libraries()
    _register_verbs()
    _state["debug"] = "--debug" in args
    with _sigterm_as_exit():
        try:
            status = app(args=args, prog_name="autolite", standalone_mode=False)
        except AutoliteError as exc:
            if _state["debug"]:
                raise
            message = one_line(exc)
            if isinstance(exc, OutputExistsError):  # the API says overwrite=True; the CLI's word for it
                message = f"output directory {exc.path} already exists; choose another --out or pass --force"
            err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
            return EXIT_ERROR
        except (KeyboardInterrupt, typer.Abort):
            status = EXIT_INTERRUPTED
        except _Terminated:
            err_console.print("terminated; nothing was written", highlight=False)
            return EXIT_TERMINATED
        except click_exceptions.UsageError as exc:
            return usage_error(exc)
        except click_exceptions.ClickException as exc:
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False, soft_wrap=True)
            return exc.exit_code
        except Exception as exc:
            return _internal_error(exc)
    if status == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a returned 130 under standalone_mode=False
        err_console.print("interrupted; nothing was written", highlight=False)
    return status if isinstance(status, int) else EXIT_OK


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def usage_error(exc: click_exceptions.UsageError) -> int:
    """Print the usage line and the mistake with the nearest valid name; returns 2."""
    if isinstance(exc, click_exceptions.NoArgsIsHelpError):
        err_console.print(exc.format_message(), highlight=False, markup=False)
        return EXIT_USAGE
    if exc.ctx is not None:
        err_console.print(exc.ctx.get_usage(), highlight=False, markup=False)
    message = exc.format_message()
    if isinstance(exc, click_exceptions.NoSuchOption):
        message = f"{exc.message}; {nearest(exc.option_name, option_names(exc.ctx), 'option')}"
    elif message.startswith("No such command"):  # typer's own suggestion replaced by the same wording as options
        verb = message.split("'")[1] if "'" in message else ""
        message = f"No such command '{verb}'; {nearest(verb, sorted(app_verbs()), 'verb')}"
    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
    err_console.print(f"error: {message}{hint}", highlight=False, markup=False, soft_wrap=True)
    return EXIT_USAGE


def nearest(name: str, candidates: list[str], what: str) -> str:
    """``did you mean X?`` for the closest candidate, else the list of valid names."""
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]}?"
    return f"valid {what}s: {', '.join(candidates)}"


def option_names(ctx: Any) -> list[str]:
    if ctx is None:
        return []
    return sorted(name for param in ctx.command.params for name in (*param.opts, *param.secondary_opts)
                  if name.startswith("-")) + ["--help"]


def app_verbs() -> list[str]:
    return [info.name or (info.callback.__name__ if info.callback else "") for info in app.registered_commands]


def _internal_error(exc: Exception) -> int:
    if _state["debug"]:
        raise exc
    err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {escape(one_line(exc))}"
                      " (rerun with --debug for the traceback, and please report it)", highlight=False)
    return EXIT_ERROR


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every ``finally`` (temporary outputs) runs."""


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
