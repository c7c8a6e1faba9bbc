"""A real Prometheus server (Debian's `prometheus`) scraping a test's Envoy admin and sidecar.

It evaluates the repository's alert rules with every duration divided by 60 (a minute of a
rule becomes a second), scrapes and evaluates every second, and keeps its data in its own
folder, so an alert that takes five minutes to fire in production fires in five seconds here
with the same expressions, thresholds and `for:` structure.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import requests
import yaml

from harness.ports import free_port
from harness.services import Service
from tools import procs, render_envoy

REPO_ROOT = render_envoy.REPO_ROOT
RULES = REPO_ROOT / "monitoring" / "prometheus" / "voxgate-rules.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
READY_SECONDS = 60
TIME_SCALE = 60

_DURATION = re.compile(r"(\d+)([smh])")
_RANGE = re.compile(r"\[(\d+[smh])\]")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def scaled_duration(duration: str) -> str:
    """`5m` -> `5s`: a duration divided by TIME_SCALE, in whole seconds (at least one)."""
    match = _DURATION.fullmatch(duration)
    if match is None:
        raise ValueError(f"unsupported duration {duration!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return f"{max(1, seconds // TIME_SCALE)}s"


def scaled_rules(rules: dict) -> dict:
    """The rule groups with every `for:` and every range selector scaled down."""
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["expr"] = _RANGE.sub(lambda m: f"[{scaled_duration(m.group(1))}]", rule["expr"])
            if "for" in rule:
                rule["for"] = scaled_duration(rule["for"])
    return rules


class Prometheus(Service):
    name = "prometheus"

    def __init__(self, workdir: Path, targets: dict[str, tuple[str, str]]):
        """`targets`: job name -> (host:port, metrics path)."""
        super().__init__(workdir)
        self.targets = targets
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        rules = scaled_rules(yaml.safe_load(RULES.read_text()))
        rules_path = self.workdir / "voxgate-rules.yml"
        rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(rules_path)],
            "scrape_configs": [
                {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [address]}]}
                for job, (address, path) in self.targets.items()
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        return config_path

    def start(self) -> "Prometheus":
        config_path = self._write_config()
        self._spawn([PROMETHEUS, f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{self.port}",
                     f"--storage.tsdb.path={self.workdir / 'data'}", "--log.level=warn"], dict(os.environ))
        self._await(lambda: procs.http_status(f"{self.url}/-/ready") == 200, "Prometheus", READY_SECONDS)
        return self

    def _get(self, path: str, **params) -> dict:
        response = requests.get(f"{self.url}{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self) -> list[dict]:
        """Active alerts (`state` pending or firing) with their labels."""
        return self._get("/api/v1/alerts")["alerts"]

    def query(self, expr: str) -> list[dict]:
        """An instant query; raises on a query Prometheus refuses."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def targets_up(self) -> dict[str, bool]:
        return {t["labels"]["job"]: t["health"] == "up" for t in self._get("/api/v1/targets")["activeTargets"]}
