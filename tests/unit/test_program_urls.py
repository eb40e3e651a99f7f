"""Programs that take a Redis URL: a cluster URL is refused with the reason where it cannot work, and a
malformed one is named at start (issue 15)."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest


def test_the_socketio_comparison_server_refuses_a_cluster_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # python-socketio and aiohttp are installed only for benchmarks/compare.py; the refusal happens
    # before either is used, so empty stand-ins are enough to import the module without them.
    for name in ("socketio", "aiohttp"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            if name == "aiohttp":
                stub.web = types.ModuleType("aiohttp.web")  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, name, stub)
    saved = sys.modules.pop("benchmarks.socketio_chat.server", None)
    try:
        from benchmarks.socketio_chat.server import main

        with pytest.raises(SystemExit) as exited:
            main(["--port", "1", "--redis-url", "redis+cluster://u:secret@a:7000"])
    finally:  # a module imported over stand-ins must not serve later tests
        sys.modules.pop("benchmarks.socketio_chat.server", None)
        if saved is not None:
            sys.modules["benchmarks.socketio_chat.server"] = saved
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "runs on one Redis (AsyncRedisManager), not a Redis Cluster" in err and "secret" not in err


def test_chinwag_cluster_names_a_malformed_cluster_url_before_starting_anything(
    capsys: pytest.CaptureFixture[str]
) -> None:
    from chinwag.cluster import main

    with pytest.raises(SystemExit) as exited:
        main(["up", "--redis-url", "redis+cluster://u:secret@a:7000/3"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--redis-url: a cluster has only database 0" in err and "secret" not in err
