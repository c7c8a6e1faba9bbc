"""Starting, watching and stopping the voxgate processes (sidecar, Envoy) by pid.

Shared by the launcher (`make run` / `make stop`) and the end-to-end test harness. Each process
starts in its own session, so it outlives the shell that started it and can be stopped as a
whole process group; output goes to a log file whose tail explains a failed start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


class StartupError(RuntimeError):
    """A process did not become ready; the message carries the tail of its log."""


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """In the child before exec: ask the kernel for SIGTERM when the parent dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None,
          die_with_parent: bool = False) -> subprocess.Popen:
    """Start `argv` detached into a new session, stdout and stderr appended to `log_path`.

    `die_with_parent` is for test processes: they must not outlive a test run that was killed
    before its teardown could run. (Linux ties this to the thread that started the process, so
    start such processes from the main thread.)
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True,
                                preexec_fn=_terminate_with_parent if die_with_parent else None)


def log_tail(log_path: Path, lines: int = 40) -> str:
    try:
        text = Path(log_path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def command_line(pid: int) -> list[str]:
    """The argv of a live process, or [] when it is gone (used to check a pid file is still ours)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def stop(pid: int, grace_seconds: float = 10.0, popen: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group led by `pid`, then SIGKILL it if still alive after the grace period.

    `popen`, when this process started it, is reaped so no zombie is left behind.
    """
    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            os.kill(pid, sig)

    def wait_gone(deadline: float) -> bool:
        while time.monotonic() < deadline:
            if popen is not None and popen.poll() is not None:
                return True
            if popen is None and not is_running(pid):
                return True
            time.sleep(0.05)
        return False

    signal_group(signal.SIGTERM)
    if not wait_gone(time.monotonic() + grace_seconds):
        signal_group(signal.SIGKILL)
        wait_gone(time.monotonic() + 5.0)
    if popen is not None:
        try:
            popen.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(ready, what: str, proc: subprocess.Popen | int, log_path: Path, timeout: float) -> None:
    """Poll `ready()` until it is true; fail fast if the process exits, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        exited = proc.poll() is not None if isinstance(proc, subprocess.Popen) else not is_running(proc)
        if exited:
            raise StartupError(f"{what} exited during start-up; last lines of {log_path}:\n{log_tail(log_path)}")
        if time.monotonic() > deadline:
            raise StartupError(f"{what} not ready after {timeout:.0f} s; last lines of {log_path}:\n"
                               f"{log_tail(log_path)}")
        time.sleep(0.1)
