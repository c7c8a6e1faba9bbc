"""End to end: token buckets in Envoy shared data, exact across both workers.

Every check uses a fresh key (a new subject, or a new loopback source address for the anonymous
bucket), so each starts from a full bucket that no earlier test touched. 64 requests are sent at
once over 64 connections; with no refill, exactly `capacity` of them may pass, whichever worker
serves them. Counts come from the answers and, for what reached the sidecar, from Envoy's access
log. Last, slots are addressed by a keyed hash: identities aimed at a victim's slot with the
public hash the filter once used do not land there.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from requests.adapters import HTTPAdapter

MODELS = "/v1/models"
SPEECH = "/v1/audio/speech"
VOICE = "en_US-joe-medium"
CONNECTIONS = 64
TIMEOUT = 120

EXACT_CAPACITY = 7
CHARACTER_CAPACITY = 100
REFILL_CAPACITY, REFILL_RATE = 3, 0.5
DEFICIT_RATE = 0.1
ANONYMOUS_CAPACITY = 5

PLANS = {
    "exact": {"requests": {"capacity": EXACT_CAPACITY, "refill_per_second": 0}},
    "characters": {"characters": {"capacity": CHARACTER_CAPACITY, "refill_per_second": 0}},
    "refill": {"requests": {"capacity": REFILL_CAPACITY, "refill_per_second": REFILL_RATE}},
    "deficit": {"requests": {"capacity": 1, "refill_per_second": DEFICIT_RATE}},
    "in_flight": {"max_in_flight": 1},
}


class _SourceAddress(HTTPAdapter):
    def __init__(self, address: str):
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def _config(stack, shadow: bool = False) -> dict:
    config = stack.filter_config(metered_metadata=True)
    limits = config["rate_limits"]
    limits["plans"].update(PLANS)
    limits["anonymous"] = {"requests": {"capacity": ANONYMOUS_CAPACITY, "refill_per_second": 0}}
    # The global bucket would mix the tests' keys together; it is a bucket like the others.
    limits.pop("global", None)
    limits["shadow"] = shadow
    return config


@pytest.fixture(scope="module")
def gate(stack, envoy_factory):
    return envoy_factory(_config(stack))


def fresh_token(stack, plan: str) -> str:
    return stack.token(sub=f"{plan}-{uuid.uuid4().hex[:12]}", plan=plan)


def burst(send, count: int = CONNECTIONS) -> list[requests.Response]:
    """`count` calls of `send(session)` at once, each on its own connection."""
    barrier = threading.Barrier(count)

    def one(_):
        with requests.Session() as session:
            barrier.wait(timeout=30)
            return send(session)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


def statuses(responses) -> dict:
    counts: dict = {}
    for r in responses:
        counts[r.status_code] = counts.get(r.status_code, 0) + 1
    return counts


def test_exactly_capacity_requests_pass_under_64_connections(stack, gate):
    subjects = []
    for _ in range(5):
        token = fresh_token(stack, "exact")
        responses = burst(lambda s: s.get(gate.url + MODELS, headers={"Authorization": f"Bearer {token}"},
                                          timeout=TIMEOUT))
        assert statuses(responses) == {200: EXACT_CAPACITY, 429: CONNECTIONS - EXACT_CAPACITY}
        refused = [r for r in responses if r.status_code == 429]
        assert all(r.json()["error"]["code"] == "rate_limited" for r in refused)
        assert all(r.headers["x-ratelimit-remaining"] == "0" for r in refused)
        subjects.append(responses)
    assert sum(1 for rs in subjects for r in rs if r.status_code == 200) == 5 * EXACT_CAPACITY


def test_exactly_capacity_anonymous_requests_pass_per_address(stack, gate):
    for n in range(3):
        address = f"127.0.{200 + n}.{uuid.uuid4().int % 250 + 1}"

        def send(session, address=address):
            session.mount("http://", _SourceAddress(address))
            return session.get(gate.url + "/healthz", timeout=TIMEOUT)

        assert statuses(burst(send)) == {200: ANONYMOUS_CAPACITY, 429: CONNECTIONS - ANONYMOUS_CAPACITY}


def test_character_bucket_admits_exactly_its_capacity_in_characters(stack, gate):
    token = fresh_token(stack, "characters")
    headers = {"Authorization": f"Bearer {token}"}
    thirty = "Thirty characters of speech.  "
    assert len(thirty) == 30

    def send(session, text=thirty):
        return session.post(gate.url + SPEECH, headers=headers, timeout=TIMEOUT,
                            json={"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav"})

    responses = burst(send, 16)
    admitted = [r for r in responses if r.status_code != 429]
    assert len(admitted) == 3, statuses(responses)
    assert all(r.status_code == 200 for r in admitted)
    with requests.Session() as session:
        last_ten = send(session, "Ten chars.")
        assert last_ten.status_code == 200, "90 of 100 characters were used; 10 more fit exactly"
        over = send(session, "!")
    assert over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limited"


def test_refill_admits_what_the_rate_says(stack, gate):
    token = fresh_token(stack, "refill")
    headers = {"Authorization": f"Bearer {token}"}
    exhaust_start = time.monotonic()
    first = burst(lambda s: s.get(gate.url + MODELS, headers=headers, timeout=TIMEOUT), 16)
    exhaust_end = time.monotonic()
    assert statuses(first)[200] == REFILL_CAPACITY

    time.sleep(4.2)
    burst_start = time.monotonic()
    second = burst(lambda s: s.get(gate.url + MODELS, headers=headers, timeout=TIMEOUT), 16)
    burst_end = time.monotonic()
    admitted = statuses(second).get(200, 0)
    least = min(REFILL_CAPACITY, math.floor((burst_start - exhaust_end) * REFILL_RATE))
    most = min(REFILL_CAPACITY, math.floor((burst_end - exhaust_start) * REFILL_RATE))
    assert least <= admitted <= most, (least, admitted, most)
    assert admitted >= 2


def test_retry_after_is_the_deficit_rounded_up(stack, gate):
    headers = {"Authorization": f"Bearer {fresh_token(stack, 'deficit')}"}
    with requests.Session() as session:
        before = time.monotonic()
        assert session.get(gate.url + MODELS, headers=headers, timeout=TIMEOUT).status_code == 200
        refused = session.get(gate.url + MODELS, headers=headers, timeout=TIMEOUT)
        after = time.monotonic()
    assert refused.status_code == 429
    retry_after = int(refused.headers["retry-after"])
    # One token at 0.1/s, taken at most `after - before` seconds before the refusal: the wait is
    # (1 - refilled) / 0.1 seconds, rounded up.
    shortest = math.ceil((1 - (after - before) * DEFICIT_RATE) / DEFICIT_RATE)
    assert shortest <= retry_after <= math.ceil(1 / DEFICIT_RATE)
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-limit"].startswith("1")


def test_in_flight_cap_holds_while_a_synthesis_streams(stack, gate):
    headers = {"Authorization": f"Bearer {fresh_token(stack, 'in_flight')}"}
    long_text = "This sentence keeps the voice busy for a little while. " * 6
    body = {"model": "tts-1", "input": long_text, "voice": VOICE, "response_format": "wav", "stream": True}
    with requests.Session() as first, requests.Session() as second:
        streaming = first.post(gate.url + SPEECH, json=body, headers=headers, timeout=TIMEOUT, stream=True)
        assert streaming.status_code == 200
        concurrent = second.post(gate.url + SPEECH, json=body, headers=headers, timeout=TIMEOUT)
        assert concurrent.status_code == 429
        assert concurrent.json()["error"]["code"] == "too_many_in_flight"
        streaming.content
        streaming.close()
        deadline = time.monotonic() + 10
        while True:
            after = second.post(gate.url + SPEECH, json=dict(body, input="Done."), headers=headers, timeout=TIMEOUT)
            if after.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert after.status_code == 200, "the slot is given back when the stream ends"


def test_shadow_mode_forwards_and_counts(stack, envoy_factory):
    envoy = envoy_factory(_config(stack, shadow=True))
    headers = {"Authorization": f"Bearer {fresh_token(stack, 'exact')}"}
    responses = burst(lambda s: s.get(envoy.url + MODELS, headers=headers, timeout=TIMEOUT), 12)
    assert statuses(responses) == {200: 12}
    shadow = sum(s.value for s in envoy.stats().find("voxgate_shadow_refused", bucket="subject_requests"))
    assert shadow == 12 - EXACT_CAPACITY


_MASK = (1 << 64) - 1


def public_hash(identity: str) -> int:
    """The unkeyed slot hash the filter once used (FNV-1a 64, then the MurmurHash3 finalizer):
    anyone could compute it to choose identities that share a victim's slot."""
    h = 0xcbf29ce484222325
    for byte in identity.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001b3) & _MASK
    h ^= h >> 33
    h = (h * 0xff51afd7ed558ccd) & _MASK
    h ^= h >> 33
    h = (h * 0xc4ceb9fe1a85ec53) & _MASK
    return h ^ (h >> 33)


def test_identities_aimed_at_a_victims_slot_with_a_public_hash_miss_it(stack, envoy_factory):
    """A subject in the victim's slot shares the victim's record under the stricter plan, which
    its `X-RateLimit-Limit` shows. With the slot hash keyed by the deployment's secret, each aimed
    subject lands there only by chance (1 in SLOTS)."""
    slots, aimed_count = 4096, 8
    config = stack.filter_config(metered_metadata=True)
    config["rate_limits"] = {"slots": slots, "default_plan": "crowd", "plans": {
        "victim": {"requests": {"capacity": 100, "refill_per_second": 0}},
        "crowd": {"requests": {"capacity": 1000, "refill_per_second": 0}}}}
    envoy = envoy_factory(config)
    victim = f"victim-{uuid.uuid4().hex[:12]}"
    target = public_hash(victim) % slots
    aimed = list(itertools.islice(
        (s for s in (f"aimed-{n}" for n in itertools.count()) if public_hash(s) % slots == target), aimed_count))

    def limit(session, subject: str, plan: str) -> str:
        headers = {"Authorization": f"Bearer {stack.token(sub=subject, plan=plan)}"}
        response = session.get(envoy.url + MODELS, headers=headers, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return response.headers["x-ratelimit-limit"].split(",")[0]

    with requests.Session() as session:
        assert limit(session, victim, "victim") == "100"
        limits = [limit(session, subject, "crowd") for subject in aimed]
    # By chance at most one of 8 shares the slot (two or more: about 2 in a million runs).
    assert limits.count("100") <= 1, f"{limits.count('100')} of {aimed_count} aimed subjects share the victim's slot"


def test_health_checks_and_listings_spend_no_budget_as_shipped(stack):
    """The shipped configuration meters the speech routes only: a load balancer's health checks
    from one address are never refused, and listing voices costs a user none of its budget."""
    address = f"127.0.{199}.{uuid.uuid4().int % 250 + 1}"
    with requests.Session() as session:
        session.mount("http://", _SourceAddress(address))
        answers = [session.get(stack.url + "/healthz", timeout=TIMEOUT) for _ in range(100)]
    assert statuses(answers) == {200: 100}
    assert not any("x-ratelimit-remaining" in a.headers for a in answers)

    free = stack.filter_config()["rate_limits"]["plans"]["free"]["requests"]["capacity"]
    headers = {"Authorization": f"Bearer {stack.token(sub=f'lister-{uuid.uuid4().hex[:12]}', plan='free')}"}
    for path in [MODELS, "/v1/audio/voices"] * (free + 5):
        assert requests.get(stack.url + path, headers=headers, timeout=TIMEOUT).status_code == 200
    spoken = requests.post(stack.url + SPEECH, headers=headers, timeout=TIMEOUT,
                           json={"model": "tts-1", "input": "Hi.", "response_format": "wav"})
    assert spoken.status_code == 200, spoken.text
    assert spoken.headers["x-ratelimit-remaining"] == str(free - 1)
