"""The local run: `make run` starts the sidecar and Envoy in the background, `make stop` stops them.
`make run-cluster` starts the deployment of cluster-wide limits on loopback instead: Redis, the
voxgate-rls rate-limit service, the sidecar and three Envoys sharing one budget.

`start` stops what an earlier start left running, renders `.run/envoy.yaml` with the dev JWKS,
starts the sidecar and then Envoy (each detached into its own session, pid in `.run/NAME.pid`,
output in `.run/NAME.log`), waits until both answer, and prints a `curl` line with a fresh dev
token. `stop` stops both by pid: SIGTERM, then SIGKILL after a grace period. The folder is
`$VOXGATE_RUN_DIR` when set (the tests use their own).

CLI: `python -m tools.voxgate_run start|start-cluster|stop`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from tools import devkeys, devtoken, procs, render_envoy

REPO_ROOT = devkeys.REPO_ROOT
RUN_DIR = Path(os.environ.get("VOXGATE_RUN_DIR", REPO_ROOT / ".run"))
SIDECAR = REPO_ROOT / "target" / "release" / "voxgate-sidecar"
RLS = REPO_ROOT / "target" / "release" / "voxgate-rls"
REDIS_SERVER = Path("/usr/bin/redis-server")
CLUSTER_ENVOYS = 3
# What `make run-cluster` enforces across its Envoys, with the numbers of the shipped plans.
CLUSTER_TIER = {"service": "voxgate_rls", "domain": "voxgate", "timeout_ms": 100, "failure_mode": "deny",
                "limits": ["subject_requests", "subject_characters", "global_requests", "global_characters"]}
DEFAULT_VOICES = REPO_ROOT / ".deps" / "voices"
DEFAULT_ORT = REPO_ROOT / ".deps" / "lib" / "libonnxruntime.so"
DEMO_VOICE = "alloy"
SIDECAR_READY_SECONDS = 120
ENVOY_READY_SECONDS = 60
STOP_GRACE_SECONDS = 10

# pid file name -> executable name its process must have (a stale pid may belong to another program).
SERVICES = {"envoy": "envoy", "sidecar": "voxgate-sidecar", "redis": "redis-server", "rls": "voxgate-rls",
            **{f"envoy-{n}": "envoy" for n in range(1, CLUSTER_ENVOYS)}}


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
            # Redis rewrites its argv[0] into a title (`/usr/bin/redis-server 127.0.0.1:6380`).
            if argv and Path(argv[0].split(" ")[0]).name == executable:
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


def _sidecar(params: render_envoy.EnvoyParams, env: dict) -> str:
    """Starts the sidecar and waits until it is ready; returns its URL."""
    sidecar = _start("sidecar", [str(SIDECAR), "--port", str(params.sidecar_port)], env)
    sidecar_url = f"http://127.0.0.1:{params.sidecar_port}"
    procs.wait_until(lambda: procs.http_status(f"{sidecar_url}/readyz") == 200, "the sidecar",
                     sidecar, RUN_DIR / "sidecar.log", SIDECAR_READY_SECONDS)
    return sidecar_url


def _envoy(name: str, params: render_envoy.EnvoyParams, env: dict) -> None:
    """Renders `.run/NAME.yaml`, starts that Envoy and waits until it serves."""
    envoy_yaml = render_envoy.write(params, RUN_DIR / f"{name}.yaml")
    concurrency = os.environ.get("VOXGATE_ENVOY_CONCURRENCY", "2")
    envoy = _start(name, [str(render_envoy.ENVOY), "-c", str(envoy_yaml), "--concurrency", concurrency,
                          "--disable-hot-restart", "--log-level", "info"], env)
    admin_url = f"http://127.0.0.1:{params.admin_port}"
    procs.wait_until(lambda: procs.http_status(f"{admin_url}/ready") == 200
                     and procs.port_open("127.0.0.1", params.listen_port),
                     "Envoy", envoy, RUN_DIR / f"{name}.log", ENVOY_READY_SECONDS)


def _environment() -> dict:
    env = dict(os.environ)
    env.setdefault("VOXGATE_VOICES_DIR", str(DEFAULT_VOICES))
    env.setdefault("ORT_DYLIB_PATH", str(DEFAULT_ORT))
    env.setdefault("NO_COLOR", "1")  # plain log files
    return env


def _prepare(*binaries: Path) -> devkeys.DevKeys:
    stop()
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    _require_file(render_envoy.ENVOY, "run `make setup`")
    for binary in (SIDECAR, render_envoy.WASM, *binaries):
        _require_file(binary, "run `make build`")
    return devkeys.ensure_keys()


def _speech_curl(keys: devkeys.DevKeys, port: int) -> str:
    token = devtoken.mint(keys=keys, sub="alice")
    body = f'{{"model":"tts-1","input":"Hello from voxgate.","voice":"{DEMO_VOICE}","response_format":"mp3"}}'
    return " ".join([
        "curl -sS --fail-with-body", f"http://127.0.0.1:{port}/v1/audio/speech",
        "-H", shlex.quote(f"Authorization: Bearer {token}"),
        "-H", shlex.quote("Content-Type: application/json"),
        "-d", shlex.quote(body), "-o hello.mp3"])


def start() -> str:
    """Start sidecar and Envoy, wait until both are ready; returns the curl line to print."""
    keys = _prepare()
    config = render_envoy.filter_config(keys.jwks())
    params = render_envoy.EnvoyParams.from_env(config, access_log=RUN_DIR / "envoy-access.log")
    for port, variable in ((params.sidecar_port, "VOXGATE_SIDECAR_PORT"),
                           (params.listen_port, "VOXGATE_LISTEN_PORT"),
                           (params.admin_port, "VOXGATE_ADMIN_PORT")):
        _require_free(port, variable)
    env = _environment()
    try:
        sidecar_url = _sidecar(params, env)
        # Rendered now, so that the filter knows the voices the sidecar has just loaded.
        params.filter_config = render_envoy.with_catalog(config, render_envoy.fetch_catalog(sidecar_url))
        _envoy("envoy", params, env)
    except procs.StartupError:
        stop()
        raise
    return "\n".join([
        f"voxgate is running: Envoy http://127.0.0.1:{params.listen_port} "
        f"(admin http://127.0.0.1:{params.admin_port}), sidecar {sidecar_url}",
        f"logs and pids in {RUN_DIR}; stop with `make stop`",
        "speech through Envoy with a dev token valid for one hour (new ones: `make token SUB=alice`):",
        "",
        _speech_curl(keys, params.listen_port),
    ])


def start_cluster() -> str:
    """Redis, voxgate-rls, the sidecar and three Envoys whose filters share one budget through
    the rate-limit service; returns what to print."""
    keys = _prepare(RLS)
    _require_file(REDIS_SERVER, "run `make setup` (Debian package redis-server)")
    config = render_envoy.filter_config(keys.jwks())
    config["rate_limits"]["cluster"] = dict(CLUSTER_TIER)
    base = render_envoy.EnvoyParams.from_env(config, access_log=RUN_DIR / "envoy-access.log")
    redis_port = render_envoy.env_port("VOXGATE_REDIS_PORT", 6380)
    rls_admin_port = render_envoy.env_port("VOXGATE_RLS_ADMIN_PORT", 8092)
    listeners = [(base.listen_port + n, base.admin_port + n) for n in range(CLUSTER_ENVOYS)]
    ports = [(base.sidecar_port, "VOXGATE_SIDECAR_PORT"), (redis_port, "VOXGATE_REDIS_PORT"),
             (base.rls_port, "VOXGATE_RLS_PORT"), (rls_admin_port, "VOXGATE_RLS_ADMIN_PORT")]
    for listen, admin in listeners:
        ports += [(listen, "VOXGATE_LISTEN_PORT"), (admin, "VOXGATE_ADMIN_PORT")]
    for port, variable in ports:
        _require_free(port, variable)
    env = _environment()
    redis_dir = RUN_DIR / "redis"
    redis_dir.mkdir(exist_ok=True)
    try:
        redis = _start("redis", [str(REDIS_SERVER), "--port", str(redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "yes", "--dir", str(redis_dir)], env)
        procs.wait_until(lambda: procs.port_open("127.0.0.1", redis_port), "Redis", redis,
                         RUN_DIR / "redis.log", ENVOY_READY_SECONDS)
        sidecar_url = _sidecar(base, env)
        config = render_envoy.with_catalog(config, render_envoy.fetch_catalog(sidecar_url))
        # One file for both: the filters' limits and the service's are the same numbers.
        config_path = RUN_DIR / "filter-config.json"
        config_path.write_text(json.dumps(config, indent=2))
        rls_admin = f"http://127.0.0.1:{rls_admin_port}"
        rls = _start("rls", [str(RLS), "--config", str(config_path), "--listen", f"127.0.0.1:{base.rls_port}",
                             "--admin", f"127.0.0.1:{rls_admin_port}",
                             "--redis", f"redis://127.0.0.1:{redis_port}/0"], env)
        procs.wait_until(lambda: procs.http_status(f"{rls_admin}/readyz") == 200, "voxgate-rls", rls,
                         RUN_DIR / "rls.log", ENVOY_READY_SECONDS)
        for n, (listen, admin) in enumerate(listeners):
            name = "envoy" if n == 0 else f"envoy-{n}"
            params = dataclasses.replace(base, filter_config=config, listen_port=listen, admin_port=admin,
                                         access_log=RUN_DIR / f"{name}-access.log")
            _envoy(name, params, env)
    except procs.StartupError:
        stop()
        raise
    token = devtoken.mint(keys=keys, sub="bob")
    urls = " ".join(f"http://127.0.0.1:{listen}" for listen, _ in listeners)
    speech = '{"model":"tts-1","input":"Hi.","voice":"alloy","response_format":"wav"}'
    see = (f"for url in {urls} {urls} {urls} {urls}; do curl -s -o /dev/null -w '%{{http_code}} ' "
           f"-H {shlex.quote(f'Authorization: Bearer {token}')} -H 'Content-Type: application/json' "
           f"-d {shlex.quote(speech)} $url/v1/audio/speech; done; echo")
    return "\n".join([
        f"voxgate cluster is running: Envoys {urls}, one budget in voxgate-rls 127.0.0.1:{base.rls_port} "
        f"(metrics {rls_admin}/metrics) over Redis 127.0.0.1:{redis_port}",
        f"logs and pids in {RUN_DIR}; stop with `make stop`",
        "bob's free plan holds 10 requests across all three Envoys together; the 11th, on any of them, is a 429:",
        "",
        see,
        "",
        "speech through the first Envoy:",
        "",
        _speech_curl(keys, listeners[0][0]),
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Start or stop the local voxgate stack.")
    parser.add_argument("action", choices=("start", "start-cluster", "stop"))
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start())
        elif args.action == "start-cluster":
            print(start_cluster())
        else:
            stopped = stop()
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    except (LaunchError, procs.StartupError, ValueError) as err:
        print(f"voxgate: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
