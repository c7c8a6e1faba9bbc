"""Benchmark 6, flood resilience: legitimate subjects ask for speech at a steady open-loop rate
(each well within its plan) through Envoy and the voxgate filter to the real sidecar, while ten
abusive subjects, each with a valid token of its own, send speech requests from wrk (cycling
through their tokens over paced keep-alive connections). Three kinds of phase take turns in
every round: quiet (no abuser), within plan (the abusers at exactly their plan's request rate,
all admitted), and flood (the abusers at ten times that rate, their buckets emptied first through
the metadata route, so each is admitted at its plan's refill rate and refused with 429 beyond
it). The within-plan and flood phases give the sidecar the same work from the abusers; they
differ only by the refused excess, so their ratio is what the flood itself costs the legitimate
subjects. Measured per phase: the legitimate requests' p50/p99 latency (client side, from
sending to the last byte of the WAV), the abusers' rate and refusals per second, the front
Envoy's CPU, and what reached the sidecar: its own request counter
(`voxgate_sidecar_requests_total`) against the requests the filter allowed.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
import urllib.error
import urllib.request
from contextlib import ExitStack

from tools import devkeys, devtoken, render_envoy

from . import wrk
from .context import Context
from .core import Figure, Section, Table, Target, method_of, percentile
from .envoys import Envoy, voxgate_bootstrap
from .load import run_open_loop
from .subjects import sidecar_payload, start_sidecar

KEY = "flood_resilience"
NUMBER = 6
TITLE = "Flood resilience"
ROUNDS = 3
PHASE_S = 15.0
SETTLE_S = 1.0
REQUEST_TIMEOUT_S = 60.0
# The front Envoy as `make run` starts it.
CONCURRENCY = 2

LEGIT_SUBJECTS = 3
LEGIT_PLAN = "pro"
LEGIT_INTERVAL_S = 1.0
LEGIT_TEXT = "The weather is fine today."
ABUSERS = 10
ABUSER_PLAN = "free"
FLOOD_TIMES_PLAN = 10
# Each wrk connection pauses about a second before every request, so the connections together
# make the flood's rate; many slow connections keep it close to the aim while admitted requests
# are synthesized.
FLOOD_CONNECTIONS = 50
ABUSER_TEXT = "Hi."
DRAIN_ATTEMPTS = 200
FILTER_REFUSALS = {400, 401, 403, 404, 405, 413, 415, 429}

PHASES = {
    "quiet": "legitimate only",
    "within_plan": "+ abusers within their plan (1×)",
    "flood": f"+ flood (abusers at {FLOOD_TIMES_PLAN}×)",
}


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    keys = devkeys.ensure_keys()
    config = render_envoy.filter_config(keys.jwks())
    plans = config["rate_limits"]["plans"]
    abuser_rate = plans[ABUSER_PLAN]["requests"]["refill_per_second"]
    legit_rate = plans[LEGIT_PLAN]["requests"]["refill_per_second"]
    flood_rate = ABUSERS * FLOOD_TIMES_PLAN * abuser_rate
    rounds = ctx.rounds(ROUNDS)
    phase_s = ctx.seconds(PHASE_S)

    legit_tokens = [devtoken.mint(keys=keys, alg="ES256", sub=f"legit-{i}", plan=LEGIT_PLAN)
                    for i in range(LEGIT_SUBJECTS)]
    abuser_tokens = [devtoken.mint(keys=keys, alg="ES256", sub=f"abuser-{i}", plan=ABUSER_PLAN)
                     for i in range(ABUSERS)]
    abusers_file = ctx.work_dir / f"{KEY}-abusers.txt"
    abusers_file.write_text("\n".join(abuser_tokens) + "\n")
    legit_senders = [(sidecar_payload(LEGIT_TEXT), {"Authorization": f"Bearer {token}"}) for token in legit_tokens]
    abuser_senders = [(sidecar_payload(ABUSER_TEXT), {"Authorization": f"Bearer {token}"}) for token in abuser_tokens]
    abuser_body = json.dumps(sidecar_payload(ABUSER_TEXT)).encode()
    phases: dict[str, list[dict]] = {kind: [] for kind in PHASES}

    with ExitStack() as stack:
        ctx.say("flood resilience: starting the sidecar and Envoy with the filter")
        sidecar = stack.enter_context(start_sidecar(ctx))
        envoy = stack.enter_context(Envoy(ctx, "voxgate", voxgate_bootstrap(config, sidecar.port), CONCURRENCY))
        speech_url = envoy.url("/v1/audio/speech")
        # Warm: every legitimate token verified and cached, the sidecar's sessions and the filter's VMs used.
        run_open_loop(speech_url, legit_senders, LEGIT_INTERVAL_S, 2 * LEGIT_INTERVAL_S, REQUEST_TIMEOUT_S)

        def phase(kind: str) -> dict:
            time.sleep(SETTLE_S)
            if kind == "flood":
                _empty_buckets(envoy, abuser_tokens, 1 / abuser_rate)
            sidecar_before, envoy_before, cpu_before = _sidecar_requests(sidecar), envoy.stats(), envoy.cpu_seconds()
            children_before = _children_cpu_seconds()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="abusers") as pool:
                if kind == "within_plan":
                    # Exactly the plan's rate, which a closed loop like wrk's cannot keep.
                    abuse = pool.submit(_open_loop_abuse, speech_url, abuser_senders, 1 / abuser_rate, phase_s)
                elif kind == "flood":
                    flood_run = wrk.WrkRun(ctx, kind, speech_url, phase_s, connections=FLOOD_CONNECTIONS,
                                           method="POST", body=abuser_body, tokens=abusers_file,
                                           count_statuses=True, delay_ms=round(1000 * FLOOD_CONNECTIONS / flood_rate))
                    abuse = pool.submit(flood_run.result)
                else:
                    abuse = None
                started = time.monotonic()
                legit = run_open_loop(speech_url, legit_senders, LEGIT_INTERVAL_S, phase_s, REQUEST_TIMEOUT_S)
                abused = abuse.result() if abuse else None
            wall = time.monotonic() - started
            # wrk is the only child process that ends within a phase.
            wrk_cores = (_children_cpu_seconds() - children_before) / wall
            time.sleep(SETTLE_S)  # answers still on their way are counted on both sides
            record = _phase_record(legit, abused, wall, envoy.cpu_seconds() - cpu_before,
                                   _sidecar_requests(sidecar) - sidecar_before, envoy_before, envoy.stats())
            record["wrk_cores"] = wrk_cores
            return record

        kinds = list(PHASES)
        for index in range(rounds):
            # Each round starts one kind earlier (quiet, within plan, flood; then flood, quiet,
            # within plan; ...), so the within-plan phase always follows a phase that let the
            # abusers' buckets fill up again, and every kind takes every place in a round once.
            shift = -index % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                ctx.say(f"flood resilience: round {index + 1}/{rounds}, {PHASES[kind]}")
                phases[kind].append(phase(kind))

    def figure(rows: list[dict], key: str, unit: str) -> Figure:
        return Figure.of([row[key] for row in rows], unit)

    p99 = {kind: figure(rows, "legit_p99", "s") for kind, rows in phases.items()}
    table = Table(f"{LEGIT_SUBJECTS} legitimate subjects ({LEGIT_PLAN} plan) each sending \"{LEGIT_TEXT}\" every "
                  f"{LEGIT_INTERVAL_S:g} s; {ABUSERS} abusers ({ABUSER_PLAN} plan, {abuser_rate:g} requests/s each) "
                  f"sending \"{ABUSER_TEXT}\"; median (min–max) of {rounds} rounds of {phase_s:.0f} s",
                  ["phase", "legit p50", "legit p99", "p99 ÷ quiet", "legit 200", "legit other", "abusers sent/s",
                   "per abuser ÷ plan", "abusers 429/s", "abusers admitted/s", "sidecar requests/s",
                   "front Envoy CPU"])
    for kind, rows in phases.items():
        abusers = kind != "quiet"
        table.add(PHASES[kind], figure(rows, "legit_p50", "s"), p99[kind],
                  p99[kind].ratio(p99["quiet"], paired=True), sum(r["legit_ok"] for r in rows),
                  sum(r["legit_other"] for r in rows),
                  figure(rows, "abuse_per_s", "/s") if abusers else None,
                  Figure.of([r["abuse_per_s"] / ABUSERS / abuser_rate for r in rows], "×") if abusers else None,
                  figure(rows, "abuse_429_per_s", "/s") if abusers else None,
                  figure(rows, "abuse_admitted_per_s", "/s") if abusers else None,
                  figure(rows, "sidecar_per_s", "/s"), figure(rows, "envoy_cores", "cores"))
    section.tables.append(table)

    all_phases = [row for rows in phases.values() for row in rows]
    beyond = Figure.of([max(r["sidecar"] - r["allowed"], 0) for r in all_phases], "requests")
    section.targets += [
        Target("legit p99 latency: flood ÷ no abusers", p99["flood"].ratio(p99["quiet"], paired=True), "<=", 1.25),
        Target("legit p99 latency: flood ÷ abusers within plan", p99["flood"].ratio(p99["within_plan"], paired=True),
               "<=", 1.25),
        Target("requests at the sidecar beyond those the filter allowed, per phase", beyond, "<=", 0),
    ]
    flood = phases["flood"]
    section.notes += [
        f"The abusers: {ABUSERS} subjects. Within their plan, each sends one request every {1 / abuser_rate:g} s "
        f"({ABUSERS * abuser_rate:g} requests/s in all) from Python threads, like the legitimate subjects. The flood "
        f"aims at {FLOOD_TIMES_PLAN}× that ({flood_rate:g} requests/s) through {FLOOD_CONNECTIONS} wrk keep-alive "
        f"connections from 127.0.0.1, each pausing a random 0–{2 * FLOOD_CONNECTIONS / flood_rate:g} s before every "
        "request; the rates in the table are the measured ones. The legitimate subjects send "
        f"{LEGIT_SUBJECTS / LEGIT_INTERVAL_S:g} requests/s in all, each one every {LEGIT_INTERVAL_S:g} s (their plan "
        f"allows {legit_rate:g}/s), one new connection per request.",
        f"Over the flood phases the filter refused {sum(r['abuse_refused'] for r in flood)} of the abusers' requests "
        f"and allowed {sum(r['allowed'] for r in flood)} requests (the legitimate ones and each abuser's plan share); "
        f"Envoy sent {sum(r['upstream'] for r in flood)} to the sidecar, and the sidecar counted "
        f"{sum(r['sidecar'] for r in flood)} (a request whose client left while it waited can go uncounted). "
        + ("No refused request reached the sidecar." if beyond.high <= 0 else
           f"In {sum(1 for r in all_phases if r['sidecar'] > r['allowed'])} phases the sidecar counted more "
           "requests than the filter allowed."),
        f"A subject sending {FLOOD_TIMES_PLAN}× its plan still gets its plan: a tenth of the flood is admitted and "
        "synthesized, by design. The flood is therefore as large as the abusers' plan share the sidecar can serve "
        f"next to the legitimate load on this machine, and its text is short (\"{ABUSER_TEXT}\"). Against no abusers "
        "at all, the flood phases also carry that share; the within-plan phases carry the same share without the "
        "refused excess, so flood ÷ within plan is what refusing the excess costs the legitimate subjects.",
        f"What the flood costs the machine besides the sidecar's work: the front Envoy used "
        f"{figure(flood, 'envoy_cores', 'cores').text()} in the flood phases against "
        f"{figure(phases['within_plan'], 'envoy_cores', 'cores').text()} within plan, and wrk "
        f"{figure(flood, 'wrk_cores', 'cores').text()}. Both run on the same two cores as the sidecar.",
        "Latencies are wall-clock figures on a shared two-core machine where the sidecar, Envoy, wrk and other "
        "programs compete: noisy, and with few requests per phase the p99 is close to the slowest request.",
    ]
    section.notes += _legit_failures(phases)
    section.conditions = {"rounds": rounds, "phase_s": phase_s, "legit_subjects": LEGIT_SUBJECTS,
                          "legit_interval_s": LEGIT_INTERVAL_S, "abusers": ABUSERS, "abuser_plan_rate": abuser_rate,
                          "flood_connections": FLOOD_CONNECTIONS, "concurrency": CONCURRENCY}
    return section


def _phase_record(legit, abuse, wall: float, envoy_cpu: float, sidecar: int, before: dict, after: dict) -> dict:
    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    ok = [reply for reply in legit if reply.ok]
    latencies = [reply.total_s for reply in ok]
    allowed = delta("wasmcustom.voxgate.decision.allowed")
    legit_allowed = sum(1 for reply in legit if reply.status and reply.status not in FILTER_REFUSALS)
    record = {
        "legit_p50": percentile(latencies, 0.5), "legit_p99": percentile(latencies, 0.99),
        "legit_ok": len(ok), "legit_other": len(legit) - len(ok),
        "legit_statuses": [reply.status for reply in legit if not reply.ok],
        "envoy_cores": envoy_cpu / wall, "sidecar": sidecar, "sidecar_per_s": sidecar / wall, "allowed": allowed,
        "upstream": delta("cluster.voxgate_sidecar.upstream_rq_total"),
        "abuse_per_s": 0.0, "abuse_429_per_s": 0.0, "abuse_admitted_per_s": 0.0, "abuse_refused": 0,
    }
    if abuse is not None:
        refused = sum(count for status, count in abuse.statuses.items() if status in FILTER_REFUSALS)
        record.update(abuse_per_s=abuse.per_second, abuse_429_per_s=abuse.statuses[429] / abuse.seconds,
                      abuse_admitted_per_s=max(allowed - legit_allowed, 0) / wall, abuse_refused=refused)
    return record


def _open_loop_abuse(url: str, senders: list, interval_s: float, duration_s: float) -> wrk.WrkResult:
    """The abusers at their plan's rate, from the open loop, summed up as wrk sums up a run."""
    replies = run_open_loop(url, senders, interval_s, duration_s, REQUEST_TIMEOUT_S)
    latencies = [reply.total_s for reply in replies]
    return wrk.WrkResult(requests=len(replies), seconds=duration_s, p50_s=percentile(latencies, 0.5),
                         p99_s=percentile(latencies, 0.99), max_s=max(latencies, default=math.nan),
                         errors={"status": sum(1 for reply in replies if not reply.ok)},
                         statuses=Counter(reply.status for reply in replies))


def _empty_buckets(envoy: Envoy, tokens: list[str], interval_s: float) -> None:
    """Spends each abuser's request bucket through `GET /v1/models` until the filter refuses it
    for `subject_requests` (the metadata route costs the same request token and no synthesis).
    The buckets are emptied one after another, spread over `interval_s` (the time one token takes
    to come back), so the abusers' tokens come back spread out as the within-plan requests are,
    not all at the same instant. When the global bucket refuses first, the subject's token was
    given back: wait as told and go on."""
    start = time.monotonic()
    for index, token in enumerate(tokens):
        time.sleep(max(start + index * interval_s / len(tokens) - time.monotonic(), 0))
        for _ in range(DRAIN_ATTEMPTS):
            request = urllib.request.Request(envoy.url("/v1/models"), headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
            except urllib.error.HTTPError as error:
                with error:
                    if error.code != 429:
                        raise
                    message = json.loads(error.read())["error"]["message"]
                    if "(subject_requests)" in message:
                        break
                    time.sleep(float(error.headers.get("retry-after", "1")))
        else:
            raise RuntimeError(f"an abuser's request bucket was not empty after {DRAIN_ATTEMPTS} requests")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _sidecar_requests(sidecar) -> int:
    """The sidecar's own count of the requests it answered (every route and status but its
    metrics page, which this very reading adds to)."""
    with urllib.request.urlopen(sidecar.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    return round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith("voxgate_sidecar_requests_total{") and 'route="/metrics"' not in line))


def _legit_failures(phases: dict[str, list[dict]]) -> list[str]:
    notes = []
    for kind, rows in phases.items():
        statuses = [status for row in rows for status in row["legit_statuses"]]
        if statuses:
            counts = {status: statuses.count(status) for status in sorted(set(statuses))}
            notes.append(f"Legitimate requests not answered 200 in the phases \"{PHASES[kind]}\": "
                         + ", ".join(f"{n} × {'no answer' if s == 0 else s}" for s, n in counts.items()) + ".")
    return notes
