"""Benchmark 10, cluster-wide limits: what the cluster tier adds to a request, whether three
Envoys hold one budget, and how many decisions voxgate-rls makes per second with Redis.

1. Added cost: `GET /v1/models` (its budget `plan`, so the subject's request bucket is charged)
   with a cached ES256 token, wrk -t1 -c16, through two front Envoys (one worker each) to an
   upstream Envoy that answers every request itself. Both run the voxgate filter with the same
   configuration and limits no phase reaches; one of them also asks voxgate-rls about
   `subject_requests` on every request, with the counters in a real Redis. Per phase: the front
   Envoy's CPU per request, voxgate-rls' and Redis' CPU per request, and wrk's p50/p99 latency.
   A third front Envoy reserves blocks (`reserve`, sized to 20 requests of the subject's
   budget): one call per 21 requests. The three take turns within each round, starting with a
   different one each round.
2. Overshoot: 20 fresh subjects with a budget of 20 requests each (never refilling), each
   sending 60 requests spread over three Envoys from 32 concurrent connections; the requests
   allowed beyond the budget (and the fewest allowed), with the cluster tier asking on every
   request, with the cluster tier reserving blocks of a tenth of the budget, and with the local
   buckets only.
3. Service throughput: `rls_load` (rls/examples) calls `ShouldRateLimit` from 32 concurrent
   HTTP/2 connections for a phase, over 1,000 subjects, against voxgate-rls with Redis; beside
   it, `redis-benchmark` (INCR, 32 connections) on the same Redis: the ceiling of any counter
   kept in this Redis.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from tools import devkeys, devtoken, procs

from . import wrk
from .context import Context
from .core import Figure, Section, Table, Target, method_of, turns
from .envoys import Envoy, start_upstream, voxgate_bootstrap
from .filter_cost import UNREACHABLE_BUCKET, bench_filter_config
from .processes import LOOPBACK, Process, Server, StartError, free_port

KEY = "cluster_limits"
NUMBER = 10
TITLE = "Cluster-wide limits"
PATH = "/v1/models"
ROUNDS = 4
PHASE_S = 5.0
WARMUP_S = 2.0
CONNECTIONS = 16
CONCURRENCY = 1
RLS_TIMEOUT_MS = 100
STORAGE_TIMEOUT_MS = 50
FLOOD_SUBJECTS, FLOOD_BUDGET, FLOOD_PER_SUBJECT, FLOOD_CONNECTIONS = 20, 20, 60, 32
LOAD_CONNECTIONS, LOAD_SUBJECTS = 32, 1000
TARGET_P99_ADDED_MS = 2.0
TARGET_CPU_ADDED_US = 30.0
RLS = Path(__file__).resolve().parent.parent / "target" / "release" / "voxgate-rls"
RLS_LOAD = Path(__file__).resolve().parent.parent / "target" / "release" / "examples" / "rls_load"
REDIS_SERVER = "/usr/bin/redis-server"
REDIS_BENCHMARK = "/usr/bin/redis-benchmark"

RESERVE_BLOCK = 20
FLOOD_RESERVE = 0.1

SUBJECTS = {"local": "local buckets only", "cluster": "local buckets + voxgate-rls (Redis), every request",
            "reserve": f"local buckets + voxgate-rls (Redis), reserve of {RESERVE_BLOCK} requests"}


def cluster_section(limits: list[str], reserve: float | None = None) -> dict:
    section = {"service": "voxgate_rls", "domain": "voxgate", "timeout_ms": RLS_TIMEOUT_MS, "failure_mode": "deny",
               "limits": limits}
    if reserve is not None:
        section["reserve"] = reserve
    return section


def with_rls_port(bootstrap: dict, port: int) -> dict:
    """The rendered bootstrap with its `voxgate_rls` cluster pointing at `port`."""
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == "voxgate_rls":
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"]["port_value"] = port
    return bootstrap


def metered(config: dict) -> dict:
    for route in config["routes"]:
        if route["api"] == "metadata":
            route["budget"] = "plan"
    return config


class Redis(Process):
    def __init__(self, ctx: Context):
        self.port = free_port()
        folder = ctx.work_dir / f"{ctx.benchmark}-redis"
        folder.mkdir(parents=True, exist_ok=True)
        super().__init__("redis", [REDIS_SERVER, "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                                   "--appendonly", "no", "--dir", str(folder)], ctx.log_path("redis"), ctx.env())
        deadline = time.monotonic() + 30
        while not procs.port_open(LOOPBACK, self.port):
            if not self.running() or time.monotonic() > deadline:
                self.stop()
                raise StartError(f"redis did not start:\n{self.log_tail()}")
            time.sleep(0.1)


class RateLimitService(Server):
    def __init__(self, ctx: Context, filter_config: dict, redis: Redis):
        self.grpc_port = free_port()
        admin_port = free_port()
        config_path = ctx.work_dir / f"{ctx.benchmark}-rls-config.json"
        config_path.write_text(json.dumps(filter_config))
        argv = [str(RLS), "--config", str(config_path), "--listen", f"{LOOPBACK}:{self.grpc_port}",
                "--admin", f"{LOOPBACK}:{admin_port}", "--redis", f"redis://{LOOPBACK}:{redis.port}/0",
                "--storage-timeout-ms", str(STORAGE_TIMEOUT_MS)]
        super().__init__("rls", argv, admin_port, ctx.log_path("rls"), ctx.env())
        self.wait_ready("/readyz", 30)


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    for binary in (RLS, RLS_LOAD):
        if not binary.exists():
            raise FileNotFoundError(f"{binary} is missing: `make bench` builds it")
    keys = devkeys.ensure_keys()
    with ExitStack() as stack:
        redis = stack.enter_context(Redis(ctx))
        added = _added_cost(ctx, stack, keys, redis, section)
        _overshoot(ctx, stack, keys, redis, section)
        _throughput(ctx, redis, section)
    section.conditions = {"rounds": ctx.rounds(ROUNDS), "phase_s": ctx.seconds(PHASE_S),
                          "connections": CONNECTIONS, "concurrency": CONCURRENCY,
                          "rls_timeout_ms": RLS_TIMEOUT_MS, **added}
    return section


def _added_cost(ctx: Context, stack: ExitStack, keys: devkeys.DevKeys, redis: Redis, section: Section) -> dict:
    config = metered(bench_filter_config(keys))
    cluster_config = json.loads(json.dumps(config))
    cluster_config["rate_limits"]["cluster"] = cluster_section(["subject_requests"])
    # The same limits (the service reads this file too), blocks of RESERVE_BLOCK requests.
    capacity = config["rate_limits"]["plans"]["free"]["requests"]["capacity"]
    reserve_config = json.loads(json.dumps(config))
    reserve_config["rate_limits"]["cluster"] = cluster_section(["subject_requests"], RESERVE_BLOCK / capacity)
    rls = stack.enter_context(RateLimitService(ctx, cluster_config, redis))
    upstream = stack.enter_context(start_upstream(ctx))
    fronts = {
        "local": stack.enter_context(Envoy(ctx, "local", voxgate_bootstrap(config, upstream.port), CONCURRENCY)),
        "cluster": stack.enter_context(Envoy(ctx, "cluster", with_rls_port(
            voxgate_bootstrap(cluster_config, upstream.port), rls.grpc_port), CONCURRENCY)),
        "reserve": stack.enter_context(Envoy(ctx, "reserve", with_rls_port(
            voxgate_bootstrap(reserve_config, upstream.port), rls.grpc_port), CONCURRENCY)),
    }
    token = devtoken.mint(keys=keys, alg="ES256", sub="bench-cluster", plan="free")
    headers = {"Authorization": f"Bearer {token}"}
    for name, front in fronts.items():
        wrk.run(ctx, f"{name}-warmup", front.url(PATH), ctx.seconds(WARMUP_S), connections=CONNECTIONS,
                headers=headers)
    rounds, phase_s = ctx.rounds(ROUNDS), ctx.seconds(PHASE_S)
    results: dict[str, list[dict]] = {name: [] for name in SUBJECTS}
    for index in range(rounds):
        ctx.say(f"cluster limits: round {index + 1}/{rounds}")
        for name in turns(list(SUBJECTS), index):
            front = fronts[name]
            before = (front.cpu_seconds(), rls.cpu_seconds(), redis.cpu_seconds())
            result = wrk.run(ctx, name, front.url(PATH), phase_s, connections=CONNECTIONS, headers=headers)
            after = (front.cpu_seconds(), rls.cpu_seconds(), redis.cpu_seconds())
            if result.errors["status"] or result.socket_errors:
                raise RuntimeError(f"{SUBJECTS[name]}: {result.errors} in a phase that must answer 200 only")
            per = lambda i: (after[i] - before[i]) / result.requests * 1e6  # noqa: E731
            results[name].append({"envoy_us": per(0), "rls_us": per(1), "redis_us": per(2),
                                  "p50_ms": result.p50_s * 1e3, "p99_ms": result.p99_s * 1e3,
                                  "rps": result.per_second, "requests": result.requests})

    def figure(name: str, field: str, unit: str) -> Figure:
        return Figure.of([r[field] for r in results[name]], unit)

    def added(field: str, unit: str, mode: str) -> Figure:
        return Figure.of([c[field] - l[field] for c, l in zip(results[mode], results["local"])], unit)

    table = Table(f"`GET {PATH}` (plan budget), ES256 token, wrk -t1 -c{CONNECTIONS}, front Envoy --concurrency "
                  f"{CONCURRENCY}; median (min–max) of {rounds} rounds of {phase_s:.0f} s",
                  ["front Envoy", "Envoy CPU per request", "voxgate-rls CPU per request", "Redis CPU per request",
                   "p50 latency", "p99 latency", "requests/s"])
    for name in SUBJECTS:
        table.add(SUBJECTS[name], figure(name, "envoy_us", "µs"), figure(name, "rls_us", "µs"),
                  figure(name, "redis_us", "µs"), figure(name, "p50_ms", "ms"), figure(name, "p99_ms", "ms"),
                  figure(name, "rps", "/s"))
    section.tables.append(table)
    p99_added, cpu_added = added("p99_ms", "ms", "reserve"), added("envoy_us", "µs", "reserve")
    section.targets.append(Target("cluster tier (reserve): p99 latency added per request", p99_added, "<=",
                                  TARGET_P99_ADDED_MS))
    section.targets.append(Target("cluster tier (reserve): Envoy CPU added per request", cpu_added, "<=",
                                  TARGET_CPU_ADDED_US))
    section.notes.append(
        f"Asking on every request adds {added('p50_ms', 'ms', 'cluster').text()} at p50 and "
        f"{added('p99_ms', 'ms', 'cluster').text()} at p99, {added('envoy_us', 'µs', 'cluster').text()} of Envoy "
        f"CPU per request (the gRPC call: encoding the request, HTTP/2 to the service, decoding the answer), and "
        f"costs {figure('cluster', 'rls_us', 'µs').text()} of voxgate-rls CPU and "
        f"{figure('cluster', 'redis_us', 'µs').text()} of Redis CPU per request. Reserving blocks of "
        f"{RESERVE_BLOCK} requests makes one call per {RESERVE_BLOCK + 1} requests: {cpu_added.text()} of Envoy "
        f"CPU and {p99_added.text()} at p99 added, {figure('reserve', 'rls_us', 'µs').text()} of voxgate-rls CPU "
        "per request. Everything runs on the same two cores as wrk and the upstream, so the service's CPU "
        "competes with Envoy's.")
    return {"rls_storage_timeout_ms": STORAGE_TIMEOUT_MS}


def _overshoot(ctx: Context, stack: ExitStack, keys: devkeys.DevKeys, redis: Redis, section: Section) -> None:
    base = metered(bench_filter_config(keys))
    base["rate_limits"]["plans"] = {"free": {"requests": {"capacity": FLOOD_BUDGET, "refill_per_second": 0}}}
    base["rate_limits"]["default_plan"] = "free"
    base["rate_limits"]["global"] = {"requests": UNREACHABLE_BUCKET}
    cluster_config = json.loads(json.dumps(base))
    cluster_config["rate_limits"]["cluster"] = cluster_section(["subject_requests"])
    reserve_config = json.loads(json.dumps(base))
    reserve_config["rate_limits"]["cluster"] = cluster_section(["subject_requests"], FLOOD_RESERVE)
    rls = stack.enter_context(RateLimitService(ctx, cluster_config, redis))
    upstream = stack.enter_context(start_upstream(ctx))
    table = Table(f"{FLOOD_SUBJECTS} subjects × {FLOOD_PER_SUBJECT} requests over 3 Envoys, {FLOOD_CONNECTIONS} "
                  f"concurrent connections, budget {FLOOD_BUDGET} requests per subject",
                  ["mode", "allowed per subject (min–max)", "overshoot per subject (max)", "overshoot in all",
                   "undecided (503)"])
    overshoot: dict[str, Figure] = {}
    modes = (("cluster (synchronous)", cluster_config), (f"cluster (reserve {FLOOD_RESERVE})", reserve_config),
             ("local only", base))
    for index, (mode, config) in enumerate(modes):
        with ExitStack() as envoys_stack:
            envoys = [envoys_stack.enter_context(Envoy(ctx, f"flood-{index}-{n}", with_rls_port(
                voxgate_bootstrap(config, upstream.port), rls.grpc_port), 2)) for n in range(3)]
            allowed, undecided = _flood(keys, envoys)
        extra = [max(0, a - FLOOD_BUDGET) for a in allowed]
        overshoot[mode] = Figure.of([max(extra)], "requests")
        table.add(mode, f"{min(allowed)}–{max(allowed)}", max(extra), sum(extra), undecided)
    section.tables.append(table)
    section.targets.append(Target("overshoot through 3 Envoys, synchronous mode", overshoot["cluster (synchronous)"],
                                  "<=", 0))
    section.targets.append(Target("overshoot through 3 Envoys, reserve mode", overshoot[f"cluster (reserve {FLOOD_RESERVE})"],
                                  "<=", 0))
    section.notes.append("With the local buckets only, each Envoy grants the whole budget: a subject gets up to "
                         "three times its plan across three replicas. With the cluster tier every request is "
                         "counted in Redis, all counters of a request in one script, before it goes on; reserved "
                         "blocks are counted before any request spends them, so they cannot overshoot either, and "
                         "leave at most a block per Envoy worker unspent (the fewest allowed).")


def _flood(keys: devkeys.DevKeys, envoys: list[Envoy]) -> tuple[list[int], int]:
    """Requests allowed per fresh subject when each sends FLOOD_PER_SUBJECT requests over `envoys`,
    and how many were 503 `rate_limit_unavailable` (the service slower than its storage timeout
    on these shared cores: neither allowed nor overshoot, reported)."""
    subjects = [f"flood-{uuid.uuid4().hex[:8]}" for _ in range(FLOOD_SUBJECTS)]
    tokens = {s: devtoken.mint(keys=keys, alg="ES256", sub=s) for s in subjects}
    jobs = [(s, envoys[(i + n) % len(envoys)]) for n in range(FLOOD_PER_SUBJECT) for i, s in enumerate(subjects)]
    allowed = {s: 0 for s in subjects}
    undecided = [0]
    lock = threading.Lock()

    def send(job) -> None:
        subject, envoy = job
        request = urllib.request.Request(envoy.url(PATH), headers={"Authorization": f"Bearer {tokens[subject]}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                ok = response.status == 200
        except urllib.error.HTTPError as error:
            body = error.read()
            error.close()
            if error.code == 503 and b"rate_limit_unavailable" in body:
                with lock:
                    undecided[0] += 1
                return
            if error.code != 429:
                raise RuntimeError(f"flood: {error.code} from {envoy.name}") from error
            ok = False
        if ok:
            with lock:
                allowed[subject] += 1

    with ThreadPoolExecutor(FLOOD_CONNECTIONS) as pool:
        list(pool.map(send, jobs))
    return [allowed[s] for s in subjects], undecided[0]


def _throughput(ctx: Context, redis: Redis, section: Section) -> None:
    config = metered(bench_filter_config(devkeys.ensure_keys()))
    config["rate_limits"]["cluster"] = cluster_section(["subject_requests"])
    phase_s = ctx.seconds(PHASE_S)
    rounds = ctx.rounds(3)
    decisions, incr, p50, p99 = [], [], [], []
    with RateLimitService(ctx, config, redis) as rls:
        for _ in range(rounds):
            out = subprocess.run([str(RLS_LOAD), f"{LOOPBACK}:{rls.grpc_port}", str(LOAD_CONNECTIONS), str(phase_s),
                                  str(LOAD_SUBJECTS), "free"], capture_output=True, text=True, check=True,
                                 timeout=phase_s + 60)
            load = json.loads(out.stdout.strip().splitlines()[-1])
            if load["errors"]:
                raise RuntimeError(f"rls_load: {load['errors']} failed calls")
            decisions.append(load["per_second"])
            p50.append(load["p50_ms"])
            p99.append(load["p99_ms"])
            incr.append(_redis_incr_per_second(redis))
    table = Table(f"voxgate-rls with Redis, {LOAD_CONNECTIONS} concurrent HTTP/2 callers, {LOAD_SUBJECTS} subjects, "
                  f"{rounds} rounds of {phase_s:.0f} s; Redis alone: redis-benchmark INCR -c {LOAD_CONNECTIONS}",
                  ["subject", "per second", "p50 latency", "p99 latency"])
    table.add("voxgate-rls decisions", Figure.of(decisions, "/s"), Figure.of(p50, "ms"), Figure.of(p99, "ms"))
    table.add("Redis INCR (floor of a Redis counter)", Figure.of(incr, "/s"), None, None)
    section.tables.append(table)
    ratio = Figure.of([d / i for d, i in zip(decisions, incr)], "×")
    section.notes.append(
        f"voxgate-rls makes {Figure.of(decisions, '/s').text()} decisions a second, {ratio.text()} of what Redis "
        "alone does for a bare INCR on this machine, with the load generator, the service and Redis sharing two "
        "cores. Every decision is one EVALSHA that reads and writes the counter and its expiry.")


def _redis_incr_per_second(redis: Redis) -> float:
    out = subprocess.run([REDIS_BENCHMARK, "-h", LOOPBACK, "-p", str(redis.port), "-t", "incr", "-n", "200000",
                          "-c", str(LOAD_CONNECTIONS), "--csv"], capture_output=True, text=True, check=True,
                         timeout=120)
    rows = [line.split(",") for line in out.stdout.splitlines() if line.startswith('"INCR"')]
    return float(rows[-1][1].strip('"'))
