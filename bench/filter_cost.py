"""Benchmark 1, the filter's cost per request: `GET /v1/models` with an ES256 bearer token, sent
by wrk over 16 keep-alive connections from one thread, through a front Envoy to an upstream Envoy
that answers every request itself. Six front Envoys, identical but for their HTTP filters: the
router alone (the floor); Envoy's native `jwt_authn` (same key, issuer and audience) plus
`local_ratelimit`, with its verified-token cache (`jwt_cache_config`) and without it; an empty
proxy-wasm filter on the same V8 runtime (what any Wasm filter costs before doing anything); and
the voxgate filter with the same policy (token cache warm, limits raised so nothing is refused but
the subject's plan bucket, its in-flight count and the global bucket are charged on every
request); and the voxgate filter without rate limits, which tells what the limits cost. Measured
per phase: the front Envoy's CPU time (utime + stime from /proc around the phase) per completed
request, requests per second, and wrk's p50/p99 latency. The subjects take
turns within each round, starting with a different one each round; what a filter adds is its
CPU per request less the router's in the same round.
"""

from __future__ import annotations

import urllib.request
from contextlib import ExitStack

from tools import devkeys, devtoken, render_envoy

from . import wrk
from .context import Context
from .core import Figure, Section, Table, Target, method_of, turns
from .envoys import (Envoy, native_bootstrap, router_bootstrap, start_upstream, voxgate_bootstrap,
                     wasm_floor_bootstrap)

KEY = "filter_cost"
NUMBER = 1
TITLE = "The filter's cost per request"
PATH = "/v1/models"
ROUNDS = 4
PHASE_S = 5.0
WARMUP_S = 2.0
CONNECTIONS = 16
# One worker: every request meets the same worker's token cache and the same V8 instance, the
# front Envoy's work is not split over threads that would compete with wrk and the upstream
# for the machine's two cores, and CPU per request is not inflated by idle workers waking up.
CONCURRENCY = 1
# Limits no phase can reach: every bucket is still consulted and charged on every request.
UNREACHABLE_BUCKET = {"capacity": 10**12, "refill_per_second": 10**9}
MAX_IN_FLIGHT = 256
TARGET_ADDED_US = 15.0

SUBJECTS = {
    "router": "router only (floor)",
    "native_cache": "jwt_authn + local_ratelimit, jwt_cache_config",
    "native_nocache": "jwt_authn + local_ratelimit, no cache",
    "wasm_floor": "empty proxy-wasm filter",
    "voxgate": "voxgate filter",
    "voxgate_no_limits": "voxgate filter without rate limits",
}


def bench_filter_config(keys: devkeys.DevKeys) -> dict:
    """envoy/filter-config.json with the dev keys and limits no phase can reach."""
    config = render_envoy.filter_config(keys.jwks())
    limits = config["rate_limits"]
    for plan in limits["plans"].values():
        plan.update(requests=UNREACHABLE_BUCKET, characters=UNREACHABLE_BUCKET, max_in_flight=MAX_IN_FLIGHT)
    limits["global"] = {"requests": UNREACHABLE_BUCKET, "characters": UNREACHABLE_BUCKET}
    return config


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    keys = devkeys.ensure_keys()
    token = devtoken.mint(keys=keys, alg="ES256", sub="bench-filter-cost", plan="free")
    headers = {"Authorization": f"Bearer {token}"}
    rounds = ctx.rounds(ROUNDS)
    phase_s = ctx.seconds(PHASE_S)
    order = list(SUBJECTS)
    results: dict[str, list[dict]] = {name: [] for name in order}

    with ExitStack() as stack:
        ctx.say("filter cost: starting the upstream and six front Envoys")
        upstream = stack.enter_context(start_upstream(ctx))
        bootstraps = {
            "router": router_bootstrap(upstream.port),
            "native_cache": native_bootstrap(upstream.port, keys, cache=True),
            "native_nocache": native_bootstrap(upstream.port, keys, cache=False),
            "wasm_floor": wasm_floor_bootstrap(upstream.port),
            "voxgate": voxgate_bootstrap(bench_filter_config(keys), upstream.port),
            "voxgate_no_limits": voxgate_bootstrap(dict(bench_filter_config(keys), rate_limits={}), upstream.port),
        }
        fronts = {name: stack.enter_context(Envoy(ctx, name, bootstraps[name], CONCURRENCY)) for name in order}
        for name, front in fronts.items():
            _check_admitted(front, headers, name)
            wrk.run(ctx, f"{name}-warmup", front.url(PATH), ctx.seconds(WARMUP_S), connections=CONNECTIONS,
                    headers=headers)
        voxgate_before = fronts["voxgate"].stats()

        for index in range(rounds):
            ctx.say(f"filter cost: round {index + 1}/{rounds}")
            for name in turns(order, index):
                front = fronts[name]
                cpu_before = front.cpu_seconds()
                result = wrk.run(ctx, name, front.url(PATH), phase_s, connections=CONNECTIONS, headers=headers)
                cpu = front.cpu_seconds() - cpu_before
                if result.errors["status"] or result.socket_errors:
                    raise RuntimeError(f"{SUBJECTS[name]}: {result.errors} in a phase that must answer 200 only")
                results[name].append({"cpu_us": cpu / result.requests * 1e6, "rps": result.per_second,
                                      "p50_ms": result.p50_s * 1e3, "p99_ms": result.p99_s * 1e3,
                                      "requests": result.requests})
        voxgate_after = fronts["voxgate"].stats()

    cpu = {name: Figure.of([r["cpu_us"] for r in rows], "µs") for name, rows in results.items()}
    added = {name: Figure.of([r["cpu_us"] - floor["cpu_us"] for r, floor in zip(rows, results["router"])], "µs")
             for name, rows in results.items()}
    table = Table(f"`GET {PATH}`, ES256 token, wrk -t1 -c{CONNECTIONS}, front Envoy --concurrency {CONCURRENCY}; "
                  f"median (min–max) of {rounds} rounds of {phase_s:.0f} s",
                  ["front Envoy", "Envoy CPU per request", "added to the floor", "× floor", "requests/s",
                   "p50 latency", "p99 latency", "requests"])
    for name in order:
        rows = results[name]
        table.add(SUBJECTS[name], cpu[name], None if name == "router" else added[name],
                  cpu[name].ratio(cpu["router"], paired=True),
                  Figure.of([r["rps"] for r in rows], "/s"), Figure.of([r["p50_ms"] for r in rows], "ms"),
                  Figure.of([r["p99_ms"] for r in rows], "ms"), sum(r["requests"] for r in rows))
    section.tables.append(table)

    section.targets.append(Target("voxgate: Envoy CPU added per request", added["voxgate"], "<=", TARGET_ADDED_US))
    def difference(name: str, base: str) -> Figure:
        return Figure.of([r["cpu_us"] - b["cpu_us"] for r, b in zip(results[name], results[base])], "µs")

    beyond_floor = difference("voxgate", "wasm_floor")
    section.notes += [
        f"For comparison, Envoy's native jwt_authn + local_ratelimit adds {added['native_cache'].text()} "
        f"with jwt_cache_config and {added['native_nocache'].text()} without it (ES256 verified on every request).",
        f"An empty proxy-wasm filter adds {added['wasm_floor'].text()}: the calls into the Wasm VM for each "
        f"stream event, which any Wasm filter pays. voxgate's own work is the rest: "
        f"{beyond_floor.text()} per request. Of that, the rate limits (two records read and written "
        f"in shared data, the in-flight count given back at the end of the stream, three response headers) "
        f"take {difference('voxgate', 'voxgate_no_limits').text()}, and authenticating with the cached "
        f"token, checking the route and forwarding the identity the rest.",
        _voxgate_counts(voxgate_before, voxgate_after, sum(r["requests"] for r in results["voxgate"])),
        "The front Envoys run with one worker (`--concurrency 1`): on two cores shared with wrk and the "
        "upstream, more workers would only compete with them, and with one worker every request meets the "
        "same warm token cache. The upstream Envoy also runs one worker.",
        "Envoy CPU is the whole front process's (worker, main thread and the access-log flush; 10 ms ticks), "
        "so the floor includes the HTTP parsing, routing and upstream connection every subject pays alike. "
        "The access log is on in every subject alike (the bootstrap's JSON line, written to /dev/null). "
        "Envoy runs at log level warn.",
        "The native subjects do not check the `scope` claim (jwt_authn has no such check); voxgate does, "
        "and it also validates the path and removes client-sent `x-voxgate-*` headers.",
        "Requests/s and latencies are wall-clock figures of a closed loop on a shared two-core machine, where "
        "wrk, the upstream and other programs compete with the front Envoy: they are noisy. CPU per request "
        "is the robust figure.",
    ]
    section.conditions = {"rounds": rounds, "phase_s": phase_s, "connections": CONNECTIONS,
                          "concurrency": CONCURRENCY, "path": PATH}
    return section


def _check_admitted(front: Envoy, headers: dict[str, str], name: str) -> None:
    """One request before any phase: a subject that refuses the token would measure nothing."""
    request = urllib.request.Request(front.url(PATH), headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 200:
            raise RuntimeError(f"{SUBJECTS[name]} answered {response.status}")


def _voxgate_counts(before: dict[str, int], after: dict[str, int], measured: int) -> str:
    """What the filter's own counters say about the measured phases: every request allowed, and
    every token served from the cache."""
    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    allowed = delta("wasmcustom.voxgate.decision.allowed")
    hits, misses = delta("wasmcustom.voxgate.token_cache.hit"), delta("wasmcustom.voxgate.token_cache.miss")
    return (f"The filter's counters over the measured phases: {allowed} requests allowed of {measured} measured "
            f"(wrk's count leaves out requests still in flight when a phase ends), token cache {hits} hits and "
            f"{misses} misses.")
