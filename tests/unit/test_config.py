"""Settings: flags beat env vars beat defaults; --help lists the env vars."""

from __future__ import annotations

import pytest

from chinwag.server import main as server_main
from common.config import OPTIONS, Settings, build_parser


def test_defaults_match_the_seed() -> None:
    s = Settings.from_args("server", [], env={})
    assert (s.host, s.port, s.redis_url) == ("127.0.0.1", 9000, None)


def test_env_then_flag_precedence() -> None:
    env = {"CHINWAG_PORT": "9100", "CHINWAG_HOST": "::1", "REDIS_URL": "redis://127.0.0.1:7000/0"}
    s = Settings.from_args("gateway", [], env=env)
    assert (s.host, s.port, s.redis_url) == ("::1", 9100, "redis://127.0.0.1:7000/0")
    s = Settings.from_args("gateway", ["--port", "9200"], env=env)
    assert s.port == 9200 and s.host == "::1"


def test_booleans_from_env_and_flags() -> None:
    assert Settings.from_args("gateway", [], env={"CHINWAG_COMPRESSION": "yes"}).compression is True
    assert Settings.from_args("gateway", ["--no-compression"], env={"CHINWAG_COMPRESSION": "1"}).compression is False
    with pytest.raises(SystemExit):
        Settings.from_args("gateway", [], env={"CHINWAG_COMPRESSION": "perhaps"})


def test_bad_number_in_env_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_args("gateway", [], env={"CHINWAG_PORT": "nine thousand"})
    assert "CHINWAG_PORT" in capsys.readouterr().err


def test_chinwag_redis_url_is_an_alias() -> None:
    assert Settings.from_args("presence", [], env={"CHINWAG_REDIS_URL": "redis://x:1/0"}).redis_url == "redis://x:1/0"


@pytest.mark.parametrize("role", ["gateway", "presence", "server"])
def test_help_lists_every_env_var_of_the_role(role: str) -> None:
    text = build_parser(role).format_help()
    for opt in OPTIONS:
        if role in opt.roles:
            assert opt.env in text


def test_settings_are_frozen_and_node_ids_differ() -> None:
    a, b = Settings(), Settings()
    assert a.node_id != b.node_id
    with pytest.raises(AttributeError):
        a.port = 1  # type: ignore[misc]
    assert a.hard_frame_bytes >= 4 * a.max_frame_bytes


def test_durability_is_memory_or_replica() -> None:
    assert Settings.from_args("gateway", [], env={}).durability == "memory"
    assert Settings.from_args("gateway", [], env={"CHINWAG_DURABILITY": "Replica"}).durability == "replica"
    assert Settings.from_args("server", ["--durability", "memory"], env={"CHINWAG_DURABILITY": "replica"}
                              ).durability == "memory"
    with pytest.raises(SystemExit):
        Settings.from_args("gateway", [], env={"CHINWAG_DURABILITY": "disk"})


@pytest.mark.parametrize("role", ["gateway", "presence"])
def test_gateway_and_presence_keep_a_cluster_url(role: str) -> None:
    url = "redis+cluster://redis-1:6379,redis-2:6379,redis-3:6379"
    assert Settings.from_args(role, ["--redis-url", url], env={}).redis_url == url
    assert Settings.from_args(role, [], env={"CHINWAG_REDIS_URL": url}).redis_url == url


def test_a_malformed_cluster_url_stops_the_program_at_start(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        Settings.from_args("gateway", [], env={"REDIS_URL": "redis+cluster://u:secret@a:x"})
    err = capsys.readouterr().err
    assert "bad port" in err and "secret" not in err


def test_chinwag_server_refuses_a_cluster_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        server_main(["--redis-url", "redis+cluster://u:secret@a:7000"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "chinwag-server runs on one Redis, not a Redis Cluster" in err and "secret" not in err


def test_chinwag_admin_takes_a_cluster_url_and_ignores_one_in_the_environment(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster URL gets as far as opening the window (it watches a cluster now, issue 15)."""
    import tkinter as tk

    from chinwag import admin

    monkeypatch.setenv("REDIS_URL", "redis+cluster://a:x")  # "server" Settings from the env: not checked
    assert Settings.from_args("server", [], prog="chinwag-admin").redis_url == "redis+cluster://a:x"

    def no_display(*args: object, **kwargs: object) -> None:
        raise tk.TclError("no display name and no $DISPLAY environment variable")

    monkeypatch.setattr(admin.tk, "Tk", no_display)
    with pytest.raises(SystemExit) as exited:
        admin.main(["--redis-url", "redis+cluster://a:7000,b:7000"])
    assert exited.value.code == 1  # past the arguments: stopped only by the missing display
    assert "cannot open a window" in capsys.readouterr().err


def test_chinwag_admin_names_a_malformed_cluster_url(capsys: pytest.CaptureFixture[str]) -> None:
    from chinwag.admin import main as admin_main

    with pytest.raises(SystemExit) as exited:
        admin_main(["--redis-url", "redis+cluster://u:secret@a:x"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--redis-url: bad port 'x'" in err and "secret" not in err
