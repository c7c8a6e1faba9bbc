"""End to end: an HS256 secret kept out of the filter configuration. The dev provider's `oct`
key names a variable of the VM's environment (`k_env`) instead of carrying `k`; Envoy passes
that variable from its own environment (`vm_config.environment_variables.host_env_keys`, as
Istio's `vmConfig.env` with `valueFrom: HOST` does from a Kubernetes Secret)."""

from __future__ import annotations

import copy
import secrets
import uuid

import pytest
import requests

SECRET_ENV = "VOXGATE_HS256_SECRET"
TIMEOUT = 30


def with_secret_from_env(config: dict) -> tuple[dict, str]:
    """The configuration with the dev `oct` key's `k` replaced by `k_env`, and that `k`."""
    config = copy.deepcopy(config)
    dev = next(p for p in config["auth"]["providers"] if p["name"] == "dev")
    [oct_key] = [key for key in dev["jwks"]["keys"] if key["kty"] == "oct"]
    secret = oct_key.pop("k")
    oct_key["k_env"] = SECRET_ENV
    return config, secret


@pytest.fixture(scope="module")
def secret_config(stack):
    return with_secret_from_env(stack.filter_config())


@pytest.fixture(scope="module")
def gate(stack, secret_config):
    config, secret = secret_config
    envoy = stack.new_envoy(config, extra_env={SECRET_ENV: secret}).start()
    try:
        yield envoy
    finally:
        envoy.stop()


def get(envoy, token: str) -> requests.Response:
    return requests.get(envoy.url + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)


def test_the_configuration_holds_no_secret(secret_config):
    config, secret = secret_config
    assert secret not in str(config)


def test_a_token_signed_with_the_secret_from_the_environment_is_accepted(stack, gate):
    assert get(gate, stack.token(alg="HS256", sub=f"hs-{uuid.uuid4().hex[:8]}")).status_code == 200


def test_a_token_signed_with_another_secret_is_refused(stack, gate):
    forged = stack.token(alg="HS256", sub="mallory", signing_key=secrets.token_bytes(32))
    answer = get(gate, forged)
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, "bad_signature")


def test_other_algorithms_of_the_provider_still_verify(stack, gate):
    assert get(gate, stack.token(alg="ES256", sub=f"es-{uuid.uuid4().hex[:8]}")).status_code == 200


def test_without_the_variable_in_envoys_environment_the_configuration_is_refused(stack, secret_config):
    config, _ = secret_config
    result = stack.new_envoy(config).validate()
    assert result.returncode != 0
    assert "auth.providers[0].jwks.keys" in result.stdout + result.stderr
    assert "k_env" in result.stdout + result.stderr
