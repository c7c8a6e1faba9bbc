"""Benchmark 5, forged tokens: a flood of distinct, well-formed ES256 tokens whose signatures do
not match (each carries a valid header and valid claims for its own subject, and the genuine
signature of the next token in the set), sent by wrk over 16 keep-alive connections, every
request with the next of 4,096 such tokens, to `GET /v1/models` on a front Envoy (one worker)
before an upstream that no request may reach. Subjects: the voxgate filter with its default
configuration and `failed_auth.refuse_before_verification` (every client has an address of its
own; a token not in the verified-token cache meets the failed-auth bucket of the client address
first, 20 failures then 1 per second, so most of the flood is refused with 429 before any check of
the token), Envoy's native `jwt_authn` without its cache (every token verified) plus
`local_ratelimit`, and, for reference, the voxgate filter without the failed-auth bucket (every
token verified). Measured per phase: refusals per second, the front Envoy's CPU time per refusal
(utime + stime from /proc around the phase), and the refusals by status. The subjects take turns
within each round.
"""

from __future__ import annotations

import secrets
from contextlib import ExitStack

from tools import devkeys, devtoken, render_envoy

from . import wrk
from .context import Context
from .core import Figure, Section, Table, Target, method_of, turns
from .envoys import Envoy, native_bootstrap, start_upstream, voxgate_bootstrap

KEY = "forged_tokens"
NUMBER = 5
TITLE = "Forged-token flood"
PATH = "/v1/models"
TOKENS = 4096
ROUNDS = 4
PHASE_S = 5.0
WARMUP_S = 1.0
CONNECTIONS = 16
CONCURRENCY = 1
REFUSALS = (401, 429)

SUBJECTS = {
    "voxgate": "voxgate filter (default configuration)",
    "native": "jwt_authn (no cache) + local_ratelimit",
    "voxgate_unbucketed": "voxgate filter, no failed-auth bucket",
}


def forged_tokens(keys: devkeys.DevKeys, count: int) -> list[str]:
    """`count` distinct tokens, each with a genuine header and claims (its own subject) and the
    genuine signature of its neighbour: well-formed in every part, so only verifying the
    signature can tell it is forged."""
    run = secrets.token_hex(4)
    genuine = [devtoken.mint(keys=keys, alg="ES256", sub=f"forged-{run}-{index}") for index in range(count)]
    signed_parts = [token.rsplit(".", 1) for token in genuine]
    return [f"{signed_parts[index][0]}.{signed_parts[(index + 1) % count][1]}" for index in range(count)]


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    keys = devkeys.ensure_keys()
    tokens_file = ctx.work_dir / f"{KEY}-tokens.txt"
    tokens_file.write_text("\n".join(forged_tokens(keys, TOKENS)) + "\n")
    rounds = ctx.rounds(ROUNDS)
    phase_s = ctx.seconds(PHASE_S)
    order = list(SUBJECTS)
    results: dict[str, list[dict]] = {name: [] for name in order}

    default_config = render_envoy.filter_config(keys.jwks())
    failed_auth = default_config["auth"]["failed_auth"]
    failed_auth["refuse_before_verification"] = True
    unbucketed_config = render_envoy.filter_config(keys.jwks())
    unbucketed_config["auth"]["failed_auth"] = None
    with ExitStack() as stack:
        ctx.say("forged tokens: starting the upstream and three front Envoys")
        upstream = stack.enter_context(start_upstream(ctx))
        bootstraps = {
            "voxgate": voxgate_bootstrap(default_config, upstream.port),
            "native": native_bootstrap(upstream.port, keys, cache=False),
            "voxgate_unbucketed": voxgate_bootstrap(unbucketed_config, upstream.port),
        }
        fronts = {name: stack.enter_context(Envoy(ctx, name, bootstraps[name], CONCURRENCY)) for name in order}
        for name, front in fronts.items():
            wrk.run(ctx, f"{name}-warmup", front.url(PATH), ctx.seconds(WARMUP_S), connections=CONNECTIONS,
                    tokens=tokens_file)
        upstream_before = upstream.stats()
        voxgate_before = fronts["voxgate"].stats()

        for index in range(rounds):
            ctx.say(f"forged tokens: round {index + 1}/{rounds}")
            for name in turns(order, index):
                front = fronts[name]
                cpu_before = front.cpu_seconds()
                result = wrk.run(ctx, name, front.url(PATH), phase_s, connections=CONNECTIONS,
                                 tokens=tokens_file, count_statuses=True)
                cpu = front.cpu_seconds() - cpu_before
                unexpected = {status: n for status, n in result.statuses.items() if status not in REFUSALS}
                if unexpected or result.socket_errors:
                    raise RuntimeError(f"{SUBJECTS[name]}: answers {dict(result.statuses)}, socket errors "
                                       f"{result.errors}; a forged token may only be refused")
                refused = sum(result.statuses[status] for status in REFUSALS)
                results[name].append({"per_s": refused / result.seconds, "cpu_us": cpu / refused * 1e6,
                                      "p99_ms": result.p99_s * 1e3, "401": result.statuses[401],
                                      "429": result.statuses[429]})
        upstream_after = upstream.stats()
        voxgate_after = fronts["voxgate"].stats()

    per_s = {name: Figure.of([r["per_s"] for r in rows], "/s") for name, rows in results.items()}
    cpu = {name: Figure.of([r["cpu_us"] for r in rows], "µs") for name, rows in results.items()}
    table = Table(f"`GET {PATH}`, {TOKENS} distinct forged ES256 tokens in turn, wrk -t1 -c{CONNECTIONS} from "
                  f"127.0.0.1, front Envoy --concurrency {CONCURRENCY}; median (min–max) of {rounds} rounds of "
                  f"{phase_s:.0f} s",
                  ["front Envoy", "refusals/s", "× native", "Envoy CPU per refusal", "CPU × native",
                   "p99 latency", "401", "429"])
    for name in order:
        rows = results[name]
        table.add(SUBJECTS[name], per_s[name], per_s[name].ratio(per_s["native"], paired=True), cpu[name],
                  cpu[name].ratio(cpu["native"], paired=True), Figure.of([r["p99_ms"] for r in rows], "ms"),
                  sum(r["401"] for r in rows), sum(r["429"] for r in rows))
    section.tables.append(table)

    speed = per_s["voxgate"].ratio(per_s["native"], paired=True)
    section.targets.append(Target("voxgate ÷ native jwt_authn: forged tokens refused per second", speed, ">=", 1.0))
    voxgate_401 = sum(r["401"] for r in results["voxgate"])
    voxgate_429 = sum(r["429"] for r in results["voxgate"])
    reached = (upstream_after.get("http.upstream.downstream_rq_total", 0)
               - upstream_before.get("http.upstream.downstream_rq_total", 0))
    section.notes += [
        f"voxgate answered {voxgate_401} of the flood with 401 `bad_signature` and {voxgate_429} with 429 "
        f"`auth_failures` ({voxgate_429 / max(voxgate_401 + voxgate_429, 1):.1%}): the failed-auth bucket of the "
        f"client address (capacity {failed_auth['capacity']:g}, refill {failed_auth['refill_per_second']:g}/s) "
        "comes before any check of a token that is not in the verified-token cache, so once it is empty only its "
        "refill reaches signature verification. "
        f"Its CPU per refusal is {cpu['voxgate'].ratio(cpu['native'], paired=True).text()} native jwt_authn's.",
        _filter_counts(voxgate_before, voxgate_after),
        "wrk connects from 127.0.0.1 only, so the whole flood comes from one client address: this is the case the "
        "failed-auth bucket is for. A flood spread over many addresses gets the bucket's capacity in verifications "
        "per new address and its refill per address after that; the last subject shows the cost when every forged "
        "token is verified (the filter's ES256 runs as pure-Rust WebAssembly, native jwt_authn's in BoringSSL).",
        f"Requests that reached the upstream during the measured phases, over all subjects: {reached}.",
        "Envoy runs at log level warn, so the filter's info line per refusal is not written.",
        "Refusals per second are wall-clock figures of a closed loop on a shared two-core machine (wrk, which "
        "also counts every answer's status here, competes with Envoy): noisy. CPU per refusal is the robust figure.",
    ]
    section.conditions = {"rounds": rounds, "phase_s": phase_s, "connections": CONNECTIONS,
                          "concurrency": CONCURRENCY, "tokens": TOKENS, "path": PATH}
    return section


def _filter_counts(before: dict[str, int], after: dict[str, int]) -> str:
    """The filter's own decision counters for the default-configuration subject."""
    def delta(reason: str) -> int:
        name = f"wasmcustom.voxgate.decision.{reason}"
        return after.get(name, 0) - before.get(name, 0)

    return (f"The filter's own decision counters over the measured phases (they also count requests in flight when "
            f"a phase ended, which wrk leaves out): bad_signature {delta('bad_signature')}, auth_failures "
            f"{delta('auth_failures')}, allowed {delta('allowed')}.")
