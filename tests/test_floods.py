"""End to end: floods of distinct identities against the real Envoy, filter and sidecar.

1. Subjects and tokens: SUBJECTS valid HS256 tokens, each for its own subject (so each is also
   a new entry for the verified-token cache), sent through Envoy's listener.
2. Client addresses: ADDRESSES requests to an anonymous route, each from its own 127.x.y.z
   source address (the filter keys anonymous buckets by `source.address`; Linux routes all of
   127.0.0.0/8 over lo).

Envoy's memory is measured before and after each flood: tcmalloc's `allocated` (where shared
data, and so every bucket, lives) and the process's resident set (which also holds the wasm VMs'
linear memories, and so the token caches).

What a leak would cost, measured on the development machine with the same floods against tables
that do not bound anything (`slots` 2^22, `cache_entries` 10^6): one shared-data key per identity
grew `allocated` by about 150 B (subject) to 220 B (address) per identity, and one cached token
per token grew the resident set by about 0.9 KB. With the bounded configuration below the same
floods grew `allocated` by < 1.5 MB and the resident set by < 4 MB. The bounds asserted sit
between the two, and each flood is large enough that a per-identity leak would exceed its bound
by at least 1.5 times (checked below, so a smaller flood cannot make the test vacuous).

After each flood, an identity that existed before (the victim) keeps an exact limit. Slots are
addressed by a hash keyed with the deployment's secret, so nobody, this test included, can aim
flood identities at the victim's slot; about SUBJECTS / SLOTS of them land there by chance and
share the victim's record under the stricter of both plans (a collision makes limits stricter,
never looser). A flood subject in the victim's slot is visible by the victim's plan in its
`X-RateLimit-Limit`, so the subject test accounts for every token of the victim's bucket: those
taken before, those taken by colliding flood requests, and those left, which the victim then
gets exactly, down to a 429. The address flood has one plan for everyone, so there the victim
gets exactly what its `X-RateLimit-Remaining` reports, counting down to a 429, and never more
than it had left before the flood.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import time

import pytest
import requests

import flood_client
import rawhttp
from gate_checks import envoy_memory, wasm_traps
from tools import devtoken

# A million subjects take a few minutes; VOXGATE_FLOOD_SUBJECTS sets fewer for a quick local run.
SUBJECTS = int(os.environ.get("VOXGATE_FLOOD_SUBJECTS", 1_000_000))
ADDRESSES = int(os.environ.get("VOXGATE_FLOOD_ADDRESSES", 40_000))
SLOTS = 4096
CACHE_ENTRIES = 1024
# Far more than the flood requests expected in the victim's slot (SUBJECTS / SLOTS ≈ 244 for a
# million, give or take 16), so the victim has tokens left to prove its count with.
WATCH_CAPACITY = 400
FLOOD_CAPACITY = 1000
USED_BEFORE = 4
MB = 1 << 20
SUBJECT_KEY_BYTES = 150
ADDRESS_KEY_BYTES = 220
CACHED_TOKEN_BYTES = 900
ALLOCATED_BOUND = 4 * MB
RSS_BOUND = 24 * MB
WARM_UP_REQUESTS = 2000
FLOOD_TIMEOUT_S = max(240, max(SUBJECTS, ADDRESSES) // 400)


def limit_of(header_value: str | None) -> int | None:
    """The single limit an `X-RateLimit-Limit` value starts with."""
    return int(header_value.split(",")[0]) if header_value else None


def spend(send, count: int) -> list[rawhttp.Response]:
    return [send() for _ in range(count)]


def drain(send) -> int:
    """Sends until the first 429 and returns how many were allowed before it, checking that the
    remaining count each answer reports goes down by exactly one, to 0, before the refusal."""
    allowed = []
    for _ in range(WATCH_CAPACITY + 1):
        response = send()
        if response.status == 429:
            assert response.header("retry-after"), response.headers
            assert [int(r.header("x-ratelimit-remaining")) for r in allowed] == list(range(len(allowed) - 1, -1, -1))
            return len(allowed)
        assert response.status == 200, (response.status, response.body[:200])
        allowed.append(response)
    raise AssertionError("the victim was never refused")


class FastTokens:
    """HS256 tokens for the dev provider, minted in microseconds from a precomputed header."""

    def __init__(self, stack):
        key = stack.keys.key("HS256")
        self._secret = key.private
        self._head = self._b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}, separators=(",", ":")))
        self._exp = int(time.time()) + 3600

    @staticmethod
    def _b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()

    def token(self, subject: str, plan: str) -> str:
        claims = (f'{{"iss":"{devtoken.DEV_ISSUER}","sub":"{subject}","aud":"{devtoken.DEV_AUDIENCE}",'
                  f'"scope":"tts","plan":"{plan}","exp":{self._exp}}}')
        signing_input = f"{self._head}.{self._b64(claims)}"
        signature = hmac.new(self._secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    def request(self, subject: str, plan: str = "flood") -> bytes:
        return (f"GET /v1/models HTTP/1.1\r\nhost: voxgate.test\r\n"
                f"authorization: Bearer {self.token(subject, plan)}\r\n\r\n").encode()


@pytest.fixture(scope="module")
def flood_envoy(stack, envoy_factory):
    config = stack.filter_config(metered_metadata=True)
    config["auth"]["cache_entries"] = CACHE_ENTRIES
    watch = {"requests": {"capacity": WATCH_CAPACITY, "refill_per_second": 0}}
    config["rate_limits"] = {
        "slots": SLOTS, "default_plan": "flood",
        "plans": {"flood": {"requests": {"capacity": FLOOD_CAPACITY, "refill_per_second": 0}}, "watch": watch},
        "anonymous": watch,
    }
    return envoy_factory(config)


def stat_names(envoy) -> list[str]:
    return [line.split(":", 1)[0] for line in requests.get(f"{envoy.admin_url}/stats", timeout=10).text.splitlines()]


def measure(envoy, flood, identities: list[str]) -> tuple:
    before = envoy_memory(envoy)
    started = time.monotonic()
    statuses = flood()
    seconds = time.monotonic() - started
    after = envoy_memory(envoy)
    names = "\n".join(stat_names(envoy))
    assert not [i for i in identities[:100] if i in names], "no statistic is created per identity"
    return statuses, seconds, after.allocated - before.allocated, after.rss - before.rss


def taken_from_the_victim(answers) -> int:
    """Requests of other subjects that were charged to the victim's record: in its slot they
    answer with the victim's (stricter) limit. Every other answer is an allowed flood request."""
    shared = {key: n for key, n in answers.items() if limit_of(key[1]) == WATCH_CAPACITY}
    others = {key: n for key, n in answers.items() if key not in shared}
    assert {(status, limit_of(limit)) for status, limit in others} <= {(200, FLOOD_CAPACITY)}, answers
    assert {status for status, _ in shared} <= {200, 429}, answers
    return sum(n for (status, _), n in shared.items() if status == 200)


def test_subject_and_token_flood_keeps_memory_bounded_and_limits_exact(stack, flood_envoy):
    expected_in_victim_slot = SUBJECTS / SLOTS
    assert expected_in_victim_slot + 6 * math.sqrt(expected_in_victim_slot) < WATCH_CAPACITY - USED_BEFORE
    assert SUBJECTS * SUBJECT_KEY_BYTES > 1.5 * ALLOCATED_BOUND
    assert SUBJECTS * CACHED_TOKEN_BYTES > 1.5 * RSS_BOUND
    tokens = FastTokens(stack)
    victim = "watch-victim"
    subjects = [f"flood-{n}" for n in range(SUBJECTS)]
    warm = [f"warm-{i}" for i in range(20)]

    def send(subject):
        return lambda: rawhttp.exchange("127.0.0.1", flood_envoy.port, tokens.request(subject, "watch"))

    before = spend(send(victim), USED_BEFORE)
    assert [r.status for r in before] == [200] * USED_BEFORE
    assert before[-1].header("x-ratelimit-remaining") == str(WATCH_CAPACITY - USED_BEFORE)
    warmed = flood_client.keep_alive("127.0.0.1", flood_envoy.port,
                                     (tokens.request(warm[i % len(warm)]) for i in range(WARM_UP_REQUESTS)),
                                     header="x-ratelimit-limit")
    assert sum(warmed.values()) == WARM_UP_REQUESTS

    answers, seconds, allocated, rss = measure(flood_envoy, lambda: flood_client.keep_alive(
        "127.0.0.1", flood_envoy.port, (tokens.request(s) for s in subjects), concurrency=16,
        timeout_s=FLOOD_TIMEOUT_S, header="x-ratelimit-limit"), subjects)
    shared = taken_from_the_victim(warmed) + taken_from_the_victim(answers)
    print(f"\nflood figures: {SUBJECTS} subjects/tokens in {seconds:.1f} s: allocated {allocated / MB:+.2f} MB, "
          f"RSS {rss / MB:+.2f} MB, {shared} requests charged to the victim's slot")
    assert sum(answers.values()) == SUBJECTS
    assert allocated < ALLOCATED_BOUND
    assert rss < RSS_BOUND

    assert USED_BEFORE + shared + drain(send(victim)) == WATCH_CAPACITY, "every token of the victim is accounted for"
    assert wasm_traps(flood_envoy.log_text()) == []


def test_client_address_flood_keeps_memory_bounded_and_limits_exact(flood_envoy):
    assert ADDRESSES * ADDRESS_KEY_BYTES > 1.5 * ALLOCATED_BOUND
    # 127.160.x.y onwards for the flood; the victim and the warm-up addresses are outside that range.
    victim = "127.159.0.1"
    addresses = [f"127.{160 + n // 64516}.{1 + n // 254 % 254}.{1 + n % 254}" for n in range(ADDRESSES)]
    warm = [f"127.158.0.{i}" for i in range(1, 6)]
    healthz = rawhttp.request_bytes("GET", "/healthz", [("host", "voxgate.test")])

    def send(address):
        return lambda: rawhttp.exchange("127.0.0.1", flood_envoy.port, healthz, source=address)

    before = spend(send(victim), USED_BEFORE)
    assert [r.status for r in before] == [200] * USED_BEFORE
    assert before[-1].header("x-ratelimit-remaining") == str(WATCH_CAPACITY - USED_BEFORE)
    warmed = flood_client.one_per_connection("127.0.0.1", flood_envoy.port, healthz,
                                             (warm[i % len(warm)] for i in range(WARM_UP_REQUESTS // 20)))
    assert set(warmed) <= {200, 429}

    statuses, seconds, allocated, rss = measure(flood_envoy, lambda: flood_client.one_per_connection(
        "127.0.0.1", flood_envoy.port, healthz, iter(addresses), concurrency=32, timeout_s=FLOOD_TIMEOUT_S),
        addresses)
    print(f"\nflood figures: {ADDRESSES} client addresses in {seconds:.1f} s: allocated {allocated / MB:+.2f} MB, "
          f"RSS {rss / MB:+.2f} MB, {statuses.get(429, 0)} refused by shared slots")
    assert set(statuses) <= {200, 429} and sum(statuses.values()) == ADDRESSES
    assert allocated < ALLOCATED_BOUND
    assert rss < RSS_BOUND

    assert drain(send(victim)) <= WATCH_CAPACITY - USED_BEFORE, "a collision never loosens a limit"
    assert wasm_traps(flood_envoy.log_text()) == []
