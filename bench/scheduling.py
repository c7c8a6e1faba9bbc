"""Benchmark 9, scheduling: what the sentence scheduler gives a lone request and a quiet tenant.

Fairness: one client of tenant `quiet` posts a one-sentence text in a closed loop, first alone,
then while tenant `flood` (plan `pro`, weight 4) keeps eight closed-loop clients posting the
paragraph four times over, then as one more client of `flood` itself. The quiet client's p99
latency under the flood ÷ its p99 alone is the figure; the third phase shows what the same
client meets without a share of its own, as it would behind first come, first served. Tenants
are the `x-voxgate-subject` and `x-voxgate-plan` headers the filter forwards, sent here straight
to the sidecar (defaults, two workers).

Thread choice: one client posting the paragraph (five sentences), and one posting a single
long sentence, against the default (two workers of one intra-op thread: a lone request's
sentences run in parallel) and against one worker whose session runs two intra-op threads.
Eight clients on the paragraph show what each choice does under load.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from .context import Context
from .core import Figure, Section, Table, Target, method_of, percentile
from .http_client import Reply, audio_seconds
from .load import LoadRun, run_closed_loop
from .subjects import sidecar_payload, start_sidecar
from .texts import PARAGRAPH

KEY = "scheduling"
NUMBER = 9
TITLE = "Scheduling: fair shares and thread choice"
REQUEST_TIMEOUT_S = 120.0
PHASE_S = 20.0
DRAIN_S = 60.0
ROUNDS = 2
SHORT = "Is the gate open yet?"
LONG_SENTENCE = ("The keeper of the old lighthouse climbed the narrow stairs at dusk, checked the lamp, wiped "
                 "the glass, wrote the weather in his log and watched the ships pass far out at sea")


def tenant(subject: str, plan: str) -> dict[str, str]:
    return {"x-voxgate-subject": subject, "x-voxgate-issuer": "bench", "x-voxgate-plan": plan}


def _count_audio(reply: Reply) -> None:
    if reply.ok:
        reply.extra["audio_s"] = audio_seconds(reply)
    reply.body = b""


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    fairness(ctx, section)
    threads(ctx, section)
    return section


def fairness(ctx: Context, section: Section) -> None:
    short, flood_text = sidecar_payload(SHORT), sidecar_payload(" ".join([PARAGRAPH] * 4))
    phases: dict[str, list[LoadRun]] = {"alone": [], "beside a flooding tenant": [], "inside the flooding tenant": []}
    flood_replies: list[Reply] = []
    with start_sidecar(ctx, name="sidecar-fairness") as sidecar:
        url = sidecar.url("/v1/audio/speech")

        def quiet(headers: dict[str, str]) -> LoadRun:
            return run_closed_loop(url, short, 1, ctx.seconds(PHASE_S), DRAIN_S, REQUEST_TIMEOUT_S, _count_audio,
                                   headers)

        run_closed_loop(url, short, 2, 0.1, REQUEST_TIMEOUT_S, REQUEST_TIMEOUT_S, _count_audio)
        for index in range(ctx.rounds(ROUNDS)):
            ctx.say(f"scheduling: fairness round {index + 1}")
            phases["alone"].append(quiet(tenant("quiet", "free")))
            for name, headers in (("beside a flooding tenant", tenant("quiet", "free")),
                                  ("inside the flooding tenant", tenant("flood", "pro"))):
                with ThreadPoolExecutor(max_workers=1) as pool:
                    flood = pool.submit(run_closed_loop, url, flood_text, 8, ctx.seconds(PHASE_S) + 5, DRAIN_S,
                                        REQUEST_TIMEOUT_S, _count_audio, tenant("flood", "pro"))
                    # The flood's clients are all in before the quiet client's first request.
                    time.sleep(2)
                    phases[name].append(quiet(headers))
                    flood_replies += flood.result().ok()

    def p99(runs: list[LoadRun]) -> Figure:
        return Figure.of([percentile([r.total_s for r in run.ok()], 0.99) for run in runs], "s")

    def p50(runs: list[LoadRun]) -> Figure:
        return Figure.of([percentile([r.total_s for r in run.ok()], 0.5) for run in runs], "s")

    alone = p99(phases["alone"])
    table = Table(f"One client posting {len(SHORT)} characters in a closed loop for {ctx.seconds(PHASE_S):.0f} s; "
                  "median (min–max) over rounds",
                  ["quiet client", "answered", "p50 latency", "p99 latency", "p99 ÷ alone"])
    for name, runs in phases.items():
        table.add(name, sum(len(run.ok()) for run in runs), p50(runs), p99(runs), p99(runs).ratio(alone, paired=True))
    section.tables.append(table)
    section.targets.append(Target("short request p99 beside a flooding tenant ÷ alone",
                                  p99(phases["beside a flooding tenant"]).ratio(alone, paired=True), "<=", 1.5))
    section.notes.append(f"The flood: 8 clients of tenant `flood` posting {len(flood_text['input'])} characters; "
                         f"{len(flood_replies)} of its requests answered during the phases.")


def threads(ctx: Context, section: Section) -> None:
    choices = {
        "2 workers × 1 intra-op thread (default)": ("--workers", "2", "--intra-op-threads", "1"),
        "1 worker × 2 intra-op threads": ("--workers", "1", "--intra-op-threads", "2"),
    }
    loads = {"1 client, paragraph (5 sentences)": (PARAGRAPH, 1),
             "1 client, one long sentence": (LONG_SENTENCE + ".", 1),
             "8 clients, paragraph": (PARAGRAPH, 8)}
    results: dict[tuple[str, str], list[LoadRun]] = {}
    with ExitStack() as stack:
        servers = {name: stack.enter_context(start_sidecar(ctx, *flags, name=f"sidecar-threads-{index}"))
                   for index, (name, flags) in enumerate(choices.items())}
        for server in servers.values():
            run_closed_loop(server.url("/v1/audio/speech"), sidecar_payload(PARAGRAPH), 2, 0.1, REQUEST_TIMEOUT_S,
                            REQUEST_TIMEOUT_S, _count_audio)
        for index in range(ctx.rounds(ROUNDS)):
            for load, (text, clients) in loads.items():
                for name, server in servers.items():
                    ctx.say(f"scheduling: {load}, {name}, round {index + 1}")
                    run = run_closed_loop(server.url("/v1/audio/speech"), sidecar_payload(text), clients,
                                          ctx.seconds(10.0), DRAIN_S, REQUEST_TIMEOUT_S, _count_audio)
                    results.setdefault((load, name), []).append(run)

    def throughput(runs: list[LoadRun]) -> Figure:
        return Figure.of([sum(r.extra["audio_s"] for r in run.ok()) / run.wall_s for run in runs], "s/s")

    def p50(runs: list[LoadRun]) -> Figure:
        return Figure.of([percentile([r.total_s for r in run.ok()], 0.5) for run in runs], "s")

    table = Table("Closed-loop clients for 10 s; median (min–max) over rounds",
                  ["load", "threads", "audio s / s", "p50 latency", "÷ default p50"])
    default = next(iter(choices))
    for load in loads:
        for name in choices:
            runs = results[(load, name)]
            table.add(load, name, throughput(runs), p50(runs), p50(runs).ratio(p50(results[(load, default)]),
                                                                             paired=True))
    section.tables.append(table)
    section.notes.append("Parallel sentences need a text of several sentences; a single sentence is one model run, "
                         "which only intra-op threads can split. Under load every worker is busy either way, and "
                         "single-threaded sessions waste no time synchronizing threads.")
