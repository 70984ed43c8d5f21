"""Fixtures for the runtime tests."""
import pytest


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """One autolite cache per test module: tests reuse each other's built ONNX graphs and fast-dense
    decisions (keyed by weights + options), and never touch the user's cache."""
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTOLITE_CACHE", str(path))
        yield path
