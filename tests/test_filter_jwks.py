"""End to end: a provider whose keys come from a remote JWKS, fetched by the filter through the
Envoy `jwks` cluster from a loopback endpoint. Keys rotate without restarting Envoy, and a failing
endpoint leaves the last good key set in use.

The Envoy here runs one worker, so "the filter has refreshed" is one VM's state, not a race
between workers that refresh at slightly different moments.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from harness.jwks_server import JWKS_PATH
from tools import devkeys

ISSUER = "https://idp.example"
AUDIENCE = "tts-service"
REFRESH_SECONDS = 10
TIMEOUT = 60


def corp_key():
    private = devkeys.generate_private("ES256")
    jwk = devkeys.public_jwk("ES256", private)
    jwk["kid"] = f"corp-{uuid.uuid4().hex[:8]}"
    return private, jwk


@pytest.fixture(scope="module")
def remote(stack, envoy_factory):
    first_private, first_jwk = corp_key()
    stack.jwks_server.set_status(200)
    stack.jwks_server.set_jwks({"keys": [first_jwk]})
    config = stack.filter_config()
    config["auth"]["providers"].append({
        "name": "corp", "issuer": ISSUER, "audiences": [AUDIENCE],
        "remote_jwks": {"cluster": "jwks", "authority": "idp.example", "path": JWKS_PATH,
                        "refresh_seconds": REFRESH_SECONDS, "timeout_ms": 1000},
    })
    envoy = envoy_factory(config, concurrency=1)
    yield envoy, (first_private, first_jwk)
    stack.jwks_server.set_status(200)


def corp_token(stack, private, jwk) -> str:
    return stack.token(signing_key=private, kid=jwk["kid"], iss=ISSUER, aud=AUDIENCE,
                       sub=f"corp-{uuid.uuid4().hex[:8]}")


def status_with(envoy, token: str) -> requests.Response:
    return requests.get(envoy.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)


def wait_for_status(envoy, token: str, status: int, seconds: float) -> requests.Response:
    deadline = time.monotonic() + seconds
    while True:
        response = status_with(envoy, token)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.25)


def fetch_counts(envoy) -> tuple[float, float]:
    stats = envoy.stats()
    ok = sum(s.value for s in stats.find("voxgate_jwks_fetch", provider="corp", result="ok"))
    failed = sum(s.value for s in stats.find("voxgate_jwks_fetch", provider="corp", result="failed"))
    return ok, failed


def test_remote_keys_rotate_without_restart_and_survive_a_failing_endpoint(stack, remote):
    envoy, (first_private, first_jwk) = remote
    first = corp_token(stack, first_private, first_jwk)
    response = wait_for_status(envoy, first, 200, 10)
    assert response.status_code == 200, response.text
    assert fetch_counts(envoy)[0] >= 1

    second_private, second_jwk = corp_key()
    second = corp_token(stack, second_private, second_jwk)
    refused = status_with(envoy, second)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unknown_key"

    stack.jwks_server.set_jwks({"keys": [second_jwk]})
    response = wait_for_status(envoy, second, 200, REFRESH_SECONDS + 5)
    assert response.status_code == 200, response.text
    withdrawn = status_with(envoy, first)
    assert withdrawn.status_code == 401, "a key withdrawn by the provider no longer vouches for its tokens"
    assert withdrawn.json()["error"]["code"] == "unknown_key"

    _, failed_before = fetch_counts(envoy)
    stack.jwks_server.set_status(503)
    deadline = time.monotonic() + REFRESH_SECONDS + 5
    while fetch_counts(envoy)[1] == failed_before and time.monotonic() < deadline:
        time.sleep(0.25)
    assert fetch_counts(envoy)[1] > failed_before, "the failing fetch is counted"
    assert status_with(envoy, corp_token(stack, second_private, second_jwk)).status_code == 200, \
        "the last good key set stays in use"
