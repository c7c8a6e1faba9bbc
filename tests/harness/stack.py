"""The stack an end-to-end test session runs against.

One sidecar per session (loading voices takes seconds), a default Envoy in front of it, more
Envoys on demand with other filter configurations, a loopback JWKS endpoint for the `jwks`
cluster, and dev keys of its own. Everything lives in one temporary folder and is stopped by
`close()`, which also runs at interpreter exit should a test run end without its teardown.
"""

from __future__ import annotations

import atexit
import os
import subprocess
from pathlib import Path

from harness.jwks_server import JwksServer
from harness.ports import free_port
from harness.prometheus import Metrics
from harness.services import Envoy, Sidecar
from tools import devkeys, devtoken, render_envoy

REPO_ROOT = render_envoy.REPO_ROOT
PIPER_VOICES = Path(os.environ.get("VOXGATE_VOICES_DIR", REPO_ROOT / ".deps" / "voices"))
COQUI_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "coqui"
PIPER_VOICE = "en_US-joe-medium"
COQUI_VOICES = ("coqui_vits_chars", "coqui_vits_espeak", "coqui_vits_multispeaker")


def piper_voices_dir(folder: Path) -> Path:
    """A voices folder (symlinks) with the Piper voice alone, `NAME.onnx` + `NAME.onnx.json`;
    a folder that already has it is left as it is."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".onnx", ".onnx.json"):
        link = folder / f"{PIPER_VOICE}{suffix}"
        if not link.exists():
            link.symlink_to((PIPER_VOICES / f"{PIPER_VOICE}{suffix}").resolve())
    return folder


def build_voices_dir(folder: Path) -> Path:
    """A voices folder (symlinks) with the Piper voice and the Coqui fixtures in the sidecar's layout:
    `NAME.onnx` + `NAME.onnx.json` for Piper, `NAME/model.onnx` + `NAME/config.json` for Coqui."""
    piper_voices_dir(folder)
    for name in COQUI_VOICES:
        (folder / name).mkdir()
        (folder / name / "model.onnx").symlink_to(COQUI_FIXTURES / f"{name}.onnx")
        (folder / name / "config.json").symlink_to(COQUI_FIXTURES / f"{name}.config.json")
    return folder


class Stack:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.keys = devkeys.ensure_keys(self.root / "keys")
        self.jwks_server = JwksServer()
        self.voices_dir = build_voices_dir(self.root / "voices")
        # OpenAI voice names (`alloy`, …) and requests without a voice get the real Piper voice,
        # not a random-weight Coqui fixture.
        self.sidecar = Sidecar(self.root / "sidecar", free_port(), self.voices_dir,
                               extra_env={"VOXGATE_DEFAULT_VOICE": PIPER_VOICE})
        self.envoy: Envoy | None = None
        self.catalog: dict | None = None
        self._envoys: list[Envoy] = []
        self._closed = False
        atexit.register(self.close)

    def start(self) -> "Stack":
        try:
            self.sidecar.start()
            self.catalog = render_envoy.fetch_catalog(self.sidecar.url)
            self.envoy = self.start_envoy()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def url(self) -> str:
        """Base URL of the default Envoy listener."""
        return self.envoy.url

    @property
    def admin_url(self) -> str:
        return self.envoy.admin_url

    @property
    def sidecar_url(self) -> str:
        return self.sidecar.url

    def filter_config(self, metered_metadata: bool = False) -> dict:
        """A fresh copy of the default filter configuration (envoy/filter-config.json with this
        session's dev JWKS and the sidecar's voices), to modify and pass to `start_envoy` /
        `restart_envoy`. `metered_metadata`: the metadata routes (`/v1/models`, `/healthz`)
        spend the plan's request budget, as an operator may configure; tests of the limits use
        them as the cheapest requests that do."""
        config = render_envoy.filter_config(self.keys.jwks())
        if metered_metadata:
            for route in config["routes"]:
                if route["api"] == "metadata":
                    route["budget"] = "plan"
        return render_envoy.with_catalog(config, self.catalog) if self.catalog else config

    def token(self, **kwargs) -> str:
        """A dev token from this session's keys; arguments as `tools.devtoken.mint`."""
        kwargs.setdefault("keys", self.keys)
        return devtoken.mint(**kwargs)

    def new_envoy(self, filter_config: dict | None = None, concurrency: int = 2, mesh: bool = False,
                  **params) -> Envoy:
        """An Envoy in front of the session's sidecar, not started (see `Envoy.validate`);
        `mesh`: with the filter chain of the Istio deployment; `params`: other fields of
        `render_envoy.EnvoyParams` (`xff_trusted_hops`, …)."""
        index = len(self._envoys)
        envoy = Envoy(self.root / f"envoy-{index}", filter_config or self.filter_config(),
                      sidecar_port=self.sidecar.port, jwks_port=self.jwks_server.port,
                      concurrency=concurrency, mesh=mesh, **params)
        self._envoys.append(envoy)
        return envoy

    def start_envoy(self, filter_config: dict | None = None, concurrency: int = 2) -> Envoy:
        """Start one more Envoy; it runs beside the others until stopped or the session ends."""
        return self.new_envoy(filter_config, concurrency).start()

    def validate(self, filter_config: dict) -> subprocess.CompletedProcess:
        """`envoy --mode validate` with this filter configuration: returncode, stdout, stderr."""
        return self.new_envoy(filter_config).validate()

    def restart_envoy(self, filter_config: dict | None = None, concurrency: int = 2) -> Envoy:
        """Replace the default Envoy by one with another configuration (None: the default one)."""
        if self.envoy is not None:
            self.envoy.stop()
        self.envoy = self.start_envoy(filter_config, concurrency)
        return self.envoy

    def envoy_stats(self, envoy: Envoy | None = None) -> Metrics:
        return (envoy or self.envoy).stats()

    def sidecar_metrics(self) -> Metrics:
        return self.sidecar.metrics()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for envoy in self._envoys:
            envoy.stop()
        self.sidecar.stop()
        self.jwks_server.close()
        atexit.unregister(self.close)
