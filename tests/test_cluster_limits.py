"""End to end: one budget across three Envoys, kept by the real voxgate-rls over a real Redis.

Three Envoys with the filter sit in front of the session's sidecar, each with its own shared
data (its own local buckets), all asking one rate-limit service. The plan's numbers are the same
in the local buckets and in the service (one configuration file for both), so without the
cluster tier a subject would get three times its budget. Every check uses fresh subjects.

Then the failures: Redis and the service are killed and restarted under each failure mode, and
a hostile endpoint of the protocol answers garbage, oversized, unknown or no answers at all. No
request may hang: every one is sent with a client timeout, which would fail the test.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import grpc
import openai
import pytest
import requests

from harness.cluster import RateLimitService, Redis
from harness.ports import free_port

MODELS = "/v1/models"
SPEECH = "/v1/audio/speech"
# The Coqui fixture with characters as tokens: synthesizing it takes milliseconds.
FAST_VOICE = "coqui_vits_chars"
TIMEOUT = 30
SUBJECTS = 50
REQUEST_BUDGET = 5
CHARACTER_BUDGET = 10
SHORT_TEXT = "Hi."
RLS_TIMEOUT_MS = 200


def cluster_filter_config(stack, rls_port: int, failure_mode: str = "deny", local_only_seconds: int = 5,
                          requests: int = REQUEST_BUDGET, characters: int = CHARACTER_BUDGET,
                          reserve: float | None = None) -> dict:
    config = stack.filter_config(metered_metadata=True)
    limits = config["rate_limits"]
    limits["plans"] = {
        "free": {"requests": {"capacity": requests, "refill_per_second": 0},
                 "characters": {"capacity": characters, "refill_per_second": 0}},
    }
    limits["default_plan"] = "free"
    limits.pop("anonymous", None)
    limits.pop("global", None)
    limits["cluster"] = {
        "service": "voxgate_rls", "domain": "voxgate", "timeout_ms": RLS_TIMEOUT_MS,
        "failure_mode": failure_mode, "local_only_seconds": local_only_seconds,
        "limits": ["subject_requests", "subject_characters"],
    }
    if reserve is not None:
        limits["cluster"]["reserve"] = reserve
    return config


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = Redis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def rls(stack, redis, tmp_path_factory):
    service = RateLimitService(tmp_path_factory.mktemp("rls"), cluster_filter_config(stack, 0), redis,
                               storage_timeout_ms=RLS_TIMEOUT_MS // 2).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def envoys(stack, rls):
    started = [stack.new_envoy(cluster_filter_config(stack, rls.port), rls_port=rls.port).start()
               for _ in range(3)]
    try:
        yield started
    finally:
        for envoy in started:
            envoy.stop()


def fresh_subject(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


def bearer(stack, subject: str) -> dict:
    return {"Authorization": f"Bearer {stack.token(sub=subject)}"}


def models(session: requests.Session, envoy, headers: dict) -> requests.Response:
    return session.get(f"{envoy.url}{MODELS}", headers=headers, timeout=TIMEOUT)


def speech(session: requests.Session, envoy, headers: dict, text: str = SHORT_TEXT) -> requests.Response:
    body = {"model": "tts-1", "input": text, "voice": FAST_VOICE, "response_format": "wav"}
    return session.post(f"{envoy.url}{SPEECH}", json=body, headers=headers, timeout=TIMEOUT)


def error_code(response: requests.Response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


_local = threading.local()


def session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def flood(stack, envoys, send, per_subject: int, tag: str, count: int = SUBJECTS) -> dict[str, list[requests.Response]]:
    """`per_subject` requests from each of `count` fresh subjects, sent concurrently and spread
    over every Envoy in turn; the answers by subject."""
    subjects = [fresh_subject(tag) for _ in range(count)]
    headers = {s: bearer(stack, s) for s in subjects}
    jobs = [(s, envoys[(i + n) % len(envoys)]) for n in range(per_subject) for i, s in enumerate(subjects)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: (job[0], send(session(), job[1], headers[job[0]])), jobs))
    by_subject: dict[str, list[requests.Response]] = {s: [] for s in subjects}
    for subject, answer in answers:
        by_subject[subject].append(answer)
    return by_subject


def test_three_envoys_allow_each_subject_exactly_its_request_budget(stack, envoys):
    by_subject = flood(stack, envoys, models, per_subject=4 * REQUEST_BUDGET, tag="requests")
    for subject, answers in by_subject.items():
        statuses = sorted(a.status_code for a in answers)
        assert set(statuses) <= {200, 429}, (subject, statuses, [a.text for a in answers if a.status_code not in (200, 429)])
        assert statuses.count(200) == REQUEST_BUDGET, (subject, statuses)
        refused = [a for a in answers if a.status_code == 429]
        assert all(error_code(a) == "rate_limited" and a.headers.get("Retry-After") for a in refused)
        # Every pod saw fewer requests than its local bucket holds: only the cluster refused.
        assert all("cluster_subject_requests" in a.json()["error"]["message"] for a in refused), subject


def test_three_envoys_allow_each_subject_exactly_its_character_budget(stack, envoys):
    by_subject = flood(stack, envoys, speech, per_subject=2 * (CHARACTER_BUDGET // len(SHORT_TEXT)), tag="chars")
    for subject, answers in by_subject.items():
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429}, (subject, statuses)
        allowed_chars = statuses.count(200) * len(SHORT_TEXT)
        assert allowed_chars == CHARACTER_BUDGET // len(SHORT_TEXT) * len(SHORT_TEXT), (subject, statuses)
        assert all("cluster_subject_characters" in a.json()["error"]["message"] for a in answers if a.status_code == 429)


def test_the_stock_openai_client_shares_one_character_budget_across_the_envoys(stack, envoys):
    """What OpenAI's own client sends by default (voice `alloy`, mp3), spread over the three
    Envoys: the plan's characters are spent once, wherever the requests land."""
    token = stack.token(sub=fresh_subject("openai"))
    clients = [openai.OpenAI(base_url=f"{e.url}/v1", api_key=token, max_retries=0, timeout=TIMEOUT) for e in envoys]
    allowed = CHARACTER_BUDGET // len(SHORT_TEXT)
    for n in range(allowed):
        audio = clients[n % 3].audio.speech.create(model="tts-1", voice="alloy", input=SHORT_TEXT).read()
        assert audio[:3] == b"ID3" or (audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0), "an mp3"
    with pytest.raises(openai.RateLimitError) as refused:
        clients[allowed % 3].audio.speech.create(model="tts-1", voice="alloy", input=SHORT_TEXT)
    assert refused.value.status_code == 429
    assert "cluster_subject_characters" in refused.value.response.json()["error"]["message"]


def test_a_subject_refused_by_the_cluster_keeps_its_local_tokens(stack, envoys):
    subject = fresh_subject("local")
    headers = bearer(stack, subject)
    with requests.Session() as s:
        spent = [models(s, envoys[1], headers).status_code for _ in range(REQUEST_BUDGET)]
        assert spent == [200] * REQUEST_BUDGET
        # Envoy 0 has seen nothing of this subject: its local bucket holds the whole budget. Had
        # the cluster's refusals taken from it, the last ones would name the local limit.
        refused = [models(s, envoys[0], headers) for _ in range(2 * REQUEST_BUDGET)]
    assert [a.status_code for a in refused] == [429] * (2 * REQUEST_BUDGET)
    limits = {a.json()["error"]["message"].split("(")[1].split(")")[0] for a in refused}
    assert limits == {"cluster_subject_requests"}
    assert int(refused[0].headers["X-RateLimit-Remaining"]) == 0
    assert int(refused[0].headers["Retry-After"]) >= 1
    stats = envoys[0].stats()
    assert stats.value("voxgate_rate_limited", bucket="cluster_subject_requests") >= 2 * REQUEST_BUDGET


def test_the_service_reports_its_decisions_and_readiness(rls, envoys):
    assert rls.ready()
    metrics = rls.metrics()
    assert metrics.value("voxgate_rls_storage_up") == 1
    assert metrics.value("voxgate_rls_requests_total", result="ok") > 0
    assert metrics.value("voxgate_rls_requests_total", result="over_limit") > 0


# Reserving mode: budgets large enough for blocks of a tenth of them.
RESERVE = 0.1
RESERVE_REQUESTS = 60
RESERVE_CHARACTERS = 90
RESERVE_SUBJECTS = 20
RESERVE_WORKERS = 2


def reserve_config(stack, rls_port: int) -> dict:
    return cluster_filter_config(stack, rls_port, requests=RESERVE_REQUESTS, characters=RESERVE_CHARACTERS,
                                 reserve=RESERVE)


@pytest.fixture(scope="module")
def reserving_envoys(stack, redis, tmp_path_factory):
    """Three Envoys reserving blocks of the budget, with their own voxgate-rls (same Redis)."""
    service = RateLimitService(tmp_path_factory.mktemp("rls-reserve"), reserve_config(stack, 0), redis,
                               storage_timeout_ms=RLS_TIMEOUT_MS // 2).start()
    started = [stack.new_envoy(reserve_config(stack, service.port), concurrency=RESERVE_WORKERS,
                               rls_port=service.port).start() for _ in range(3)]
    try:
        yield started
    finally:
        for envoy in started:
            envoy.stop()
        service.stop()


def cluster_count(envoy, result: str) -> int:
    try:
        return int(envoy.stats().value("voxgate_cluster", result=result))
    except KeyError:  # a counter Envoy has not created yet: nothing counted
        return 0


def cluster_calls(envoys) -> int:
    return sum(cluster_count(e, r) for e in envoys for r in ("allowed", "over_limit", "failed"))


def assert_within_the_reserve_bound(by_subject, budget: int, unit: int, envoys) -> list[int]:
    """Never more than the budget; at most a block per Envoy worker left unspent (the documented
    bound: Envoys × workers × reserve × capacity)."""
    block = int(budget * RESERVE)
    bound = len(envoys) * RESERVE_WORKERS * block
    allowed = []
    for subject, answers in by_subject.items():
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 429}, (subject, statuses)
        spent = statuses.count(200) * unit
        assert budget - bound <= spent <= budget, (subject, spent, budget, bound)
        allowed.append(spent)
    return allowed


def test_reserving_envoys_never_overshoot_and_ask_the_service_less_often(stack, reserving_envoys):
    calls_before = cluster_calls(reserving_envoys)
    by_subject = flood(stack, reserving_envoys, models, per_subject=2 * RESERVE_REQUESTS, tag="reserve",
                       count=RESERVE_SUBJECTS)
    allowed = assert_within_the_reserve_bound(by_subject, RESERVE_REQUESTS, 1, reserving_envoys)
    sent = RESERVE_SUBJECTS * 2 * RESERVE_REQUESTS
    calls = cluster_calls(reserving_envoys) - calls_before
    reserved = sum(cluster_count(e, "reserved") for e in reserving_envoys)
    spent = sum(cluster_count(e, "spent") for e in reserving_envoys)
    print(f"reserve {RESERVE}: allowed per subject {min(allowed)}..{max(allowed)} of {RESERVE_REQUESTS}; "
          f"{calls} calls for {sent} requests, {reserved} admitted from reserved blocks, "
          f"{spent} refused from what the service said was left")
    assert reserved > 0 and spent > 0
    # Synchronous, every one of these requests would have been a call.
    assert calls < sent / 4, (calls, sent)


def test_reserving_envoys_hold_the_character_budget(stack, reserving_envoys):
    by_subject = flood(stack, reserving_envoys, speech, per_subject=2 * RESERVE_CHARACTERS // len(SHORT_TEXT),
                       tag="reserve-chars", count=RESERVE_SUBJECTS // 2)
    allowed = assert_within_the_reserve_bound(by_subject, RESERVE_CHARACTERS, len(SHORT_TEXT), reserving_envoys)
    print(f"reserve {RESERVE}: characters allowed per subject {min(allowed)}..{max(allowed)} of {RESERVE_CHARACTERS}")


def test_the_stock_openai_client_through_reserving_envoys_gets_its_budget_then_a_rate_limit_error(
        stack, reserving_envoys):
    """OpenAI's own client with its defaults (voice `alloy`, mp3) over three reserving Envoys in
    turn, twice its budget: at most the plan's characters, at least that less the documented
    bound, and once spent the client raises its RateLimitError on every Envoy."""
    token = stack.token(sub=fresh_subject("openai-reserve"))
    clients = [openai.OpenAI(base_url=f"{e.url}/v1", api_key=token, max_retries=0, timeout=TIMEOUT)
               for e in reserving_envoys]
    budget_texts = RESERVE_CHARACTERS // len(SHORT_TEXT)
    unspent_texts = len(reserving_envoys) * RESERVE_WORKERS * int(RESERVE * RESERVE_CHARACTERS) // len(SHORT_TEXT)
    outcomes = []
    for n in range(2 * budget_texts):
        try:
            audio = clients[n % 3].audio.speech.create(model="tts-1", voice="alloy", input=SHORT_TEXT).read()
            assert audio[:3] == b"ID3" or (audio[0] == 0xFF and audio[1] & 0xE0 == 0xE0), "an mp3"
            outcomes.append("mp3")
        except openai.RateLimitError as refused:
            assert "cluster_subject_characters" in refused.response.json()["error"]["message"]
            assert int(refused.response.headers["Retry-After"]) >= 1
            outcomes.append("429")
    assert budget_texts - unspent_texts <= outcomes.count("mp3") <= budget_texts, outcomes
    assert outcomes[-3:] == ["429"] * 3, outcomes


@pytest.fixture(scope="module")
def mode_envoys(stack, rls):
    """One single-worker Envoy per failure mode (a `local_only` pause is kept per worker)."""
    started = {mode: stack.new_envoy(cluster_filter_config(stack, rls.port, mode, local_only_seconds=3600),
                                     concurrency=1, rls_port=rls.port).start()
               for mode in ("deny", "allow", "local_only")}
    try:
        yield started
    finally:
        for envoy in started.values():
            envoy.stop()


def timed(send) -> tuple[requests.Response, float]:
    start = time.monotonic()
    answer = send()
    return answer, time.monotonic() - start


class Load:
    """Requests from fresh subjects through `envoys`, four at a time, until stopped: the traffic
    a Redis failure meets. Every answer is kept with how long it took; an exception (a client
    timeout: a hung request) is kept too and fails the test."""

    def __init__(self, stack, envoys):
        self.answers: list[tuple[int, float]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        tokens = [bearer(stack, fresh_subject("load")) for _ in range(16)]
        self._threads = [threading.Thread(target=self._send, args=(envoys, tokens[n::4]), daemon=True)
                         for n in range(4)]
        for thread in self._threads:
            thread.start()

    def _send(self, envoys, tokens) -> None:
        with requests.Session() as s:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                try:
                    answer, seconds = timed(lambda: models(s, envoys[n % len(envoys)], tokens[n % len(tokens)]))
                    self.answers.append((answer.status_code, seconds))
                except BaseException as error:  # noqa: BLE001 - kept for the assertion
                    self.errors.append(error)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * TIMEOUT)


def test_redis_killed_and_restarted_each_mode_behaves_as_documented(stack, redis, rls, mode_envoys):
    subjects = {mode: fresh_subject(mode) for mode in mode_envoys}
    headers = {mode: bearer(stack, subject) for mode, subject in subjects.items()}
    load = Load(stack, [mode_envoys["deny"], mode_envoys["allow"]])
    with requests.Session() as s:
        for mode, envoy in mode_envoys.items():
            assert [models(s, envoy, headers[mode]).status_code for _ in range(2)] == [200, 200]

        redis.kill()
        deny = [timed(lambda: models(s, mode_envoys["deny"], headers["deny"])) for _ in range(3)]
        assert [(a.status_code, error_code(a), a.headers.get("Retry-After")) for a, _ in deny] == \
            [(503, "rate_limit_unavailable", "1")] * 3
        allow = [models(s, mode_envoys["allow"], headers["allow"]).status_code for _ in range(2)]
        assert allow == [200, 200], "allow lets requests through a failed tier"
        local_only = [models(s, mode_envoys["local_only"], headers["local_only"]) for _ in range(4)]
        # 2 before and 3 now fill the local bucket of 5; the 4th is refused by it, locally.
        assert [a.status_code for a in local_only] == [200, 200, 200, 429]
        assert "(subject_requests)" in local_only[3].json()["error"]["message"]
        failed = mode_envoys["local_only"].stats().value("voxgate_cluster", result="failed")
        assert failed == 1, "local_only asked once, then stopped asking"
        assert not rls.ready()
        assert rls.metrics().value("voxgate_rls_storage_up") == 0

        redis.start()
        deadline = time.monotonic() + 20
        while not rls.ready():
            assert time.monotonic() < deadline, "voxgate-rls did not see Redis come back"
            time.sleep(0.1)
        # The deny subject had 2 counted before the outage and nothing during it: 3 more.
        after = [models(s, mode_envoys["deny"], headers["deny"]).status_code for _ in range(REQUEST_BUDGET)]
        assert after == [200, 200, 200, 429, 429]
    load.stop()
    assert not load.errors, load.errors[:3]
    statuses = {status for status, _ in load.answers}
    assert statuses <= {200, 429, 503} and 503 in statuses and 200 in statuses, statuses
    for answer, seconds in deny:
        print(f"deny with Redis down: {answer.status_code} in {seconds * 1000:.0f} ms")
    slowest = max(seconds for _, seconds in load.answers)
    print(f"{len(load.answers)} requests under load across the failure, slowest {slowest * 1000:.0f} ms")


def test_the_service_killed_and_restarted_fails_closed_then_resumes_the_counts(stack, redis, rls, mode_envoys):
    subject = fresh_subject("rls-restart")
    headers = bearer(stack, subject)
    envoy = mode_envoys["deny"]
    with requests.Session() as s:
        assert [models(s, envoy, headers).status_code for _ in range(3)] == [200, 200, 200]
        rls.kill()
        down = [models(s, envoy, headers) for _ in range(3)]
        assert [(a.status_code, error_code(a)) for a in down] == [(503, "rate_limit_unavailable")] * 3
        rls.start()
        assert [models(s, envoy, headers).status_code for _ in range(3)] == [200, 200, 429]


def test_the_service_killed_allow_passes_and_local_only_keeps_the_local_buckets(stack, redis, rls):
    envoys = {mode: stack.new_envoy(cluster_filter_config(stack, rls.port, mode, local_only_seconds=3600),
                                    concurrency=1, rls_port=rls.port).start()
              for mode in ("allow", "local_only")}
    headers = {mode: bearer(stack, fresh_subject(f"rls-{mode}")) for mode in envoys}
    try:
        with requests.Session() as s:
            for mode, envoy in envoys.items():
                assert [models(s, envoy, headers[mode]).status_code for _ in range(2)] == [200, 200]
            rls.kill()
            allow = [models(s, envoys["allow"], headers["allow"]).status_code for _ in range(2)]
            assert allow == [200, 200], "allow lets requests through when the service is gone"
            local_only = [models(s, envoys["local_only"], headers["local_only"]) for _ in range(4)]
            # 2 before and 3 now fill the local bucket of 5; the 4th is refused by it, locally.
            assert [a.status_code for a in local_only] == [200, 200, 200, 429]
            assert "(subject_requests)" in local_only[3].json()["error"]["message"]
            assert envoys["local_only"].stats().value("voxgate_cluster", result="failed") == 1
            assert envoys["allow"].stats().value("voxgate_cluster", result="failed") == 2, \
                "allow asks again on every request"
            rls.start()
            # The local bucket counted all four, the tier up or not: one of its five is left.
            after = [models(s, envoys["allow"], headers["allow"]) for _ in range(3)]
            assert [a.status_code for a in after] == [200, 429, 429]
            assert "(subject_requests)" in after[1].json()["error"]["message"]
            assert envoys["allow"].stats().value("voxgate_cluster", result="allowed") == 3, "asked again"
    finally:
        for envoy in envoys.values():
            envoy.stop()


# A rate-limit service that answers whatever a test asks it to: raw bytes, an error, or nothing.
OK = b"\x08\x01"
HOSTILE_ANSWERS = {
    "garbage": b"\xff\xff\xff\xff",
    "wrong wire type": b"\x0a\x03abc",
    "oversized": b"\x7a" + bytes([0x80, 0xb5, 0x18]) + b"x" * 400_000,
    "unknown code": b"",
    "invented code": b"\x08\x07",
}


class HostileService:
    def __init__(self, port: int):
        self.port = port
        self.answer: bytes | None = OK
        self.error: grpc.StatusCode | None = None
        self.hang_seconds = 0.0
        self.calls = 0
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.ratelimit.v3.RateLimitService",
            {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(self._answer)})
        self.server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[handler],
                                  options=[("grpc.max_send_message_length", 1 << 20)])
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def _answer(self, request: bytes, context) -> bytes:
        self.calls += 1
        if self.hang_seconds:
            time.sleep(self.hang_seconds)
        if self.error is not None:
            context.abort(self.error, "hostile")
        return self.answer

    def close(self) -> None:
        self.server.stop(0)


@pytest.fixture(scope="module")
def hostile():
    service = HostileService(free_port())
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def hostile_envoy(stack, hostile):
    envoy = stack.new_envoy(cluster_filter_config(stack, hostile.port), rls_port=hostile.port).start()
    try:
        yield envoy
    finally:
        envoy.stop()


def test_a_hostile_service_fails_closed_and_never_traps_the_filter(stack, hostile, hostile_envoy):
    headers = bearer(stack, fresh_subject("hostile"))
    with requests.Session() as s:
        for case, answer in HOSTILE_ANSWERS.items():
            hostile.answer = answer
            response = models(s, hostile_envoy, headers)
            assert (response.status_code, error_code(response)) == (503, "rate_limit_unavailable"), case
        hostile.answer = OK
        hostile.error = grpc.StatusCode.INTERNAL
        assert models(s, hostile_envoy, headers).status_code == 503, "a gRPC error status"
        hostile.error = None
        hostile.hang_seconds = 3 * RLS_TIMEOUT_MS / 1000
        hung = models(s, hostile_envoy, headers)
        assert (hung.status_code, error_code(hung)) == (503, "rate_limit_unavailable"), "a hung service"
        hostile.hang_seconds = 0
        hostile.answer = b"\x08\x02"
        over = models(s, hostile_envoy, headers)
        assert (over.status_code, over.headers.get("Retry-After")) == (429, "1"), "OVER_LIMIT without statuses"
        hostile.answer = OK
        # Still the same VM, still deciding: nothing above trapped it, and every refusal gave
        # back its local tokens (the plan holds 5; more than 5 requests were refused above).
        assert [models(s, hostile_envoy, headers).status_code for _ in range(REQUEST_BUDGET)] == [200] * REQUEST_BUDGET
    assert hostile.calls >= len(HOSTILE_ANSWERS) + 3 + REQUEST_BUDGET
    assert "panicked" not in hostile_envoy.log_text()
