import os
import time

import pytest

from autolite import cache
from autolite.loading import gguf_content_key


def put(root, kind, name, size, age_s=0.0):
    path = root / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_trim_evicts_the_least_recently_used_entries_until_the_cache_fits(tmp_path):
    old = put(tmp_path, "onnxruntime", "a.onnx", 400, age_s=300)
    xml, xml_bin = put(tmp_path, "openvino", "b.xml", 100, 200), put(tmp_path, "openvino", "b.bin", 300, 200)
    new = put(tmp_path, "weights", "c.safetensors", 400, age_s=100)
    cache.mark_used(old)  # a hit makes the oldest the newest
    evicted = cache.trim(limit=900, root=tmp_path)
    assert [(e.kind, e.key, e.size) for e in evicted] == [("openvino", "b", 400)]  # .xml and .bin go together
    assert old.exists() and new.exists() and not xml.exists() and not xml_bin.exists()


def test_trim_spares_what_was_just_stored_and_what_is_not_rebuildable(tmp_path):
    kept = put(tmp_path, "onnxruntime", "big.onnx", 1000, age_s=500)
    task = put(tmp_path, "tasks", "fortunes.safetensors", 1000, age_s=900)
    other = put(tmp_path, "gguf", "m-1/model.safetensors", 10, age_s=50)
    evicted = cache.trim(limit=100, keep=[kept], root=tmp_path)
    assert [e.key for e in evicted] == ["m-1"] and not other.parent.exists()
    assert kept.exists() and task.exists()


def test_stale_temporaries_of_killed_builds_go_and_live_ones_stay(tmp_path):
    stale = put(tmp_path, "onnxruntime", "tmpab12/model.onnx", 50).parent
    os.utime(stale, (time.time() - 2 * cache.STALE_TEMP_S,) * 2)
    live = put(tmp_path, "weights", ".k.tmp-x1.safetensors", 50)
    assert cache.remove_stale_temporaries(tmp_path) == 50
    assert not stale.exists() and live.exists()
    assert cache.entries(tmp_path) == []  # a temporary is never an entry


def test_clear_removes_builds_and_keeps_measurements(tmp_path):
    put(tmp_path, "openvino", "b.bin", 300)
    peaks = put(tmp_path, "peaks", "machine.json", 10)
    assert cache.clear(tmp_path) == 300
    assert peaks.exists() and not (tmp_path / "openvino").exists()


@pytest.mark.parametrize("raw, expected", [("", int(cache.DEFAULT_LIMIT_GB * 1e9)), ("0.5", 500_000_000),
                                           ("0", 0)])
def test_the_limit_comes_from_the_environment(monkeypatch, raw, expected):
    monkeypatch.setenv(cache.LIMIT_ENV, raw)
    assert cache.cache_limit() == expected


@pytest.mark.parametrize("raw", ["lots", "-1", "nan", "inf"])
def test_a_limit_that_is_not_a_size_is_a_one_line_error(monkeypatch, raw):
    monkeypatch.setenv(cache.LIMIT_ENV, raw)
    with pytest.raises(cache.CacheConfigError, match=cache.LIMIT_ENV):
        cache.cache_limit()


def test_a_gguf_file_has_one_key_wherever_it_is_installed(tmp_path):
    data = os.urandom(3 << 20)
    first, second = tmp_path / "venv1" / "m.gguf", tmp_path / "venv2" / "m.gguf"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(data)
    os.utime(second, (1, 1))
    assert gguf_content_key(first) == gguf_content_key(second)
    second.write_bytes(data[:-1] + b"\0" if data[-1] else data[:-1] + b"\1")
    assert gguf_content_key(first) != gguf_content_key(second)
