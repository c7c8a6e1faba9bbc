"""The local run (`make run` / `make stop`): the printed curl line speaks, a second start
restarts cleanly, stop leaves nothing running; `make run-cluster`: the printed loop shows one
budget across three Envoys. Uses its own folder and free ports, so a stack the developer already
runs is left alone."""

import os
import subprocess
import sys

import pytest

from harness import free_port
from tools import procs, render_envoy

REPO_ROOT = render_envoy.REPO_ROOT


@pytest.fixture
def launcher(tmp_path):
    env = dict(os.environ,
               VOXGATE_RUN_DIR=str(tmp_path / "run"), VOXGATE_KEYS_DIR=str(tmp_path / "keys"),
               VOXGATE_LISTEN_PORT=str(free_port()), VOXGATE_ADMIN_PORT=str(free_port()),
               VOXGATE_SIDECAR_PORT=str(free_port()), VOXGATE_REDIS_PORT=str(free_port()),
               VOXGATE_RLS_PORT=str(free_port()), VOXGATE_RLS_ADMIN_PORT=str(free_port()))

    def run(action):
        return subprocess.run([sys.executable, "-m", "tools.voxgate_run", action], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    try:
        yield run, tmp_path / "run"
    finally:
        run("stop")


def pids(run_dir):
    return {name: int((run_dir / f"{name}.pid").read_text()) for name in ("sidecar", "envoy")}


def test_start_prints_a_curl_that_speaks_and_stop_ends_both(launcher, tmp_path):
    run, run_dir = launcher
    started = run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    curl = [line for line in started.stdout.splitlines() if line.startswith("curl ")]
    assert len(curl) == 1, started.stdout
    subprocess.run(["bash", "-c", curl[0]], cwd=tmp_path, check=True, timeout=120)
    mp3 = (tmp_path / "hello.mp3").read_bytes()
    assert mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0, "an MPEG audio frame"

    first = pids(run_dir)
    restarted = run("start")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    second = pids(run_dir)
    assert not any(procs.is_running(pid) for pid in first.values())
    assert all(procs.is_running(pid) for pid in second.values())

    stopped = run("stop")
    assert stopped.returncode == 0 and "sidecar" in stopped.stdout and "envoy" in stopped.stdout
    assert not any(procs.is_running(pid) for pid in second.values())
    assert not list(run_dir.glob("*.pid"))


def test_stop_with_nothing_running_is_harmless(launcher):
    run, _ = launcher
    result = run("stop")
    assert result.returncode == 0 and "nothing was running" in result.stdout


CLUSTER_SERVICES = ("redis", "rls", "sidecar", "envoy", "envoy-1", "envoy-2")


def test_start_cluster_shares_one_budget_across_three_envoys(launcher, tmp_path):
    run, run_dir = launcher
    started = run("start-cluster")
    assert started.returncode == 0, started.stdout + started.stderr
    [loop] = [line for line in started.stdout.splitlines() if line.startswith("for url in")]
    codes = subprocess.run(["bash", "-c", loop], check=True, timeout=120, capture_output=True, text=True).stdout
    # The shipped free plan: 10 requests, whichever Envoy serves them.
    assert codes.split() == ["200"] * 10 + ["429"] * 2, codes
    [curl] = [line for line in started.stdout.splitlines() if line.startswith("curl ")]
    subprocess.run(["bash", "-c", curl], cwd=tmp_path, check=True, timeout=120)
    assert (tmp_path / "hello.mp3").stat().st_size > 1000

    running = {name: int((run_dir / f"{name}.pid").read_text()) for name in CLUSTER_SERVICES}
    assert all(procs.is_running(pid) for pid in running.values())
    stopped = run("stop")
    assert stopped.returncode == 0 and all(name in stopped.stdout for name in CLUSTER_SERVICES), stopped.stdout
    assert not any(procs.is_running(pid) for pid in running.values())
