"""chinwag-loadtest --plot: a missing matplotlib stops it before any load; a failing plot loses no results."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from chinwag.loadtest import main, report


def test_plot_without_matplotlib_stops_before_any_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail, as when not installed
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a "gateway" that records whether anyone came
        listener.setblocking(False)
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        code = main(["dm", "--urls", url, "--clients", "2", "--duration", "1", "--no-progress",
                     "--plot", str(tmp_path / "dm.png"), "--json", str(tmp_path / "dm.json")])
        took = time.monotonic() - started
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: no load ran
    assert code == 2
    err = capsys.readouterr().err
    assert "matplotlib" in err and "chinwag[bench]" in err
    assert took < 5
    assert not (tmp_path / "dm.json").exists() and not (tmp_path / "dm.png").exists()


def test_plot_of_a_scenario_without_latencies_is_refused_up_front(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["idle", "--urls", "ws://127.0.0.1:9", "--plot", "idle.png"])
    assert exit_info.value.code == 2
    assert "--plot" in capsys.readouterr().err


def test_a_failing_plot_keeps_the_printed_report_and_the_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(scenario="dm", json=str(tmp_path / "dm.json"), plot=str(tmp_path / "dm.png"))
    result: dict[str, Any] = {"scenario": "dm", "delivered": 1234, "p99_ms": 7.5}

    def plot(path: Path) -> None:
        raise OSError(28, "No space left on device")

    assert report(args, result, plot) == 1
    out, err = capsys.readouterr()
    assert "delivered" in out and "1234" in out
    assert "--plot failed" in err and "No space left" in err
    assert json.loads((tmp_path / "dm.json").read_text()) == result


def test_report_without_plot_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(scenario="dm", json=str(tmp_path / "dm.json"), plot=None)
    assert report(args, {"scenario": "dm", "delivered": 3}, None) == 0
    assert json.loads((tmp_path / "dm.json").read_text())["delivered"] == 3
    assert "delivered" in capsys.readouterr().out


def test_an_unwritable_json_keeps_the_printed_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(scenario="dm", json=str(tmp_path / "no-such-dir" / "dm.json"), plot=None)
    assert report(args, {"scenario": "dm", "delivered": 42}, None) == 1
    out, err = capsys.readouterr()
    assert "42" in out and "cannot write --json" in err
