"""Scale-out: `autolite serve --ray` as a Ray Serve deployment (slow: starts a local Ray instance)."""
from __future__ import annotations

import socket
import sys
import time

import httpx
import pytest

from autolite.errors import BackendUnavailableError
from autolite.serve.app import ServeConfig


def test_missing_ray_is_a_clear_one_line_error(monkeypatch, run_cli):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    from autolite.serve.scaleout import require_ray

    with pytest.raises(BackendUnavailableError, match=r"install autolite\[ray\]"):
        require_ray()
    code, _, err = run_cli("serve", "random:tiny-bert", "--ray", "--port", "1")
    assert code != 0 and "Traceback" not in err and "autolite[ray]" in err, err


@pytest.mark.slow
def test_ray_replicas_serve_embeddings_with_batching(monkeypatch):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'autolite[ray]')")
    from autolite.serve.scaleout import RayOptions, deploy, shutdown

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = ServeConfig(max_batch_size=8, max_wait_ms=20, threads=1)
    start = time.monotonic()
    try:
        url = deploy("random:tiny-bert", config, "127.0.0.1", port, "cpu",
                     RayOptions(replicas=2, cpus_per_replica=0.5), num_cpus=2)
        started = time.monotonic() - start
        with httpx.Client(timeout=60) as client:
            health = client.get(f"{url}/health")
            assert health.status_code == 200 and "embed" in health.json()["tasks"]
            answer = client.post(f"{url}/v1/embeddings", json={"input": ["hello world", "a second text"]})
            assert answer.status_code == 200, answer.text
            vectors = [d["embedding"] for d in answer.json()["data"]]
            assert len(vectors) == 2 and len(vectors[0]) == 64
            assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-4  # L2-normalised by the same engine
            bad = client.post(f"{url}/v1/embeddings", json={"input": []})
            assert bad.status_code == 422 and "error" in bad.json()
            metrics = client.get(f"{url}/metrics").text
            assert "autolite_batch_size_count" in metrics
    finally:
        shutdown()
    print(f"ray: deployed 2 replicas in {started:.1f} s, whole test {time.monotonic() - start:.1f} s")
