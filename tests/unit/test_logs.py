"""Structured logs: one line per event, JSON when asked."""

from __future__ import annotations

import json
import logging

import pytest

from common.logs import setup_logging


def test_json_logs_are_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("DEBUG", as_json=True)
    log = logging.getLogger("chinwag.test")
    log.info("login %s from %s", "alice", "127.0.0.1:5000")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("handler crashed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "info" and first["logger"] == "chinwag.test"
    assert first["msg"] == "login alice from 127.0.0.1:5000"
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_plain_logs_and_levels(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("WARNING")
    log = logging.getLogger("chinwag.test")
    log.info("hidden")
    log.warning("shown")
    out = capsys.readouterr().err
    assert "hidden" not in out and "WARNING chinwag.test: shown" in out
    setup_logging("INFO")
