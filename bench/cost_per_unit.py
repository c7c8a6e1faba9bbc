"""Benchmark 7, cost per budget unit: for prose and each class of text espeak-ng expands, the
synthesis CPU the sidecar spends per audio second charged (the unit plans budget), and per
character for reference; then the sidecar's peak memory under the worst class at the free
plan's in-flight cap with the request that makes the most audio.

Subject: the sidecar alone over HTTP, as the gateway calls it (a tenant with a large budget, so
nothing is refused), one request at a time. Each round sends every class at speed 1 and at 0.25
in turn, the starting class rotating, so machine load hits the classes alike. CPU is the sidecar
process group's (phonemizer processes included) read around each request. The charged unit is
the sidecar's own `x-voxgate-audio-seconds` answer header: the figure the filter takes from the
caller's bucket. The headline is worst class ÷ prose, in CPU per charged second (target ≤ 2×).
"""

from __future__ import annotations

import statistics
import threading

from .context import Context
from .core import Figure, Section, Table, Target, method_of, turns
from .http_client import audio_seconds, post_json
from .subjects import sidecar_payload, start_sidecar
from .texts import AMPLIFIERS, PARAGRAPH

KEY = "cost"
NUMBER = 7
TITLE = "Cost per budget unit"
ROUNDS = 3
SPEEDS = (1.0, 0.25)
REQUEST_TIMEOUT_S = 300.0
# The free plan's in-flight cap (envoy/filter-config.json): the most one free subject runs at once.
FREE_IN_FLIGHT = 2
MIB = 1024 * 1024
TENANT = {"x-voxgate-tenant": "bench", "x-voxgate-audio-budget": "100000",
          "x-voxgate-audio-capacity": "100000"}


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    classes = {"prose": PARAGRAPH, **AMPLIFIERS}
    cases = [(name, speed) for name in classes for speed in SPEEDS]
    rounds = ctx.rounds(ROUNDS)
    results: dict[tuple[str, float], list[dict]] = {case: [] for case in cases}

    ctx.say("cost: starting the sidecar")
    with start_sidecar(ctx) as sidecar:
        def speak(text: str, speed: float) -> dict:
            payload = dict(sidecar_payload(text), speed=speed)
            before = sidecar.cpu_seconds()
            reply = post_json(sidecar.url("/v1/audio/speech"), payload, REQUEST_TIMEOUT_S, TENANT)
            cpu = sidecar.cpu_seconds() - before
            if not reply.ok:
                raise RuntimeError(f"sidecar answered {reply.status} {reply.error or reply.body[:200]!r}")
            return {"cpu": cpu, "charged": float(reply.headers["x-voxgate-audio-seconds"]),
                    "audio": audio_seconds(reply), "chars": len(text)}

        speak(PARAGRAPH, 1.0)
        idle = sidecar.memory()["rss"]
        for index in range(rounds):
            ctx.say(f"cost: round {index + 1}/{rounds}")
            for name, speed in turns(cases, index):
                results[(name, speed)].append(speak(classes[name], speed))

        per_unit = {case: Figure.of([r["cpu"] / r["charged"] for r in rows], "s")
                    for case, rows in results.items()}
        worst = max(cases, key=lambda case: per_unit[case].median)
        # Memory grows with the audio one model run makes, so the largest request is the test.
        largest = max(cases, key=lambda case: statistics.median(r["charged"] for r in results[case]))
        ctx.say(f"cost: peak memory, {FREE_IN_FLIGHT} requests of {largest[0]} at speed {largest[1]} at once")
        errors: list[str] = []

        def worst_request() -> None:
            try:
                speak(classes[largest[0]], largest[1])
            except RuntimeError as error:
                errors.append(str(error))

        threads = [threading.Thread(target=worst_request) for _ in range(FREE_IN_FLIGHT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(errors[0])
        memory = sidecar.memory()
        after = memory["rss"]
        peak = memory["peak"]

    prose = ("prose", 1.0)
    table = Table(f"Joe voice, sidecar over HTTP, one request at a time; median (min–max) of {rounds} rounds",
                  ["text", "speed", "chars", "charged audio s", "audio s made", "CPU s per charged s",
                   "× prose", "CPU ms per char"])
    for case in cases:
        rows = results[case]
        table.add(case[0], f"{case[1]:g}", str(rows[0]["chars"]),
                  Figure.of([r["charged"] for r in rows], "s"), Figure.of([r["audio"] for r in rows], "s"),
                  per_unit[case], per_unit[case].ratio(per_unit[prose], paired=True),
                  Figure.of([1000 * r["cpu"] / r["chars"] for r in rows], "ms"))
    section.tables.append(table)

    memory_table = Table("Sidecar resident memory (process group)", ["when", "resident"])
    memory_table.add("idle, after one warm-up request", Figure.of([idle / MIB], "MiB"))
    memory_table.add(f"peak, {FREE_IN_FLIGHT} × {largest[0]} at speed {largest[1]:g} at once",
                     Figure.of([peak / MIB], "MiB"))
    memory_table.add("after them", Figure.of([after / MIB], "MiB"))
    section.tables.append(memory_table)

    section.targets += [
        Target(f"CPU per charged second, worst ({worst[0]} at {worst[1]:g}) ÷ prose at 1",
               per_unit[worst].ratio(per_unit[prose], paired=True), "<=", 2.0),
        Target("peak resident memory, MiB", Figure.of([peak / MIB], "MiB"), "<=", 1024.0),
        Target("resident after ÷ idle", Figure.of([after / idle], "×"), "<=", 1.2),
    ]
    section.conditions = {"rounds": rounds, "speeds": list(SPEEDS), "classes": list(classes)}
    section.notes += [
        "Charged seconds are predicted from the phonemes before synthesis (docs/cost.md); the audio "
        "made differs a little because the voice's duration noise is random.",
        "Every synthesis is charged at least --min-request-audio-seconds (1 s): the sidecar's "
        "fixed cost per request (HTTP, phonemizer round trip, one model run) would otherwise make "
        "the shortest texts (the flags class speaks only its first word) the dearest per charged "
        "second.",
        "Peak RSS is VmHWM summed over the process group since the sidecar started, so it covers "
        "every request of the run, not only the concurrent pair.",
    ]
    return section
