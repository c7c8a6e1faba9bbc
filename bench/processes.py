"""The processes a benchmark measures: servers on loopback ports and round-by-round workers,
each started in its own session, watched through /proc, and stopped by pid.

Peak memory is the kernel's own count, `VmHWM` in /proc/PID/status (peak resident set size);
writing 5 to /proc/PID/clear_refs resets it, so one server can report the peak of each phase
of a benchmark separately. Memory and CPU are those of the process's whole group, so the
helpers a server starts (the sidecar's phonemizer processes) count as the server's.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process exited or did not become ready in time; the message has its log's tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM if the benchmark dies first."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Process:
    """A started process: its pid, its log, its memory, and how to stop it."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 stdin_pipe: bool = False, stdout_pipe: bool = False):
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            argv, env=env, start_new_session=True, preexec_fn=_die_with_parent,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log, stderr=self._log,
            text=stdin_pipe or stdout_pipe)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def group_pids(self) -> list[int]:
        """The live processes of this process's group: itself and the helpers it started (the
        sidecar's phonemizers), whose memory and CPU are part of what the server costs."""
        members = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pid and fields[0] != "Z":
                members.append(int(entry.name))
        return members or [self.pid]

    def memory(self) -> dict[str, int]:
        """Current (`VmRSS`) and peak (`VmHWM`) resident memory in bytes, summed over the
        process group; the summed peaks bound the group's peak from above."""
        total = {"rss": 0, "peak": 0}
        for pid in self.group_pids():
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        key, _, rest = line.partition(":")
                        if key in ("VmRSS", "VmHWM"):
                            total["rss" if key == "VmRSS" else "peak"] += int(rest.split()[0]) * 1024
            except OSError:
                continue
        return total

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far (10 ms ticks) of the process group's live members
        and of the children they have reaped."""
        ticks = 0
        for pid in self.group_pids():
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            ticks += sum(int(field) for field in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")

    def reset_peak_memory(self) -> None:
        for pid in self.group_pids():
            try:
                with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
                    clear_refs.write("5")
            except OSError:
                continue

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; also closes the pipes."""
        if self.running():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(5)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe:
                pipe.close()
        self._log.close()

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


class Server(Process):
    """An HTTP server on a loopback port."""

    def __init__(self, name: str, argv: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        super().__init__(name, argv, log_path, env)
        self.port = port

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def wait_ready(self, path: str, timeout_s: float) -> None:
        """Polls GET `path` until it answers 2xx; stops the server if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise StartError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url(path), timeout=2) as response:
                    if 200 <= response.status < 300:
                        return
            except urllib.error.HTTPError as error:
                error.close()
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise StartError(f"{self.name} was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")


class RoundWorker(Process):
    """A process that prints one JSON line when ready, then answers each line on its stdin
    with one timed round as a JSON line (`rtf_floor`, `piper_api_worker`)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 180.0, round_timeout_s: float = 120.0):
        super().__init__(name, argv, log_path, env, stdin_pipe=True, stdout_pipe=True)
        self.round_timeout_s = round_timeout_s
        self.setup = self._read_line(ready_timeout_s)

    def round(self) -> dict:
        stdin: IO[str] = self.popen.stdin
        stdin.write("round\n")
        stdin.flush()
        return self._read_line(self.round_timeout_s)

    def _read_line(self, timeout_s: float) -> dict:
        # One line is asked for at a time, so nothing is left in the reader's buffer and
        # waiting on the pipe itself bounds the wait.
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout_s)
        line = self.popen.stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise StartError(f"{self.name} gave no answer within {timeout_s:.0f} s "
                             f"(exit status {self.popen.returncode}):\n{self.log_tail()}")
        return json.loads(line)
