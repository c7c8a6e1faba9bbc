"""Benchmark 3, throughput under concurrency: 1, 2, 4, 8 and 32 closed-loop clients posting
the same paragraph for a fixed time, against the sidecar (its defaults) and against
piper-tts's own HTTP server (`python -m piper.http_server`, as shipped) on the same voice.
Measured per level: audio seconds produced per wall second (the audio of every answered
request over the time from the start to the last answer; requests in flight at the end are
waited for, so a server that finishes requests in bursts is not penalized by where the clock
stops), p50/p99 latency of answered requests, the server's peak RSS (VmHWM, reset before each
round, summed over its process group: the sidecar's phonemizers count), and the refused (503) and failed requests. Refused clients wait as `Retry-After`
says before trying again. Both servers stay up for the whole benchmark and take turns within
each round of each level, so the 8-client ratios pair rounds that saw the same machine.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

from .context import Context
from .core import Figure, Section, Table, Target, method_of, percentile
from .http_client import Reply, audio_seconds
from .load import LoadRun, run_closed_loop
from .processes import Server
from .subjects import piper_payload, sidecar_payload, start_piper_http, start_sidecar
from .texts import PARAGRAPH

KEY = "throughput"
NUMBER = 3
TITLE = "Throughput under concurrency"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Level:
    clients: int
    rounds: int
    duration_s: float
    drain_s: float
    reference_rounds: int | None = None
    """Rounds for piper's server, when fewer than `rounds`: at 32 clients one round of it
    takes a minute and more, and no target depends on it."""


LEVELS = (Level(1, 2, 8, 30), Level(2, 2, 8, 30), Level(4, 2, 8, 40), Level(8, 3, 10, 60),
          Level(32, 2, 12, 90, reference_rounds=1))
REQUEST_TIMEOUT_S = 120.0
FAST_REFUSAL_S = 0.1


@dataclass(frozen=True)
class Subject:
    name: str
    label: str
    start: Callable[[Context], Server]
    path: str
    payload: dict
    reference: bool


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    subjects = [
        Subject("sidecar", "voxgate sidecar", start_sidecar, "/v1/audio/speech", sidecar_payload(PARAGRAPH),
                reference=False),
        Subject("piper", "piper.http_server", start_piper_http, "/synthesize", piper_payload(PARAGRAPH),
                reference=True),
    ]
    with ExitStack() as stack:
        ctx.say("throughput: starting the sidecar and piper's server")
        servers = {subject.name: stack.enter_context(subject.start(ctx)) for subject in subjects}
        runs = measure_levels(ctx, subjects, servers)

    table = Table("Closed-loop clients posting the paragraph; median (min–max) over rounds",
                  ["clients", "server", "rounds", "audio s / s", "audio s / server CPU s", "p50 latency",
                   "p99 latency", "peak RSS", "answered", "503", "503 p99", "failed or unanswered"])
    figures: dict[tuple[str, int], dict[str, Figure]] = {}
    for level in LEVELS:
        for subject in subjects:
            level_runs = runs[subject.name][level.clients]
            f = level_figures(level_runs)
            figures[(subject.name, level.clients)] = f
            table.add(level.clients, subject.label, len(level_runs), f["throughput"], f["efficiency"], f["p50"],
                      f["p99"],
                      f["peak_rss"], sum(len(r.ok()) for r in level_runs), sum(len(r.refused()) for r in level_runs),
                      f["refusal_p99"], sum(len(r.failed()) + r.unfinished for r in level_runs))
    section.tables.append(table)
    section.notes += failure_notes(subjects, runs)

    side1, piper1 = figures[("sidecar", 1)], figures[("piper", 1)]
    side8, piper8, side32 = figures[("sidecar", 8)], figures[("piper", 8)], figures[("sidecar", 32)]
    refusals32 = [reply for run in runs["sidecar"][32] for reply in run.refused()]
    with_retry_after = Figure.of([sum("retry-after" in r.headers for r in refusals32) / len(refusals32)
                                  if refusals32 else float("nan")])
    p99_target = Target("8 clients: sidecar ÷ piper p99 latency", side8["p99"].ratio(piper8["p99"], paired=True),
                        "<=", 0.5)
    section.targets += [
        Target("1 client: sidecar ÷ piper audio s/s", side1["throughput"].ratio(piper1["throughput"], paired=True),
               ">=", 1.0),
        Target("1 client: sidecar ÷ piper p50 latency", side1["p50"].ratio(piper1["p50"], paired=True), "<=", 1.0),
        Target("8 clients: sidecar ÷ piper audio s/s", side8["throughput"].ratio(piper8["throughput"], paired=True),
               ">=", 1.3),
        p99_target,
        Target("8 clients: sidecar ÷ piper peak RSS", side8["peak_rss"].ratio(piper8["peak_rss"], paired=True),
               "<=", 0.4),
        Target("32 clients: sidecar 503 p99 latency", side32["refusal_p99"], "<=", FAST_REFUSAL_S),
        Target("32 clients: share of sidecar 503s with Retry-After", with_retry_after, ">=", 1.0),
        Target("32 clients ÷ 8 clients: sidecar peak RSS", side32["peak_rss"].ratio(side8["peak_rss"], paired=False),
               "<=", 1.1),
    ]
    efficiency = side8["efficiency"].ratio(piper8["efficiency"], paired=True)
    section.notes.append(
        f"At 8 clients the sidecar makes {efficiency.text()} piper's audio per CPU second: on an idle machine, "
        "where both servers keep every core busy, the ratio of audio seconds per wall second tends to this.")
    if not p99_target.met:
        section.notes.append(latency_bound_note(runs["sidecar"][8], side8, piper8))
    section.notes += [
        "The sidecar runs with its defaults on this machine (workers and sessions = cores, one intra-op thread, "
        "wait queue 16) plus `--sentence-gap-ms 0`; piper's server loads one session with ONNX Runtime's "
        "default threads (all cores) and serves every request at once on Flask threads.",
        "p50/p99 are over answered requests only, per round; with few requests per round the p99 is "
        "close to the slowest request.",
        "Audio seconds per server CPU second is each server's efficiency, and hardly depends on what else "
        "runs on the machine. Audio seconds per wall second does: Linux shares a busy CPU per runnable "
        "thread, so when other programs compete, a server running a thread per request (piper) gets a "
        "larger share than one running a thread per core (the sidecar). The throughput ratios are "
        "therefore only fair when the background load reported below is near zero.",
    ]
    section.conditions = {"levels": [level.__dict__ for level in LEVELS]}
    return section


def failure_notes(subjects: list[Subject], runs: dict[str, dict[int, list[LoadRun]]]) -> list[str]:
    """What went wrong, where anything did: error statuses and reasons, and requests left unanswered."""
    notes = []
    for subject in subjects:
        for level in LEVELS:
            level_runs = runs[subject.name][level.clients]
            reasons = Counter(reply.error.split(":")[0] if reply.error else f"HTTP {reply.status}"
                              for run in level_runs for reply in run.failed())
            unanswered = sum(run.unfinished for run in level_runs)
            if reasons or unanswered:
                parts = [f"{count} × {reason}" for reason, count in reasons.most_common()]
                if unanswered:
                    parts.append(f"{unanswered} still unanswered {level.drain_s:.0f} s after the clients stopped")
                notes.append(f"{subject.label}, {level.clients} clients: " + "; ".join(parts) + ".")
    return notes


def latency_bound_note(sidecar_runs: list[LoadRun], sidecar: dict[str, Figure], piper: dict[str, Figure]) -> str:
    """Why a missed p99 target at 8 clients cannot be met by serving faster, in this run's numbers."""
    request_audio = statistics.median([r.extra["audio_s"] for run in sidecar_runs for r in run.ok()])
    least_mean = 8 * request_audio / sidecar["throughput"].median
    needed = 2 * 8 * request_audio / piper["p99"].median
    return (
        "Why the p99 target is missed: with every client admitted, a closed loop's mean latency is clients ÷ "
        "requests per second (Little's law), whatever the order of service. At the sidecar's 8-client throughput, "
        f"8 × {request_audio:.1f} s of audio per request ÷ {sidecar['throughput'].median:.1f} audio s/s = "
        f"{least_mean:.2f} s is the least possible mean, so p99 ≥ {least_mean / piper['p99'].median:.2f}× "
        f"piper's; meeting 0.5× would take about {needed / piper['throughput'].median:.1f}× piper's throughput. "
        "A shorter wait queue (`--max-queue`) would cut the latency of the requests served by refusing more "
        "of them, moving the wait into the clients' Retry-After pauses rather than removing it.")


def measure_levels(ctx: Context, subjects: list[Subject], servers: dict[str, Server]
                   ) -> dict[str, dict[int, list[LoadRun]]]:
    """Every level, round by round, the servers in alternation within each round: a burst of
    load from elsewhere on the machine then falls on both rather than on one server's level."""
    def load(subject: Subject, clients: int, duration_s: float, drain_s: float) -> LoadRun:
        return run_closed_loop(servers[subject.name].url(subject.path), subject.payload, clients, duration_s,
                               drain_s, REQUEST_TIMEOUT_S, _count_audio)

    for subject in subjects:
        for clients in (1, 2):  # every session of a pool, and the server's first-request paths, warm
            load(subject, clients, 0.1, REQUEST_TIMEOUT_S)
    runs: dict[str, dict[int, list[LoadRun]]] = {subject.name: {} for subject in subjects}
    for level in LEVELS:
        for index in range(ctx.rounds(level.rounds)):
            for subject in subjects:
                rounds = level.reference_rounds if subject.reference and level.reference_rounds else level.rounds
                if index >= ctx.rounds(rounds):
                    continue
                ctx.say(f"throughput: {level.clients} clients, round {index + 1}, {subject.label}")
                server = servers[subject.name]
                server.reset_peak_memory()
                cpu_before = server.cpu_seconds()
                run = load(subject, level.clients, ctx.seconds(level.duration_s), level.drain_s)
                run.server_cpu_s = server.cpu_seconds() - cpu_before
                run.peak_rss = server.memory()["peak"]
                runs[subject.name].setdefault(level.clients, []).append(run)
    return runs


def _count_audio(reply: Reply) -> None:
    if reply.ok:
        reply.extra["audio_s"] = audio_seconds(reply)
    reply.body = b""  # counted; not kept for the whole run


def answered_audio(run: LoadRun) -> float:
    return sum(reply.extra["audio_s"] for reply in run.ok())


def level_figures(runs: list[LoadRun]) -> dict[str, Figure]:
    def per_run(value, unit: str) -> Figure:
        return Figure.of([value(run) for run in runs], unit)

    def latencies(replies: list[Reply], fraction: float) -> float:
        return percentile([reply.total_s for reply in replies], fraction)

    return {
        "throughput": per_run(lambda run: answered_audio(run) / run.wall_s, "s/s"),
        "efficiency": per_run(lambda run: answered_audio(run) / run.server_cpu_s if run.server_cpu_s else math.nan,
                              "s/CPU s"),
        "p50": per_run(lambda run: latencies(run.ok(), 0.5), "s"),
        "p99": per_run(lambda run: latencies(run.ok(), 0.99), "s"),
        "refusal_p99": per_run(lambda run: latencies(run.refused(), 0.99), "s"),
        "peak_rss": per_run(lambda run: run.peak_rss / MIB, "MiB"),
    }
