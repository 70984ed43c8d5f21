"""``autolite.io``: files and directories are written whole or not at all."""
import json

import pytest

from autolite.io import atomic_file, write_json_atomic


def test_atomic_file_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and oct(target.stat().st_mode)[-3:] == "644"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]  # no temporary left behind
