"""The two real processes of an end-to-end test: the voxgate sidecar and an Envoy with the filter.

Each runs in its own session with its own working folder (config and logs), is started by pid,
waited on until it answers, and stopped as a process group. A process that fails to start
raises with the tail of its log, so a broken build explains itself in the test output.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import requests

from harness import prometheus
from tools import procs, render_envoy

REPO_ROOT = render_envoy.REPO_ROOT
SIDECAR_BIN = REPO_ROOT / "target" / "release" / "voxgate-sidecar"
ORT_DYLIB = Path(os.environ.get("ORT_DYLIB_PATH", REPO_ROOT / ".deps" / "lib" / "libonnxruntime.so"))
SIDECAR_READY_SECONDS = 120
ENVOY_READY_SECONDS = 60
STOP_GRACE_SECONDS = 10


def _require(path: Path, hint: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; {hint}")


class Service:
    """A process started and owned by the tests."""

    name = "service"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str], env: dict) -> None:
        self.proc = procs.spawn(argv, self.log_path, env=env, cwd=self.workdir, die_with_parent=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _await(self, ready, what: str, seconds: float) -> None:
        """Waits until `ready()`; a process that exits or never gets ready is stopped and raises."""
        try:
            procs.wait_until(ready, what, self.proc, self.log_path, seconds)
        except procs.StartupError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc.pid, grace_seconds=STOP_GRACE_SECONDS, popen=self.proc)
            self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Sidecar(Service):
    name = "sidecar"

    def __init__(self, workdir: Path, port: int, voices_dir: Path, extra_env: dict | None = None):
        super().__init__(workdir)
        self.port = port
        self.voices_dir = Path(voices_dir)
        self.extra_env = dict(extra_env or {})
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> "Sidecar":
        _require(SIDECAR_BIN, "build it with `cargo build --release -p voxgate-sidecar`")
        env = dict(os.environ, VOXGATE_VOICES_DIR=str(self.voices_dir), ORT_DYLIB_PATH=str(ORT_DYLIB),
                   NO_COLOR="1", **self.extra_env)
        self._spawn([str(SIDECAR_BIN), "--port", str(self.port)], env)
        self._await(lambda: procs.http_status(f"{self.url}/readyz") == 200, "the sidecar", SIDECAR_READY_SECONDS)
        return self

    def metrics(self) -> prometheus.Metrics:
        response = requests.get(f"{self.url}/metrics", timeout=10)
        response.raise_for_status()
        return prometheus.parse(response.text)


class Envoy(Service):
    """Envoy with the voxgate filter. It binds port 0 for its listener and admin and reports the
    ports it got, so any number of instances run side by side without port races."""

    name = "envoy"

    def __init__(self, workdir: Path, filter_config: dict, sidecar_port: int, jwks_port: int,
                 concurrency: int = 2, wasm_path: Path = render_envoy.WASM, mesh: bool = False,
                 extra_env: dict | None = None, **params):
        super().__init__(workdir)
        # Envoy's environment, which the filter VM sees through vm_config.environment_variables.
        self.extra_env = dict(extra_env or {})
        self.filter_config = filter_config
        self.concurrency = concurrency
        self.params = render_envoy.EnvoyParams(
            filter_config=filter_config, listen_port=0, admin_port=0, sidecar_port=sidecar_port,
            jwks_port=jwks_port, wasm_path=Path(wasm_path), access_log=self.workdir / "access.log",
            mesh=mesh, **params)
        self.config_path = self.workdir / "envoy.yaml"
        self.admin_address_path = self.workdir / "admin.address"
        self.port: int | None = None
        self.admin_port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def render(self) -> Path:
        return render_envoy.write(self.params, self.config_path)

    def validate(self) -> subprocess.CompletedProcess:
        """`envoy --mode validate` on this instance's configuration (nothing is served)."""
        _require(render_envoy.ENVOY, "run `make setup`")
        _require(self.params.wasm_path, "build it with `make build`")
        return render_envoy.validate(self.render())

    def start(self) -> "Envoy":
        _require(render_envoy.ENVOY, "run `make setup`")
        _require(self.params.wasm_path, "build it with `make build`")
        self.render()
        self.admin_address_path.unlink(missing_ok=True)
        self._spawn([str(render_envoy.ENVOY), "-c", str(self.config_path),
                     "--concurrency", str(self.concurrency), "--disable-hot-restart",
                     # Warnings, plus the filter's own lines (one per refusal) at info.
                     "--log-level", "warn", "--component-log-level", "wasm:info",
                     "--admin-address-path", str(self.admin_address_path)],
                    dict(os.environ, **self.extra_env))
        try:
            procs.wait_until(self._ready, "Envoy", self.proc, self.log_path, ENVOY_READY_SECONDS)
        except procs.StartupError:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.admin_port is None:
            try:
                address = self.admin_address_path.read_text().strip()
            except FileNotFoundError:
                return False
            if not address:
                return False
            self.admin_port = int(address.rsplit(":", 1)[1])
        if procs.http_status(f"{self.admin_url}/ready") != 200:
            return False
        try:
            with urllib.request.urlopen(f"{self.admin_url}/listeners?format=json", timeout=2) as response:
                listeners = json.load(response)["listener_statuses"]
        except OSError:
            return False
        self.port = listeners[0]["local_address"]["socket_address"]["port_value"]
        return procs.port_open("127.0.0.1", self.port)

    def stop(self) -> None:
        super().stop()
        self.port = None
        self.admin_port = None

    def stats(self) -> prometheus.Metrics:
        """Envoy's /stats/prometheus, where the filter's metrics appear with their labels."""
        response = requests.get(f"{self.admin_url}/stats/prometheus", timeout=10)
        response.raise_for_status()
        return prometheus.parse(response.text)

    def access_log(self) -> list[dict]:
        """The JSON access-log entries so far (Envoy flushes the file about every second)."""
        path = self.params.access_log
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def access_log_by_request_id(self, request_ids: list[str], timeout: float = 20) -> dict[str, dict]:
        """request id -> access-log entry for each of `request_ids`, waiting for Envoy to flush
        them; raises AssertionError naming the ids still missing after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            entries = {e.get("request_id"): e for e in self.access_log()}
            missing = [i for i in request_ids if i not in entries]
            if not missing:
                return entries
            assert time.monotonic() < deadline, f"no access-log entry for {missing}"
            time.sleep(0.25)
