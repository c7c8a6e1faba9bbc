"""The cluster tier's real processes: Redis (Debian's `redis-server`) and the voxgate-rls
rate-limit service, each started by pid on a free loopback port and stopped by the tests.

Redis runs with an append-only file synced on every write, so a Redis killed and restarted on
the same port comes back with the counts it had: what a production Redis with persistence does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import requests

from harness import prometheus
from harness.ports import free_port
from harness.services import Service, _require
from tools import procs, render_envoy

REPO_ROOT = render_envoy.REPO_ROOT
RLS_BIN = REPO_ROOT / "target" / "release" / "voxgate-rls"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
READY_SECONDS = 30


def _kill(service: Service) -> None:
    """SIGKILL, as a crash or a partition: no shutdown, no final write."""
    if service.proc is not None:
        try:
            os.killpg(service.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        service.proc.wait(timeout=10)
        service.proc = None


class Redis(Service):
    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None):
        super().__init__(workdir)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        _require(Path(REDIS_SERVER), "run `make setup` (Debian package redis-server)")
        self._spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir),
                     "--protected-mode", "no"], dict(os.environ))
        self._await(self._answers_ping, "Redis", READY_SECONDS)
        return self

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        _kill(self)


class RateLimitService(Service):
    """voxgate-rls, configured from a filter configuration (the same JSON the filter gets)."""

    name = "rls"

    def __init__(self, workdir: Path, filter_config: dict, redis: Redis | None,
                 port: int | None = None, storage_timeout_ms: int = 200):
        super().__init__(workdir)
        self.filter_config = filter_config
        self.redis = redis
        self.port = port or free_port()
        self.admin_port = free_port()
        self.storage_timeout_ms = storage_timeout_ms
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> "RateLimitService":
        _require(RLS_BIN, "build it with `cargo build --release -p voxgate-rls`")
        config_path = self.workdir / "filter-config.json"
        config_path.write_text(json.dumps(self.filter_config))
        argv = [str(RLS_BIN), "--config", str(config_path), "--listen", f"127.0.0.1:{self.port}",
                "--admin", f"127.0.0.1:{self.admin_port}", "--storage-timeout-ms", str(self.storage_timeout_ms)]
        if self.redis is not None:
            argv += ["--redis", self.redis.url]
        self._spawn(argv, dict(os.environ))
        self._await(lambda: procs.http_status(f"{self.admin_url}/healthz") == 200, "voxgate-rls", READY_SECONDS)
        return self

    def ready(self) -> bool:
        return procs.http_status(f"{self.admin_url}/readyz") == 200

    def kill(self) -> None:
        _kill(self)

    def metrics(self) -> prometheus.Metrics:
        response = requests.get(f"{self.admin_url}/metrics", timeout=10)
        response.raise_for_status()
        return prometheus.parse(response.text)
