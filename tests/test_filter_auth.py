"""End to end: the filter's authentication decisions, in the real Envoy in front of the real sidecar.

Every refused case checks status, error code, the RFC 6750 challenge and that the sidecar never
saw the request (Envoy's access log records no upstream host for its unique path). Each test uses its own subject and its own
loopback source address (Envoy keys the failed-auth bucket by client address), so tests do not
drain each other's buckets.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from requests.adapters import HTTPAdapter

from tools import devkeys

MODELS = "/v1/models"
SPEECH = "/v1/audio/speech"
VOICE = "en_US-joe-medium"
TIMEOUT = 60

_source_hosts = itertools.count(1)


class _SourceAddress(HTTPAdapter):
    def __init__(self, address: str):
        self._address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self._address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_address() -> str:
    """A loopback address no other test uses."""
    n = next(_source_hosts)
    return f"127.0.{10 + n // 250}.{1 + n % 250}"


def client(address: str | None = None) -> requests.Session:
    """A session whose connections come from `address`, by default one no other test uses."""
    session = requests.Session()
    session.mount("http://", _SourceAddress(address or client_address()))
    return session


def subject() -> str:
    return f"auth-{uuid.uuid4().hex[:12]}"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def error_of(response: requests.Response) -> dict:
    assert response.headers.get("content-type") == "application/json", response.text
    return response.json()["error"]


def unique(route_prefix: str) -> str:
    """A path of `route_prefix`'s route that no other request uses, to find in the access log.
    A speech API is served at its own path only, so there the query string makes it unique (the
    access log leaves the query out, so the probe is matched by its request id)."""
    if route_prefix == SPEECH:
        return f"{SPEECH}?probe={uuid.uuid4().hex}"
    return f"{route_prefix}/probe-{uuid.uuid4().hex}"


def probe_headers(path: str) -> dict:
    """The request id that finds `path`'s request in the access log."""
    return {"x-request-id": path}


def upstreams_of(envoy, paths: list[str]) -> dict:
    """path -> the upstream host Envoy's access log recorded for the request sent to it with
    `probe_headers(path)` (None: the filter answered).

    Envoy writes its access log every 10 s (`--file-flush-interval-msec`), so this waits once for
    a whole batch of paths rather than once per request.
    """
    deadline = time.monotonic() + 15
    while True:
        entries = {e.get("request_id"): e for e in envoy.access_log()}
        if all(p in entries for p in paths) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    missing = [p for p in paths if p not in entries]
    assert not missing, f"no access-log entry for {missing}"
    return {p: None if entries[p].get("upstream") in (None, "-", "") else entries[p]["upstream"] for p in paths}


def rsa_public_pem(stack) -> bytes:
    return stack.keys.key("RS256").private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def hostile_tokens(stack) -> dict:
    """name -> (token, status, code, RFC 6750 error)."""
    sub = subject()
    foreign_es256 = devkeys.generate_private("ES256")
    rsa_kid = stack.keys.key("RS256").kid
    return {
        "bad_signature": (stack.token(sub=sub, signing_key=foreign_es256), 401, "bad_signature", "invalid_token"),
        "expired": (stack.token(sub=sub, exp=-3600), 401, "token_expired", "invalid_token"),
        "not_yet_valid": (stack.token(sub=sub, nbf=3600), 401, "token_not_yet_valid", "invalid_token"),
        "wrong_issuer": (stack.token(sub=sub, iss="https://idp.attacker.example"), 401, "wrong_issuer",
                         "invalid_token"),
        "wrong_audience": (stack.token(sub=sub, aud="another-service"), 403, "wrong_audience",
                           "insufficient_scope"),
        "missing_scope": (stack.token(sub=sub, scope="profile"), 403, "insufficient_scope", "insufficient_scope"),
        "alg_none": (stack.token(sub=sub, alg="none", kid=stack.keys.key("ES256").kid), 401,
                     "token_malformed", "invalid_token"),
        "hs256_with_rsa_public_key": (stack.token(sub=sub, alg="HS256", kid=rsa_kid,
                                                  signing_key=rsa_public_pem(stack)),
                                      401, "algorithm_not_allowed", "invalid_token"),
        "garbage": ("not.a.jwt", 401, "token_malformed", "invalid_token"),
    }


CASES = ["bad_signature", "expired", "not_yet_valid", "wrong_issuer", "wrong_audience", "missing_scope",
         "alg_none", "hs256_with_rsa_public_key", "garbage"]


def test_no_token_is_401_with_a_bare_challenge(stack):
    response = client().get(stack.url + MODELS, timeout=TIMEOUT)
    assert response.status_code == 401
    assert error_of(response)["code"] == "token_missing"
    assert error_of(response)["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == 'Bearer realm="voxgate"'


@pytest.mark.parametrize("case", CASES)
def test_hostile_token_is_refused_with_its_reason(stack, case):
    token, status, code, rfc6750_error = hostile_tokens(stack)[case]
    response = client().post(stack.url + SPEECH, headers=bearer(token),
                             json={"model": "tts-1", "input": "Hello.", "voice": VOICE}, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["code"] == code
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="voxgate"')
    assert f'error="{rfc6750_error}"' in challenge
    assert token not in response.text


def test_refused_requests_never_reach_the_sidecar(stack):
    session = client()
    refused = [unique(MODELS)]
    assert session.get(stack.url + refused[0], headers=probe_headers(refused[0]), timeout=TIMEOUT).status_code == 401
    for token, status, _, _ in hostile_tokens(stack).values():
        refused.append(unique(SPEECH))
        response = session.post(stack.url + refused[-1], headers={**bearer(token), **probe_headers(refused[-1])},
                                json={"model": "tts-1", "input": "Hello.", "voice": VOICE}, timeout=TIMEOUT)
        assert response.status_code == status
    allowed = unique(MODELS)
    response = session.get(stack.url + allowed, headers={**bearer(stack.token(sub=subject())), **probe_headers(allowed)},
                           timeout=TIMEOUT)
    assert response.status_code == 404, "passed by the filter, unknown to the sidecar"
    upstreams = upstreams_of(stack.envoy, refused + [allowed])
    assert upstreams[allowed] is not None, "the access log names the upstream of a forwarded request"
    assert [p for p in refused if upstreams[p] is not None] == [], "refused requests reached the sidecar"


def test_max_lifetime_refuses_tokens_valid_for_too_long_before_the_sidecar(stack, envoy_factory):
    """`max_lifetime_seconds` (off in the default configuration) bounds `exp` less `iat`, else
    less `nbf`, else less now."""
    config = stack.filter_config()
    [dev] = [p for p in config["auth"]["providers"] if p["name"] == "dev"]
    dev["max_lifetime_seconds"] = 3600
    envoy = envoy_factory(config)
    never_expires = stack.token(sub=subject(), extra={"exp": 1e300})
    cases = [  # (token, passes)
        (stack.token(sub=subject(), iat=-60, exp=3000), True),
        (stack.token(sub=subject(), iat=-3000, exp=1800), False),
        (stack.token(sub=subject(), iat=None, nbf=-600, exp=2400), True),
        (stack.token(sub=subject(), iat=None, nbf=-600, exp=3300), False),
        (stack.token(sub=subject(), iat=None, exp=1800), True),
        (stack.token(sub=subject(), iat=None, exp=7200), False),
        (never_expires, False),
    ]
    session = client()
    paths = []
    for token, passes in cases:
        paths.append(unique(MODELS))
        response = session.get(envoy.url + paths[-1], headers={**bearer(token), **probe_headers(paths[-1])},
                               timeout=TIMEOUT)
        if passes:
            assert response.status_code == 404, "passed by the filter, unknown to the sidecar"
            continue
        assert response.status_code == 401, response.text
        assert error_of(response)["code"] == "token_lifetime_too_long"
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    upstreams = upstreams_of(envoy, paths)
    assert [upstreams[path] is not None for path in paths] == [passes for _, passes in cases]
    assert client().get(stack.url + MODELS, headers=bearer(never_expires), timeout=TIMEOUT).status_code == 200, \
        "without the bound, the same token passes"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "RS256", "PS256", "EdDSA", "HS256"])
def test_valid_token_of_every_algorithm_passes(stack, alg):
    response = client().get(stack.url + MODELS, headers=bearer(stack.token(alg=alg, sub=subject())),
                            timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.json()["data"]


def test_valid_token_gets_speech(stack):
    response = client().post(stack.url + SPEECH, headers=bearer(stack.token(sub=subject())),
                             json={"model": "tts-1", "input": "Hello from behind the gate.", "voice": VOICE,
                                   "response_format": "wav"}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.content[:4] == b"RIFF" and response.content[8:12] == b"WAVE"
    assert len(response.content) > 10_000
    assert "x-ratelimit-limit" in response.headers


def test_token_in_another_scheme_is_refused(stack):
    response = client().get(stack.url + MODELS, headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"},
                            timeout=TIMEOUT)
    assert response.status_code == 401
    assert error_of(response)["code"] == "auth_scheme_unsupported"


def test_route_without_auth_needs_no_token(stack):
    response = client().get(stack.url + "/healthz", timeout=TIMEOUT)
    assert response.status_code == 200


def test_an_address_sending_bad_tokens_gets_429_for_them_while_its_valid_tokens_pass(stack):
    """After `failed_auth.capacity` (20) failures the address's forged tokens get 429; a fresh valid
    token from it still passes: the address may be a gateway many clients share."""
    session = client()
    capacity = stack.filter_config()["auth"]["failed_auth"]["capacity"]
    forged = stack.token(sub=subject(), signing_key=devkeys.generate_private("ES256"))
    statuses = [session.get(stack.url + MODELS, headers=bearer(forged), timeout=TIMEOUT).status_code
                for _ in range(capacity)]
    assert statuses == [401] * capacity
    response = session.get(stack.url + MODELS, headers=bearer(forged), timeout=TIMEOUT)
    assert response.status_code == 429
    assert error_of(response)["code"] == "auth_failures"
    assert 1 <= int(response.headers["retry-after"]) <= 2
    assert session.get(stack.url + MODELS, headers=bearer(stack.token(sub=subject())),
                       timeout=TIMEOUT).status_code == 200


def test_a_forged_token_flood_from_one_gateway_address_never_locks_out_valid_users(stack):
    """Attackers and users behind one address (an ingress gateway): while four connections flood it
    with forged tokens, every user with a fresh valid token gets 200."""
    address = client_address()
    foreign = devkeys.generate_private("ES256")
    forged_tokens = [stack.token(sub=subject(), signing_key=foreign) for _ in range(40)]
    stop = threading.Event()
    refused: list[int] = []

    def flood():
        session = client(address)
        while not stop.is_set():
            for token in forged_tokens:
                refused.append(session.get(stack.url + MODELS, headers=bearer(token), timeout=TIMEOUT).status_code)

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while refused.count(429) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        users = client(address)
        statuses = [users.get(stack.url + MODELS, headers=bearer(stack.token(sub=subject(), alg=alg)),
                              timeout=TIMEOUT).status_code
                    for alg in ["ES256", "RS256", "HS256"] * 10]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert statuses == [200] * len(statuses)
    assert set(refused) <= {401, 429} and refused.count(429) >= 20


def test_refusing_before_verification_refuses_even_a_valid_token_of_an_exhausted_address(stack, envoy_factory):
    """`failed_auth.refuse_before_verification`, for deployments where every client has its own
    address: once the bucket is empty, no new token of that address is checked."""
    config = stack.filter_config()
    config["auth"]["failed_auth"] = {"capacity": 3, "refill_per_second": 0.01, "refuse_before_verification": True}
    envoy = envoy_factory(config)
    session = client()
    forged = stack.token(sub=subject(), signing_key=devkeys.generate_private("ES256"))
    assert [session.get(envoy.url + MODELS, headers=bearer(forged), timeout=TIMEOUT).status_code
            for _ in range(3)] == [401] * 3
    response = session.get(envoy.url + MODELS, headers=bearer(stack.token(sub=subject())), timeout=TIMEOUT)
    assert response.status_code == 429
    assert error_of(response)["code"] == "auth_failures"
    # Another address is unaffected.
    assert client().get(envoy.url + MODELS, headers=bearer(stack.token(sub=subject())),
                        timeout=TIMEOUT).status_code == 200
