"""Load generators: a closed loop (N clients, each sending the same request again as soon as
its previous one is answered, for a fixed time) and an open loop (senders at a fixed rate).

A client that is refused with 503 waits as long as `Retry-After` says (bounded), as a well-
behaved client would, instead of hammering the server. After the time is up no client
starts a new request, and the run waits for those in flight (bounded), so every started
request is counted whole: throughput is the audio of all answered requests over the time
from the start to the last answer.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .http_client import Reply, post_json

MAX_RETRY_AFTER_S = 5.0


@dataclass
class LoadRun:
    clients: int
    replies: list[Reply] = field(default_factory=list)
    wall_s: float = 0.0
    peak_rss: int = 0
    """Peak resident memory of the server during the run, in bytes."""
    server_cpu_s: float = 0.0
    """CPU seconds the server used during the run."""
    unfinished: int = 0
    """Requests still unanswered when the drain deadline passed; they are left out."""

    def ok(self) -> list[Reply]:
        return [r for r in self.replies if r.ok]

    def refused(self) -> list[Reply]:
        return [r for r in self.replies if r.status == 503]

    def failed(self) -> list[Reply]:
        return [r for r in self.replies if not r.ok and r.status != 503]


def run_closed_loop(url: str, payload: dict, clients: int, duration_s: float, drain_s: float,
                    request_timeout_s: float, measure: Callable[[Reply], None],
                    headers: dict[str, str] | None = None) -> LoadRun:
    """Runs `clients` loops for `duration_s`, then waits up to `drain_s` for answers.
    `measure` is called on each reply in the client's thread (e.g. to count its audio)."""
    run = LoadRun(clients)
    lock = threading.Lock()
    in_flight = [0]
    closed = [False]
    started = time.monotonic()
    stop_at = started + duration_s

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                in_flight[0] += 1
            reply = post_json(url, payload, request_timeout_s, headers)
            measure(reply)
            with lock:
                if closed[0]:
                    return
                in_flight[0] -= 1
                run.replies.append(reply)
            if reply.status == 503:
                time.sleep(min(_retry_after(reply), MAX_RETRY_AFTER_S, max(stop_at - time.monotonic(), 0)))

    threads = [threading.Thread(target=client, daemon=True, name=f"client-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline = stop_at + drain_s
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    with lock:
        closed[0] = True
        run.unfinished = in_flight[0]
        run.wall_s = max((r.started + r.total_s for r in run.replies), default=time.monotonic()) - started
    return run


def _retry_after(reply: Reply) -> float:
    try:
        return max(float(reply.headers.get("retry-after", "1")), 0.0)
    except ValueError:
        return 1.0


def run_open_loop(url: str, senders: list[tuple[dict, dict[str, str]]], interval_s: float, duration_s: float,
                  request_timeout_s: float) -> list[Reply]:
    """Each sender (a payload and its request headers) sends one request every `interval_s` for
    `duration_s`, the senders spread evenly over the interval. Every request runs on a thread of
    its own, so a slow answer never delays the next request (an open loop: the rate is the
    clients', whatever the server does). Returns every reply, each with `extra["sender"]`, after
    the last one is in (each bounded by `request_timeout_s`)."""
    offsets = [index * interval_s / len(senders) for index in range(len(senders))]
    start = time.monotonic() + 0.05
    schedule = sorted((start + offset + n * interval_s, index) for index, offset in enumerate(offsets)
                      for n in range(math.ceil((duration_s - offset) / interval_s)))

    def send(index: int) -> Reply:
        payload, headers = senders[index]
        reply = post_json(url, payload, request_timeout_s, headers)
        reply.extra["sender"] = index
        return reply

    # Enough threads for ten seconds' worth of requests to be in flight at once.
    workers = max(int(len(senders) / interval_s * 10), 16)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="open-loop") as pool:
        futures = []
        for at, index in schedule:
            time.sleep(max(at - time.monotonic(), 0))
            futures.append(pool.submit(send, index))
        return [future.result() for future in futures]
