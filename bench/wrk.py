"""Load from `wrk` (Debian package `wrk`, installed by bench/setup.sh): HTTP/1.1 over
keep-alive connections, each connection sending its next request as soon as the previous one
is answered (a closed loop), for a fixed time.

One `WrkRun` is one wrk process, started by pid in its own session like every other process a
benchmark starts. Its Lua script is written per run from what the run needs:
- always, a `done` hook that prints the totals and latency percentiles as one JSON line, so
  nothing depends on wrk's human-readable report;
- `tokens`: a file of tokens, one per line; every request carries the next one as
  `Authorization: Bearer …` (each connection's thread starts at its own offset);
- `spread_addresses` (with `tokens`): each token also comes with an `X-Forwarded-For` address
  of its own (10.0.0.1, 10.0.0.2, …), so an Envoy that trusts one hop sees every token from a
  different client;
- `count_statuses`: count the answers by status (this makes wrk hand every response to Lua,
  which costs wrk, never the server, a little CPU);
- `delay_ms`: a pause before each request on a connection, drawn uniformly from 0 to twice
  `delay_ms` so that connections do not fire together, which bounds the rate of a run to about
  connections × 1000 ÷ (delay_ms + latency) requests per second.
Only loopback URLs are accepted.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .context import Context
from .http_client import LOOPBACK_HOSTS
from .processes import Process

RESULT_MARK = "WRK_RESULT "
SLACK_S = 30.0
REQUEST_TIMEOUT = "10s"

_DONE = r"""
local threads = {}
function setup(thread)
  thread:set("first", #threads)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("statuses")
    if counted then
      for status, count in pairs(counted) do
        statuses[#statuses + 1] = string.format('"%d":%d', status, count)
      end
    end
  end
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"max_us":%.1f,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"statuses":{%s}}\n',
    "RESULT_MARK", summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout, table.concat(statuses, ",")))
end
""".replace("RESULT_MARK", RESULT_MARK)

_TOKENS = r"""
local requests, index = {}, 0
function init(args)
  for token in io.lines(args[1]) do
    wrk.headers["Authorization"] = "Bearer " .. token
    if SPREAD then
      local n = #requests + 1
      wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
    end
    requests[#requests + 1] = wrk.format()
  end
  -- Threads start at different tokens, so two threads never send the same one at once.
  index = (first or 0) * math.floor(#requests / 8)
end
function request()
  index = index % #requests + 1
  return requests[index]
end
"""

_COUNT_STATUSES = r"""
statuses = {}
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
"""

_DELAY = r"""
math.randomseed(os.time())
function delay()
  return math.random(0, 2 * DELAY_MS)
end
"""


@dataclass
class WrkResult:
    requests: int
    """Requests answered within the run."""
    seconds: float
    p50_s: float
    p99_s: float
    max_s: float
    errors: dict[str, int]
    """Socket errors (`connect`, `read`, `write`, `timeout`) and `status`: answers that were not 2xx or 3xx."""
    statuses: Counter = field(default_factory=Counter)
    """Answers by status, when the run counted them."""

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan

    @property
    def socket_errors(self) -> int:
        return sum(count for kind, count in self.errors.items() if kind != "status")


def binary() -> str:
    path = shutil.which("wrk")
    if not path:
        raise FileNotFoundError("wrk is not installed; run bench/setup.sh")
    return path


class WrkRun:
    """A wrk process running in the background; `result()` waits for it."""

    def __init__(self, ctx: Context, name: str, url: str, seconds: float, connections: int = 16,
                 threads: int = 1, headers: dict[str, str] | None = None, method: str = "GET",
                 body: bytes | None = None, tokens: Path | None = None, count_statuses: bool = False,
                 delay_ms: int | None = None, spread_addresses: bool = False):
        host = urllib.parse.urlsplit(url).hostname
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"benchmarks only talk to loopback, not {host}")
        self.seconds = seconds
        script = ctx.work_dir / f"{ctx.benchmark}-{name}.lua"
        if spread_addresses and tokens is None:
            raise ValueError("spread_addresses gives each token its own address: it needs tokens")
        script.write_text(_script(method, body, tokens is not None, count_statuses, delay_ms, spread_addresses))
        argv = [binary(), "--latency", "--timeout", REQUEST_TIMEOUT, "-t", str(threads), "-c", str(connections),
                "-d", f"{max(round(seconds), 1)}s", "-s", str(script)]
        for header, value in (headers or {}).items():
            argv += ["-H", f"{header}: {value}"]
        argv.append(url)
        if tokens is not None:
            argv += ["--", str(tokens)]
        self.process = Process(f"wrk-{name}", argv, ctx.log_path(f"wrk-{name}"), stdout_pipe=True)

    def result(self) -> WrkResult:
        try:
            output, _ = self.process.popen.communicate(timeout=self.seconds + SLACK_S)
        except subprocess.TimeoutExpired:
            self.process.stop()
            raise RuntimeError(f"{self.process.name} ran past {self.seconds + SLACK_S:.0f} s")
        finally:
            self.process.stop()
        with open(self.process.log_path, "a", encoding="utf-8") as log:
            log.write(output)
        lines = [line for line in output.splitlines() if line.startswith(RESULT_MARK)]
        if self.process.popen.returncode != 0 or not lines:
            raise RuntimeError(f"{self.process.name} exited with {self.process.popen.returncode}:\n"
                               f"{self.process.log_tail()}")
        data = json.loads(lines[-1][len(RESULT_MARK):])
        return WrkResult(
            requests=data["requests"], seconds=data["duration_us"] / 1e6, p50_s=data["p50_us"] / 1e6,
            p99_s=data["p99_us"] / 1e6, max_s=data["max_us"] / 1e6,
            errors={kind: data[kind] for kind in ("connect", "read", "write", "timeout", "status")},
            statuses=Counter({int(status): count for status, count in data["statuses"].items()}))


def run(ctx: Context, name: str, url: str, seconds: float, **options) -> WrkResult:
    """One wrk run in the foreground; see `WrkRun` for the options."""
    return WrkRun(ctx, name, url, seconds, **options).result()


def _script(method: str, body: bytes | None, tokens: bool, count_statuses: bool, delay_ms: int | None,
            spread_addresses: bool) -> str:
    parts = [f"wrk.method = {_lua_string(method)}\n"]
    if body is not None:
        parts.append(f"wrk.body = {_lua_string(body.decode())}\n")
        parts.append('wrk.headers["Content-Type"] = "application/json"\n')
    parts.append(_DONE)
    if tokens:
        parts.append(_TOKENS.replace("SPREAD", "true" if spread_addresses else "false"))
    if count_statuses:
        parts.append(_COUNT_STATUSES)
    if delay_ms is not None:
        parts.append(_DELAY.replace("DELAY_MS", str(int(delay_ms))))
    return "".join(parts)


def _lua_string(text: str) -> str:
    # A JSON string literal is a valid Lua string literal for the characters used here
    # (no control characters besides the escapes both languages share).
    return json.dumps(text)
