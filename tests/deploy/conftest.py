"""Fixtures for tests/deploy: images built once per session (and cached by Podman per machine)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.deploy.harness import Cluster, Podman, brought_up, timed, tools_missing
from tests.web.conftest import browser, pages  # noqa: F401  (the web client through HAProxy)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """Stand-in bases and chinwag:local, built from the real Dockerfile.

    Without podman these tests are skipped on a developer's machine, but CI
    (CI=true) installs it in .ci/run, so there a missing tool is a failure."""
    missing = tools_missing()
    if missing:
        message = f"deploy tests need {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pod = Podman(tmp_path_factory.mktemp("podman"))
    pod.remove_stale_projects()
    with timed("stand-in base images"):
        pod.ensure_standins()
    with timed("chinwag:local from the Dockerfile"):
        pod.build_project()
    yield pod


@pytest.fixture(scope="module")
def cluster(podman: Podman) -> Iterator[Cluster]:
    """The real docker-compose.yml, up and healthy, shared by one module's tests."""
    with brought_up(Cluster(podman, ["docker-compose.yml"]), timing="") as c:
        yield c
