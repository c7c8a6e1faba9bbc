"""A real NGINX (Debian's `nginx`) as the edge in front of a test's Envoy, from
envoy/nginx/voxgate-edge.conf.in with its ports filled in, running in its own prefix folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from harness.ports import free_port
from harness.services import Service
from tools import procs, render_envoy

TEMPLATE = render_envoy.REPO_ROOT / "envoy" / "nginx" / "voxgate-edge.conf.in"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
READY_SECONDS = 30


class Nginx(Service):
    name = "nginx"

    def __init__(self, workdir: Path, envoy_port: int):
        super().__init__(workdir)
        self.envoy_port = envoy_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.access_log_path = self.workdir / "logs" / "access.log"
        self.error_log_path = self.workdir / "logs" / "error.log"

    def start(self) -> "Nginx":
        config = TEMPLATE.read_text().replace("@LISTEN_PORT@", str(self.port)).replace(
            "@ENVOY_PORT@", str(self.envoy_port))
        config_path = self.workdir / "edge.conf"
        config_path.write_text(config)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._spawn([NGINX, "-p", str(self.workdir), "-c", str(config_path), "-g", "daemon off;"],
                    dict(os.environ))
        self._await(lambda: procs.port_open("127.0.0.1", self.port), "NGINX", READY_SECONDS)
        return self

    def access_log_text(self) -> str:
        return self.access_log_path.read_text() if self.access_log_path.exists() else ""

    def error_log_text(self) -> str:
        return self.error_log_path.read_text() if self.error_log_path.exists() else ""
