"""Fixtures for the end-to-end tests: the session's voxgate stack and per-module Envoys.

`stack` (session): the real sidecar and a default Envoy with the filter, shared by every test;
see harness.stack.Stack for what it offers (URLs, tokens, metrics, Envoy restarts).
`envoy_factory` (module): starts Envoys with other filter configurations and stops them when the
module is done.
Tests marked `session_end` run after every other collected test (see
pytest_collection_modifyitems).
"""

import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
for path in (str(REPO_ROOT), str(TESTS_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import pytest  # noqa: E402

from harness import Stack  # noqa: E402
from tools import procs  # noqa: E402

LOG_LINES_ON_FAILURE = 30
SESSION_END = "session_end"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{SESSION_END}: runs after every other collected test (it checks what the whole session left)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """Moves the `session_end` tests behind all the others, keeping the order within each group,
    so that such a test (the secrets scan of tests/test_secrets_in_logs.py) sees the whole
    session, whatever order the files were named in."""
    last = [item for item in items if item.get_closest_marker(SESSION_END) is not None]
    if last:
        first = [item for item in items if item.get_closest_marker(SESSION_END) is None]
        items[:] = first + last


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    running = Stack(tmp_path_factory.mktemp("voxgate")).start()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def envoy_factory(stack):
    """`envoy_factory(filter_config, concurrency=2)` → a started harness.Envoy."""
    started = []

    def start(filter_config, concurrency=2):
        envoy = stack.start_envoy(filter_config, concurrency)
        started.append(envoy)
        return envoy

    try:
        yield start
    finally:
        for envoy in started:
            envoy.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test that used the stack shows the last lines of the sidecar and Envoy logs."""
    outcome = yield
    report = outcome.get_result()
    stack = item.funcargs.get("stack") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(stack, Stack):
        report.sections.append(("sidecar log", procs.log_tail(stack.sidecar.log_path, LOG_LINES_ON_FAILURE)))
        if stack.envoy is not None:
            report.sections.append(("envoy log", procs.log_tail(stack.envoy.log_path, LOG_LINES_ON_FAILURE)))
