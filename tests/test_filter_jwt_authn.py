"""End to end: a provider that trusts Envoy's own `jwt_authn` filter, placed before voxgate.

`jwt_authn` verifies the token natively and leaves its payload in the stream's dynamic metadata
(`payload_in_metadata`, keyed by the issuer as Istio's RequestAuthentication does); voxgate
reads it and applies its own rules (audience, scopes, lifetime bound, plan, forwarding) with no
signature work. `jwt_authn` here lets a failed token through (`allow_missing_or_failed`), so
what it did not verify reaches voxgate, which must refuse it.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from tools import devkeys

MESH_ISSUER = "https://mesh.example/jwt"
MODELS = "/v1/models"
TIMEOUT = 30


@pytest.fixture(scope="module")
def mesh(stack):
    config = stack.filter_config(metered_metadata=True)
    config["auth"]["providers"].append({
        "name": "mesh", "issuer": MESH_ISSUER, "audiences": ["voxgate"], "max_lifetime_seconds": 3600,
        "jwt_authn": {"payload_in_metadata": MESH_ISSUER}})
    jwt_authn = {
        "providers": {"mesh": {
            "issuer": MESH_ISSUER,
            "local_jwks": {"inline_string": json.dumps(stack.keys.jwks(include_hmac=False))},
            "payload_in_metadata": MESH_ISSUER,
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": [
            {"provider_name": "mesh"}, {"allow_missing_or_failed": {}}]}}}],
    }
    envoy = stack.new_envoy(config, jwt_authn=jwt_authn).start()
    try:
        yield envoy
    finally:
        envoy.stop()


def get(envoy, path: str = MODELS, token: str | None = None, headers: dict | None = None) -> requests.Response:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(envoy.url + path, headers=headers, timeout=TIMEOUT)


def code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


def subject() -> str:
    return f"mesh-{uuid.uuid4().hex[:12]}"


def test_a_token_jwt_authn_verified_passes_with_its_subject_and_plan(stack, mesh):
    sub = subject()
    path = f"{MODELS}/probe-{uuid.uuid4().hex}"
    response = get(mesh, path, stack.token(iss=MESH_ISSUER, sub=sub, plan="pro"))
    assert response.status_code == 404, "passed by the filter, unknown to the sidecar"
    assert '100;w=20;name="subject_requests"' in response.headers["x-ratelimit-limit"], "charged to the pro plan"
    assert get(mesh, token=stack.token(iss=MESH_ISSUER, sub=subject())).status_code == 200
    deadline = time.monotonic() + 15
    while not [e for e in mesh.access_log() if e.get("path") == path] and time.monotonic() < deadline:
        time.sleep(0.25)
    [entry] = [e for e in mesh.access_log() if e.get("path") == path]
    assert entry["subject"] == sub


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_a_token_jwt_authn_did_not_verify_is_refused(stack, mesh, alg):
    forged = stack.token(iss=MESH_ISSUER, sub=subject(), alg=alg, signing_key=devkeys.generate_private(alg))
    response = get(mesh, token=forged)
    assert (response.status_code, code(response)) == (401, "token_unverified")
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    expired = stack.token(iss=MESH_ISSUER, sub=subject(), exp=-3600)
    assert code(get(mesh, token=expired)) == "token_unverified"


def test_voxgate_rules_apply_to_what_jwt_authn_verified(stack, mesh):
    cases = [
        (dict(aud="another-service"), 403, "wrong_audience"),
        (dict(scope="profile"), 403, "insufficient_scope"),
        (dict(exp=7200), 401, "token_lifetime_too_long"),
        (dict(sub="mesh\u202euser"), 401, "token_malformed"),
    ]
    for claims, status, expected in cases:
        response = get(mesh, token=stack.token(iss=MESH_ISSUER, **dict(dict(sub=subject()), **claims)))
        assert (response.status_code, code(response)) == (status, expected), claims


def test_headers_that_look_like_metadata_change_nothing(stack, mesh):
    payload = json.dumps({"iss": MESH_ISSUER, "sub": "admin", "aud": "voxgate", "scope": "tts",
                          "exp": int(time.time()) + 600})
    fake = {"envoy.filters.http.jwt_authn": payload, MESH_ISSUER.replace("/", "-").replace(":", ""): payload,
            "x-jwt-payload": payload, "x-envoy-dynamic-metadata": payload}
    response = get(mesh, headers=fake)
    assert (response.status_code, code(response)) == (401, "token_missing")


def test_tokens_of_a_provider_verified_in_the_filter_still_pass(stack, mesh):
    assert get(mesh, token=stack.token(sub=subject())).status_code == 200
