"""The CLI's exit-status contract: 0 success, 1 a reported error, 2 a usage mistake, 130 interrupted, 143 SIGTERM."""
import os
import signal

import pytest

OUT = "/nonexistent-autolite-test/out"  # never written: every case below stops before any output

# (arguments, exit status, a fragment of stdout+stderr)
TABLE = [
    (("--version",), 0, "autolite 0."),
    (("-h",), 0, "compress"),
    (("compress", "--help"), 0, "--recipe"),
    ((), 2, "Usage: autolite"),
    (("optimise",), 2, "did you mean optimize?"),
    (("frobnicate",), 2, "valid verbs: bench, cache, compress"),
    (("compress", "--recipie", "x"), 2, "did you mean --recipe?"),
    (("export",), 2, "Missing option '--out'"),
    (("compress", "random:tiny-bert", "--batch", "abc", "-o", OUT), 2, "Invalid value for '--batch'"),
    (("compress", "random:tiny-bert", "--batch", "-1", "-o", OUT), 2, "'--batch'"),
    (("compress", "random:tiny-bert", "--seq", "0", "-o", OUT), 2, "'--seq'"),
    (("compress", "random:tiny-bert", "--runs", "2", "-o", OUT), 2, "'--runs'"),
    (("bench", "random:tiny-bert", "--threads", "-4"), 2, "'--threads'"),
    (("bench", "random:tiny-bert", "--threads", "0"), 2, "'--threads'"),
    (("bench", "random:tiny-bert", "--warmup", "-3"), 2, "'--warmup'"),
    (("eval", "random:tiny-bert", "--max-length", "-5"), 2, "'--max-length'"),
    (("eval", "random:tiny-bert", "--max-texts", "0"), 2, "'--max-texts'"),
    (("export", "random:tiny-bert", "--max-texts", "0", "-o", OUT), 2, "'--max-texts'"),
    (("serve", "random:tiny-bert", "--port", "70000"), 2, "'--port'"),
    (("prune", "random:tiny-bert", "--heads", "1.5", "-o", OUT), 2, "'--heads'"),
    (("loadtest", "--duration", "0"), 2, "'--duration'"),
    (("eval", "/no/such/dir"), 1, "no model at"),
    (("bench", "random:tiny-bert", "--recipe", "nope"), 1, "unknown recipe 'nope'"),
]


@pytest.mark.parametrize("args,code,fragment", TABLE, ids=[" ".join(a) or "<bare>" for a, _, _ in TABLE])
def test_exit_code_table(args, code, fragment, run_cli):
    got, out, err = run_cli(*args)
    assert got == code, (out, err)
    text = " ".join((out + " " + err).split())
    assert fragment in text and "Traceback" not in text and "internal error" not in text, text
    if code == 2 and args:
        assert "Usage: autolite" in text


def test_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path, run_cli):
    import autolite

    def interrupted(*_, **__):
        raise KeyboardInterrupt
    monkeypatch.setattr(autolite, "load", interrupted)
    code, _, err = run_cli("compress", "random:tiny-bert", "--out", str(tmp_path / "out"))
    assert code == 130 and err == "interrupted; nothing was written"
    assert not (tmp_path / "out").exists()


def test_sigterm_during_save_cleans_up(monkeypatch, tmp_path, run_cli):
    from autolite.export import hf

    def terminated(*_, **__):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the CLI's handler before the next bytecode
        raise AssertionError("SIGTERM was not turned into an exit")
    monkeypatch.setattr(hf, "write_model_files", terminated)
    code, _, err = run_cli("compress", "random:tiny-bert", "--no-bench", "--recipe", "fp32",
                           "--out", str(tmp_path / "out"))
    assert code == 143 and "terminated" in err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary directory
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_paths_and_notes_are_not_rich_markup(tmp_path, run_cli):
    recipe = tmp_path / "[x].yaml"
    recipe.write_text("passes:\n  - {pass: precision, dtype: fp32}\n")
    code, out, err = run_cli("compress", "random:tiny-bert", "--recipe", str(recipe), "--no-bench",
                             "--out", str(tmp_path / "[out]"))
    assert code == 0, err
    assert f"saved to {tmp_path / '[out]'}/" in " ".join(out.split())
