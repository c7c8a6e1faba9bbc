"""Benchmark 5, forged tokens: a flood of distinct, well-formed ES256 tokens whose signatures do
not match (each carries a valid header and valid claims for its own subject, and the genuine
signature of the next token in the set), sent by wrk over 16 keep-alive connections, every
request with the next of 4,096 such tokens, to `GET /v1/models` on a front Envoy (one worker)
before an upstream that no request may reach. Four front Envoys, each against the same flood:
Envoy's native `jwt_authn` without its cache (every token verified) plus `local_ratelimit`, the
baseline; (a) voxgate, the flood from one client address, with
`failed_auth.refuse_before_verification` (an address that has failed 20 times is refused with 429
before any check of a new token); (b) voxgate with its default configuration, the flood from
many addresses (each token with an `X-Forwarded-For` address of its own, the front Envoy
trusting one hop), so the failed-auth bucket never refuses and every token's signature is
checked; (c) voxgate trusting a native `jwt_authn` placed before it (a `jwt_authn` provider,
Istio's RequestAuthentication), which refuses the forged tokens before the filter; (d) as (b)
with RS256 tokens (2048-bit key), against its own baseline: `jwt_authn` verifying RS256. Measured per
phase: refusals per second, the front Envoy's CPU time per refusal (utime + stime from /proc
around the phase), and the refusals by status. The subjects take turns within each round.
"""

from __future__ import annotations

import json
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
    "native": "jwt_authn (no cache) + local_ratelimit",
    "one_address": "(a) voxgate, one address, refuse_before_verification",
    "many_addresses": "(b) voxgate, many addresses, default configuration",
    "jwt_authn_trust": "(c) voxgate trusting jwt_authn before it",
    "native_rs256": "jwt_authn (no cache), RS256 tokens",
    "many_addresses_rs256": "(d) voxgate, many addresses, RS256 tokens",
}
# The flood of each subject, by the algorithm of its tokens.
ALG = {name: "RS256" if name.endswith("rs256") else "ES256" for name in SUBJECTS}
SPREAD = {"many_addresses", "many_addresses_rs256"}
# Targets on Envoy CPU per refusal, against the native baseline.
TARGET_MANY_ADDRESSES = 2.0
TARGET_JWT_AUTHN_TRUST = 1.2


def forged_tokens(keys: devkeys.DevKeys, count: int, alg: str = "ES256") -> list[str]:
    """`count` distinct tokens, each with a genuine header and claims (its own subject) and the
    genuine signature of its neighbour: well-formed in every part, so only verifying the
    signature can tell it is forged."""
    run = secrets.token_hex(4)
    genuine = [devtoken.mint(keys=keys, alg=alg, sub=f"forged-{run}-{index}") for index in range(count)]
    signed_parts = [token.rsplit(".", 1) for token in genuine]
    return [f"{signed_parts[index][0]}.{signed_parts[(index + 1) % count][1]}" for index in range(count)]


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    keys = devkeys.ensure_keys()
    tokens_files = {}
    for alg in sorted(set(ALG.values())):
        tokens_files[alg] = ctx.work_dir / f"{KEY}-tokens-{alg}.txt"
        tokens_files[alg].write_text("\n".join(forged_tokens(keys, TOKENS, alg)) + "\n")
    rounds = ctx.rounds(ROUNDS)
    phase_s = ctx.seconds(PHASE_S)
    order = list(SUBJECTS)
    results: dict[str, list[dict]] = {name: [] for name in order}

    one_address_config = render_envoy.filter_config(keys.jwks())
    failed_auth = one_address_config["auth"]["failed_auth"]
    failed_auth["refuse_before_verification"] = True
    default_config = render_envoy.filter_config(keys.jwks())
    trust_config, jwt_authn = jwt_authn_trust(keys)
    with ExitStack() as stack:
        ctx.say(f"forged tokens: starting the upstream and {len(SUBJECTS)} front Envoys")
        upstream = stack.enter_context(start_upstream(ctx))
        bootstraps = {
            "native": native_bootstrap(upstream.port, keys, cache=False),
            "one_address": voxgate_bootstrap(one_address_config, upstream.port),
            "many_addresses": voxgate_bootstrap(default_config, upstream.port, xff_trusted_hops=1),
            "jwt_authn_trust": voxgate_bootstrap(trust_config, upstream.port, jwt_authn=jwt_authn),
            "native_rs256": native_bootstrap(upstream.port, keys, cache=False, alg="RS256"),
            "many_addresses_rs256": voxgate_bootstrap(default_config, upstream.port, xff_trusted_hops=1),
        }
        fronts = {name: stack.enter_context(Envoy(ctx, name, bootstraps[name], CONCURRENCY)) for name in order}
        for name, front in fronts.items():
            wrk.run(ctx, f"{name}-warmup", front.url(PATH), ctx.seconds(WARMUP_S), connections=CONNECTIONS,
                    tokens=tokens_files[ALG[name]], spread_addresses=name in SPREAD)
        upstream_before = upstream.stats()
        counted = ("one_address", "many_addresses", "many_addresses_rs256")
        counters_before = {name: fronts[name].stats() for name in counted}

        for index in range(rounds):
            ctx.say(f"forged tokens: round {index + 1}/{rounds}")
            for name in turns(order, index):
                front = fronts[name]
                cpu_before = front.cpu_seconds()
                result = wrk.run(ctx, name, front.url(PATH), phase_s, connections=CONNECTIONS,
                                 tokens=tokens_files[ALG[name]], count_statuses=True,
                                 spread_addresses=name in SPREAD)
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
        counters_after = {name: fronts[name].stats() for name in counted}

    per_s = {name: Figure.of([r["per_s"] for r in rows], "/s") for name, rows in results.items()}
    cpu = {name: Figure.of([r["cpu_us"] for r in rows], "µs") for name, rows in results.items()}
    baseline = {name: "native_rs256" if ALG[name] == "RS256" else "native" for name in order}
    table = Table(f"`GET {PATH}`, {TOKENS} distinct forged tokens (ES256; RS256 for the last two) in turn, wrk -t1 -c{CONNECTIONS} from "
                  f"127.0.0.1, front Envoy --concurrency {CONCURRENCY}; median (min–max) of {rounds} rounds of "
                  f"{phase_s:.0f} s",
                  ["front Envoy", "refusals/s", "× native", "Envoy CPU per refusal", "CPU × native",
                   "p99 latency", "401", "429"])
    for name in order:
        rows = results[name]
        native = baseline[name]
        table.add(SUBJECTS[name], per_s[name], per_s[name].ratio(per_s[native], paired=True), cpu[name],
                  cpu[name].ratio(cpu[native], paired=True), Figure.of([r["p99_ms"] for r in rows], "ms"),
                  sum(r["401"] for r in rows), sum(r["429"] for r in rows))
    section.tables.append(table)

    section.targets.append(Target("(b) many addresses ÷ native jwt_authn: Envoy CPU per forged token",
                                  cpu["many_addresses"].ratio(cpu["native"], paired=True), "<=",
                                  TARGET_MANY_ADDRESSES))
    section.targets.append(Target("(c) jwt_authn trust ÷ native jwt_authn: Envoy CPU per forged token",
                                  cpu["jwt_authn_trust"].ratio(cpu["native"], paired=True), "<=",
                                  TARGET_JWT_AUTHN_TRUST))
    section.targets.append(Target("(d) many addresses, RS256 ÷ native jwt_authn RS256: Envoy CPU per forged token",
                                  cpu["many_addresses_rs256"].ratio(cpu["native_rs256"], paired=True), "<=",
                                  TARGET_MANY_ADDRESSES))
    reached = (upstream_after.get("http.upstream.downstream_rq_total", 0)
               - upstream_before.get("http.upstream.downstream_rq_total", 0))
    section.notes += [
        f"(a) {_filter_counts(counters_before['one_address'], counters_after['one_address'])} The failed-auth "
        f"bucket of the one address (capacity {failed_auth['capacity']:g}, refill "
        f"{failed_auth['refill_per_second']:g}/s) is empty after the first 20 failures, so only its refill reaches "
        "a signature check: the cost of a flood from an address that identifies one client.",
        f"(b) {_filter_counts(counters_before['many_addresses'], counters_after['many_addresses'])} Every token "
        "comes from its own address, so every one is verified: the cost when an attacker spreads the flood, or "
        "sits behind a gateway shared with legitimate users (the default never refuses a token that verifies). "
        "The filter checks ES256 itself with a precomputed table per key (auth/es256.rs).",
        "(c) jwt_authn refuses every forged token (401) before the filter: the filter costs only what it adds "
        "to a request Envoy already answers.",
        f"(d) {_filter_counts(counters_before['many_addresses_rs256'], counters_after['many_addresses_rs256'])} "
        "RS256 is verified by jwt-simple's pure-Rust RSA in the VM; the baseline is jwt_authn (BoringSSL) "
        "verifying the same tokens.",
        f"Requests that reached the upstream during the measured phases, over all subjects: {reached}.",
        "Envoy runs at log level warn, so the filter's info line per refusal is not written.",
        "Refusals per second are wall-clock figures of a closed loop on a shared two-core machine (wrk, which "
        "also counts every answer's status here, competes with Envoy): noisy. CPU per refusal is the robust figure.",
    ]
    section.conditions = {"rounds": rounds, "phase_s": phase_s, "connections": CONNECTIONS,
                          "concurrency": CONCURRENCY, "tokens": TOKENS, "path": PATH}
    return section


def jwt_authn_trust(keys: devkeys.DevKeys) -> tuple[dict, dict]:
    """The filter configuration whose `dev` provider trusts jwt_authn, and that jwt_authn: it
    verifies the dev issuer's tokens natively, refuses a token that fails, lets a request without
    one through (Istio's RequestAuthentication), and leaves the payload in the metadata."""
    config = render_envoy.filter_config(keys.jwks())
    provider = next(p for p in config["auth"]["providers"] if p["name"] == "dev")
    issuer = provider["issuer"]
    for source in ("jwks", "remote_jwks"):
        provider.pop(source, None)
    provider["jwt_authn"] = {"payload_in_metadata": issuer}
    jwt_authn = {
        "providers": {"dev": {
            "issuer": issuer,
            "audiences": provider["audiences"],
            "local_jwks": {"inline_string": json.dumps({"keys": [keys.key("ES256").jwk]})},
            "payload_in_metadata": issuer,
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "dev"}, {"allow_missing": {}}]}}}],
    }
    return config, jwt_authn


def _filter_counts(before: dict[str, int], after: dict[str, int]) -> str:
    """The filter's own decision counters of one subject over the measured phases."""
    def delta(reason: str) -> int:
        name = f"wasmcustom.voxgate.decision.{reason}"
        return after.get(name, 0) - before.get(name, 0)

    return (f"The filter's decision counters (which also count requests in flight when a phase ended): "
            f"bad_signature {delta('bad_signature')}, auth_failures {delta('auth_failures')}, "
            f"allowed {delta('allowed')}.")
