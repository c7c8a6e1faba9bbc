"""Benchmark 11, the filter's own work on the host: the filter's Rust code compiled natively and
driven through its test double of Envoy (`voxgate_filter::testing::FakeHost`), without Envoy or
V8, by `filter/examples/host_cost.rs`: an ES256 signature check (a token-cache miss), a
token-cache hit, and a whole `GET /v1/models` with a cached token through the request flow, every
bucket charged. Each run prints the median of five rounds; the run is repeated. The baseline is the
ES256 check measured in the same run: what the token cache saves, and how small the rest of the
request is beside one signature check. Benchmark 1 measures the same request inside Envoy.
"""

from __future__ import annotations

import json
import subprocess

from .context import Context
from .core import Figure, Section, Table, method_of

KEY = "filter_host"
NUMBER = 11
TITLE = "The filter's own work on the host"
RUNS = 3


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    program = ctx.root / "target" / "release" / "examples" / "host_cost"
    runs = RUNS if not ctx.quick else 1
    measured: list[dict] = []
    for index in range(runs):
        ctx.say(f"filter_host: run {index + 1}/{runs}")
        command = [str(program), *(["--quick"] if ctx.quick else [])]
        output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
        measured.append(json.loads(output.strip().splitlines()[-1]))

    def figure(name: str) -> Figure:
        return Figure.of([m[name] for m in measured], "µs")

    verify = figure("es256_verify_us")
    table = Table(f"microseconds per operation, median (min–max) of {runs} runs of 5 rounds each; "
                  f"token {measured[0]['token_bytes']} bytes",
                  ["operation", "time", "÷ ES256 check"])
    table.add("ES256 token check, cache miss (parse, claims, signature)", verify, None)
    for name, label in [("token_cache_hit_us", "token-cache hit"),
                        ("cached_request_us", "whole request, cached token, every bucket charged")]:
        table.add(label, figure(name), figure(name).ratio(verify, paired=True))
    section.tables.append(table)
    section.conditions["program"] = "cargo run --release -p voxgate-filter --features testing --example host_cost"
    section.conditions["operations per round"] = (f"{measured[0]['tokens_per_round']} tokens, "
                                                  f"{measured[0]['requests_per_round']} requests")
    return section
