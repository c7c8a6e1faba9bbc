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

After each flood, identities that existed before keep exact limits: a "clear" one, whose slot
no flood identity shares, gets exactly what was left of its bucket; a "shared" one, whose slot
exactly SHARED flood identities were made to hash into, gets exactly that much less (a slot
collision can only make limits stricter, never looser, and the arithmetic stays exact).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import time

import pytest
import requests

import flood_client
import rawhttp
from gate_checks import envoy_memory, wasm_traps
from tools import devtoken

# The defaults fit a CI run; VOXGATE_FLOOD_SUBJECTS=1000000 runs the full million (minutes).
SUBJECTS = int(os.environ.get("VOXGATE_FLOOD_SUBJECTS", 50_000))
ADDRESSES = int(os.environ.get("VOXGATE_FLOOD_ADDRESSES", 40_000))
SLOTS = 4096
CACHE_ENTRIES = 1024
WATCH_CAPACITY = 10
USED_BEFORE = 4
SHARED = 3
MB = 1 << 20
SUBJECT_KEY_BYTES = 150
ADDRESS_KEY_BYTES = 220
CACHED_TOKEN_BYTES = 900
ALLOCATED_BOUND = 4 * MB
RSS_BOUND = 24 * MB
WARM_UP_REQUESTS = 2000
FLOOD_TIMEOUT_S = max(240, max(SUBJECTS, ADDRESSES) // 400)

_MASK = (1 << 64) - 1


def identity_hash(identity: str) -> int:
    """The filter's slot hash (ratelimit/keys.rs): FNV-1a 64, then the MurmurHash3 finalizer."""
    h = 0xcbf29ce484222325
    for byte in identity.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001b3) & _MASK
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & _MASK
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & _MASK
    return h ^ (h >> 33)


def slot(identity: str) -> int:
    return identity_hash(identity) % SLOTS


def flood_identities(make, clear: str, shared: str, count: int) -> list[str]:
    """`count` identities among make(0), make(1), …: none in the slot of `clear`, exactly SHARED
    in the slot of `shared`."""
    chosen, in_shared = [], []
    for n in itertools.count():
        identity = make(n)
        if slot(identity) == slot(clear):
            continue
        if slot(identity) == slot(shared):
            if len(in_shared) < SHARED:
                in_shared.append(identity)
        elif len(chosen) < count - SHARED:
            chosen.append(identity)
        if len(chosen) == count - SHARED and len(in_shared) == SHARED:
            return chosen + in_shared
    raise AssertionError("unreachable")


def avoiding(identities, *watched: str) -> list[str]:
    """The identities whose slots no watched identity uses (for warming up without touching them)."""
    taken = {slot(w) for w in watched}
    return [i for i in identities if slot(i) not in taken]


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
    config = stack.filter_config()
    config["auth"]["cache_entries"] = CACHE_ENTRIES
    watch = {"requests": {"capacity": WATCH_CAPACITY, "refill_per_second": 0}}
    config["rate_limits"] = {
        "slots": SLOTS, "default_plan": "flood",
        "plans": {"flood": {"requests": {"capacity": 1000, "refill_per_second": 0}}, "watch": watch},
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


def statuses_of(send, count: int) -> list[int]:
    return [send().status for _ in range(count)]


def test_subject_and_token_flood_keeps_memory_bounded_and_limits_exact(stack, flood_envoy):
    assert SUBJECTS * SUBJECT_KEY_BYTES > 1.5 * ALLOCATED_BOUND
    assert SUBJECTS * CACHED_TOKEN_BYTES > 1.5 * RSS_BOUND
    tokens = FastTokens(stack)
    clear, shared = "watch-clear", "watch-shared"
    subjects = flood_identities(lambda n: f"flood-{n}", clear, shared, SUBJECTS)
    warm = avoiding([f"warm-{i}" for i in range(40)], clear, shared)[:20]

    def send(subject):
        return lambda: rawhttp.exchange("127.0.0.1", flood_envoy.port, tokens.request(subject, "watch"))

    for watched in (clear, shared):
        assert statuses_of(send(watched), USED_BEFORE) == [200] * USED_BEFORE
    warmed = flood_client.keep_alive("127.0.0.1", flood_envoy.port,
                                     (tokens.request(warm[i % len(warm)]) for i in range(WARM_UP_REQUESTS)))
    assert warmed == {200: WARM_UP_REQUESTS}

    statuses, seconds, allocated, rss = measure(flood_envoy, lambda: flood_client.keep_alive(
        "127.0.0.1", flood_envoy.port, (tokens.request(s) for s in subjects), concurrency=16,
        timeout_s=FLOOD_TIMEOUT_S), subjects)
    print(f"\nflood figures: {SUBJECTS} subjects/tokens in {seconds:.1f} s: allocated {allocated / MB:+.2f} MB, "
          f"RSS {rss / MB:+.2f} MB")
    assert statuses == {200: SUBJECTS}
    assert allocated < ALLOCATED_BOUND
    assert rss < RSS_BOUND

    left = WATCH_CAPACITY - USED_BEFORE
    assert statuses_of(send(clear), left + 1) == [200] * left + [429]
    assert statuses_of(send(shared), left - SHARED + 1) == [200] * (left - SHARED) + [429]
    assert wasm_traps(flood_envoy.log_text()) == []


def test_client_address_flood_keeps_memory_bounded_and_limits_exact(flood_envoy):
    assert ADDRESSES * ADDRESS_KEY_BYTES > 1.5 * ALLOCATED_BOUND
    # 127.160.x.y onwards for the flood; the watched addresses are outside that range.
    clear, shared = "127.159.0.1", "127.159.0.2"
    addresses = flood_identities(lambda n: f"127.{160 + n // 64516}.{1 + n // 254 % 254}.{1 + n % 254}",
                                 clear, shared, ADDRESSES)
    warm = avoiding([f"127.158.0.{i}" for i in range(1, 40)], clear, shared)[:5]
    healthz = rawhttp.request_bytes("GET", "/healthz", [("host", "voxgate.test")])

    def send(address):
        return lambda: rawhttp.exchange("127.0.0.1", flood_envoy.port, healthz, source=address)

    for watched in (clear, shared):
        assert statuses_of(send(watched), USED_BEFORE) == [200] * USED_BEFORE
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

    left = WATCH_CAPACITY - USED_BEFORE
    assert statuses_of(send(clear), left + 1) == [200] * left + [429]
    assert statuses_of(send(shared), left - SHARED + 1) == [200] * (left - SHARED) + [429]
    assert wasm_traps(flood_envoy.log_text()) == []
