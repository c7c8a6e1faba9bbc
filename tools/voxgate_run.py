"""The local run: `make run` starts the sidecar and Envoy in the background, `make stop` stops them.

`start` stops what an earlier start left running, renders `.run/envoy.yaml` with the dev JWKS,
starts the sidecar and then Envoy (each detached into its own session, pid in `.run/NAME.pid`,
output in `.run/NAME.log`), waits until both answer, and prints a `curl` line with a fresh dev
token. `stop` stops both by pid: SIGTERM, then SIGKILL after a grace period. The folder is
`$VOXGATE_RUN_DIR` when set (the tests use their own).

CLI: `python -m tools.voxgate_run start|stop`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tools import devkeys, devtoken, procs, render_envoy

REPO_ROOT = devkeys.REPO_ROOT
RUN_DIR = Path(os.environ.get("VOXGATE_RUN_DIR", REPO_ROOT / ".run"))
SIDECAR = REPO_ROOT / "target" / "release" / "voxgate-sidecar"
DEFAULT_VOICES = REPO_ROOT / ".deps" / "voices"
DEFAULT_ORT = REPO_ROOT / ".deps" / "lib" / "libonnxruntime.so"
DEMO_VOICE = "alloy"
SIDECAR_READY_SECONDS = 120
ENVOY_READY_SECONDS = 60
STOP_GRACE_SECONDS = 10

# pid file name -> executable name its process must have (a stale pid may belong to another program).
SERVICES = {"envoy": "envoy", "sidecar": "voxgate-sidecar"}


class LaunchError(RuntimeError):
    pass


def _pid_file(name: str) -> Path:
    return RUN_DIR / f"{name}.pid"


def _read_pid(name: str) -> int | None:
    try:
        return int(_pid_file(name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def stop() -> list[str]:
    """Stop every service recorded in a pid file; returns the names that were running."""
    stopped = []
    for name, executable in SERVICES.items():
        pid = _read_pid(name)
        if pid is not None and procs.is_running(pid):
            argv = procs.command_line(pid)
            if argv and Path(argv[0]).name == executable:
                procs.stop(pid, grace_seconds=STOP_GRACE_SECONDS)
                stopped.append(name)
        _pid_file(name).unlink(missing_ok=True)
    return stopped


def _require_file(path: Path, hint: str) -> None:
    if not path.is_file():
        raise LaunchError(f"{path} is missing; {hint}")


def _require_free(port: int, variable: str) -> None:
    if procs.port_open("127.0.0.1", port):
        raise LaunchError(f"127.0.0.1:{port} is already in use; free it or set {variable}")


def _start(name: str, argv: list[str], env: dict) -> subprocess.Popen:
    log = RUN_DIR / f"{name}.log"
    log.write_text("")
    proc = procs.spawn(argv, log, env=env, cwd=REPO_ROOT)
    _pid_file(name).write_text(f"{proc.pid}\n")
    return proc


def start() -> str:
    """Start sidecar and Envoy, wait until both are ready; returns the curl line to print."""
    stop()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    envoy_bin = render_envoy.ENVOY
    _require_file(envoy_bin, "run `make setup`")
    _require_file(SIDECAR, "run `make build`")
    _require_file(render_envoy.WASM, "run `make build`")

    keys = devkeys.ensure_keys()
    config = render_envoy.filter_config(keys.jwks())
    params = render_envoy.EnvoyParams.from_env(config, access_log=RUN_DIR / "envoy-access.log")
    for port, variable in ((params.sidecar_port, "VOXGATE_SIDECAR_PORT"),
                           (params.listen_port, "VOXGATE_LISTEN_PORT"),
                           (params.admin_port, "VOXGATE_ADMIN_PORT")):
        _require_free(port, variable)

    env = dict(os.environ)
    env.setdefault("VOXGATE_VOICES_DIR", str(DEFAULT_VOICES))
    env.setdefault("ORT_DYLIB_PATH", str(DEFAULT_ORT))
    env.setdefault("NO_COLOR", "1")  # plain log files
    sidecar = _start("sidecar", [str(SIDECAR), "--port", str(params.sidecar_port)], env)
    sidecar_url = f"http://127.0.0.1:{params.sidecar_port}"
    try:
        procs.wait_until(lambda: procs.http_status(f"{sidecar_url}/readyz") == 200, "the sidecar",
                         sidecar, RUN_DIR / "sidecar.log", SIDECAR_READY_SECONDS)
        # Rendered now, so that the filter knows the voices the sidecar has just loaded.
        params.filter_config = render_envoy.with_catalog(config, render_envoy.fetch_catalog(sidecar_url))
        envoy_yaml = render_envoy.write(params, RUN_DIR / "envoy.yaml")
        concurrency = os.environ.get("VOXGATE_ENVOY_CONCURRENCY", "2")
        envoy = _start("envoy", [str(envoy_bin), "-c", str(envoy_yaml), "--concurrency", concurrency,
                                 "--disable-hot-restart", "--log-level", "info"], env)
        admin_url = f"http://127.0.0.1:{params.admin_port}"
        procs.wait_until(lambda: procs.http_status(f"{admin_url}/ready") == 200
                         and procs.port_open("127.0.0.1", params.listen_port),
                         "Envoy", envoy, RUN_DIR / "envoy.log", ENVOY_READY_SECONDS)
    except procs.StartupError:
        stop()
        raise

    token = devtoken.mint(keys=keys, sub="alice")
    body = f'{{"model":"tts-1","input":"Hello from voxgate.","voice":"{DEMO_VOICE}","response_format":"mp3"}}'
    curl = " ".join([
        "curl -sS --fail-with-body", f"http://127.0.0.1:{params.listen_port}/v1/audio/speech",
        "-H", shlex.quote(f"Authorization: Bearer {token}"),
        "-H", shlex.quote("Content-Type: application/json"),
        "-d", shlex.quote(body), "-o hello.mp3"])
    return "\n".join([
        f"voxgate is running: Envoy http://127.0.0.1:{params.listen_port} "
        f"(admin http://127.0.0.1:{params.admin_port}), sidecar {sidecar_url}",
        f"logs and pids in {RUN_DIR}; stop with `make stop`",
        "speech through Envoy with a dev token valid for one hour (new ones: `make token SUB=alice`):",
        "",
        curl,
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the local voxgate stack.")
    parser.add_argument("action", choices=("start", "stop"))
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start())
        else:
            stopped = stop()
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    except (LaunchError, procs.StartupError, ValueError) as err:
        print(f"voxgate: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
