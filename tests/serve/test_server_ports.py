"""Ports: 0 binds a free port and prints it, out-of-range ports are usage mistakes, a busy port is one line
before anything loads."""
import re
import socket
import types

import pytest

from autolite.errors import BackendUnavailableError
from autolite.serve import server


def test_bind_socket_port_zero_gets_a_real_port():
    with server.bind_socket("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] > 0


def test_busy_port_is_one_clear_error():
    with server.bind_socket("127.0.0.1", 0) as busy:
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BackendUnavailableError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.bind_socket("127.0.0.1", port)


def test_cli_busy_port_fails_before_loading(run_cli, monkeypatch):
    def no_load(*_, **__):
        raise AssertionError("the model was loaded before the port was checked")
    monkeypatch.setattr(server, "load_engine", no_load)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, out, err = run_cli("serve", "random:tiny-bert", "--port", str(busy.getsockname()[1]))
    assert code == 1 and "already in use" in err and "serving on" not in err + out


def test_cli_port_zero_prints_the_bound_port(run_cli, monkeypatch):
    bound = {}

    def fake_run(engine, config, host, sock=None, **_):
        bound["port"] = sock.getsockname()[1]
    monkeypatch.setattr(server, "run_server", fake_run)
    monkeypatch.setattr(server, "load_engine", lambda *_: types.SimpleNamespace(name="tiny", tasks={"embed"},
                                                                            backend="PyTorch float32 (as loaded)"))
    code, _, err = run_cli("serve", "random:tiny-bert", "--port", "0")
    assert code == 0, err
    printed = int(re.search(r"http://127\.0\.0\.1:(\d+)", err).group(1))
    assert printed == bound["port"] > 0


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_out_of_range_port_is_a_usage_mistake(run_cli, port):
    code, _, err = run_cli("serve", "random:tiny-bert", "--port", port)
    assert code == 2 and "'--port'" in err
