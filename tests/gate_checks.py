"""What the hardening tests observe of the running processes: requests the sidecar answered,
filter VMs that trapped, Envoy's memory, and fresh loopback source addresses.

The sidecar counts every answer in `voxgate_sidecar_requests_total` (by route, voice and
status); scrapes of `/metrics` are counted too, so they are left out of the totals here.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import requests

SIDECAR_REQUESTS = "voxgate_sidecar_requests_total"

# How a filter VM that failed shows in Envoy's log: a Rust panic (printed by the SDK before the
# VM aborts), a trap in a proxy_on_* callback, or a VM Envoy gave up on.
WASM_TRAP = re.compile(
    r"panicked at|Function: proxy_on_\w+ failed|Uncaught RuntimeError|wasm trap|"
    r"Wasm VM (?:failed|crashed)|Plugin configured to fail closed failed to load|VM is in a failed state",
    re.IGNORECASE)


def sidecar_requests(sidecar) -> int:
    """Requests the sidecar has answered, its own `/metrics` scrapes left out."""
    metrics = sidecar.metrics()
    return int(sum(s.value for s in metrics.find(SIDECAR_REQUESTS) if s.labels.get("route") != "/metrics"))


def wasm_traps(log_text: str) -> list[str]:
    """Lines of an Envoy log that show a filter VM failing."""
    return [line for line in log_text.splitlines() if WASM_TRAP.search(line)]


class LogCursor:
    """Reads what a log file gained since the last read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new_text(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Memory:
    """Envoy's memory: tcmalloc's bytes in use (`/memory` `allocated`, where shared data lives)
    and the resident set of the process (which also holds the wasm VMs' linear memories)."""

    allocated: int
    rss: int


def envoy_memory(envoy) -> Memory:
    stats = requests.get(f"{envoy.admin_url}/memory", timeout=10).json()
    rss_kb = 0
    for line in Path(f"/proc/{envoy.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return Memory(allocated=int(stats["allocated"]), rss=rss_kb * 1024)


class SourceAddresses:
    """Distinct loopback addresses 127.B.x.y (Linux routes all of 127.0.0.0/8 to lo), so each
    request can come from a client address no other request used: per-address buckets (failed
    authentications, anonymous limits) then start full."""

    def __init__(self, second_octet: int):
        if not 1 <= second_octet <= 254:
            raise ValueError("the second octet must be 1..254")
        self._prefix = second_octet
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._numbers)
        return self.at(n)

    def at(self, n: int) -> str:
        if n >= 254 * 254:
            raise ValueError("out of addresses")
        return f"127.{self._prefix}.{1 + n // 254}.{1 + n % 254}"
