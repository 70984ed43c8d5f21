"""Impossible output targets are refused before any work, with API wording."""
import pytest

from autolite.paths import OutputExistsError, OutputPathError, check_output_dir, check_output_file


def test_targets_a_rename_cannot_serve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "taken").mkdir()
    for target, message in [(".", "current directory"), ("..", "current directory"),
                            ("afile.txt", "is not a directory"), ("afile.txt/sub", "is a file, not a directory")]:
        with pytest.raises(OutputPathError, match=message):
            check_output_dir(target, overwrite=True)
    with pytest.raises(OutputExistsError, match=r"overwrite=True replaces it") as info:
        check_output_dir("taken")
    assert "--" not in str(info.value)  # API wording, no CLI flags
    assert check_output_dir("taken", overwrite=True).name == "taken"
    assert check_output_dir("new/deeper").name == "deeper"


def test_output_files(tmp_path):
    with pytest.raises(OutputPathError, match="is a directory"):
        check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a directory"):
        check_output_file(tmp_path / "f" / "r.json")
    assert check_output_file(tmp_path / "f") == tmp_path / "f"  # an existing file is replaced


@pytest.mark.parametrize("args,fragment", [
    (("export", "random:tiny-bert", "--out", ".", "--force"), "current directory"),
    (("export", "random:tiny-bert", "--out", "afile.txt", "--force"), "is not a directory"),
    (("compress", "random:tiny-bert", "--out", "afile.txt/sub"), "is a file, not a directory"),
    (("eval", "random:tiny-bert", "--json", "."), "is a directory"),
    (("compress", "random:tiny-bert", "--out", "taken"), "already exists; choose another --out or pass --force"),
])
def test_cli_refuses_impossible_outputs_first(args, fragment, tmp_path, monkeypatch, run_cli):
    import autolite

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "taken").mkdir()
    monkeypatch.setattr(autolite, "load", lambda *_: pytest.fail("work started before the output was checked"))
    code, _, err = run_cli(*args)
    assert code == 1 and fragment in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.txt", "taken"]


def test_publish_permissions(tmp_path):
    import os

    from autolite.paths import publish_permissions

    (tmp_path / "sub").mkdir()
    weights = tmp_path / "sub" / "model.safetensors"
    weights.write_bytes(b"x")
    weights.chmod(0o600)
    publish_permissions(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert weights.stat().st_mode & 0o777 == 0o666 & ~umask
