"""End to end: the `api_keys` provider through the real Envoy.

Keys are minted by tools/apikey.py; the configuration holds only their salted hashes, peppered
with a secret that reaches the filter through Envoy's environment (`vm_config.
environment_variables`), never through the plugin configuration.
"""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tools import apikey

MODELS = "/v1/models"
TIMEOUT = 60
PEPPER = "pepper-" + uuid.uuid4().hex
CONNECTIONS = 32
METERED_CAPACITY = 9


@pytest.fixture(scope="module")
def keys():
    return {name: apikey.new_key() for name in ("valid", "revoked", "reader", "metered")}


@pytest.fixture(scope="module")
def key_config(stack, keys):
    config = stack.filter_config(metered_metadata=True)
    config["auth"]["api_keys"] = {"pepper_env": apikey.PEPPER_ENV, "keys": [
        apikey.entry(keys["valid"], id="valid", subject="key-valid", pepper=PEPPER, plan="pro"),
        apikey.entry(keys["revoked"], id="revoked", subject="key-revoked", pepper=PEPPER, revoked=True),
        apikey.entry(keys["reader"], id="reader", subject="key-reader", pepper=PEPPER, scopes=("read",)),
        apikey.entry(keys["metered"], id="metered", subject="key-metered", pepper=PEPPER, plan="metered"),
    ]}
    config["rate_limits"]["plans"]["metered"] = {"requests": {"capacity": METERED_CAPACITY, "refill_per_second": 0}}
    config["rate_limits"].pop("global", None)
    return config


@pytest.fixture(scope="module")
def gate(stack, key_config):
    envoy = stack.new_envoy(key_config, extra_env={apikey.PEPPER_ENV: PEPPER}).start()
    try:
        yield envoy
    finally:
        envoy.stop()


def get(envoy, key: str, path: str = MODELS, header: str = "Authorization") -> requests.Response:
    value = f"Bearer {key}" if header == "Authorization" else key
    return requests.get(envoy.url + path, headers={header: value}, timeout=TIMEOUT)


def code(response) -> str:
    return response.json()["error"]["code"]


def test_a_valid_key_passes_with_its_plan(gate, keys):
    response = get(gate, keys["valid"])
    assert response.status_code == 200, response.text
    assert response.headers["x-ratelimit-limit"].split(",")[0] == "100", "the pro plan's request bucket"


@pytest.mark.parametrize("name, status, expected", [
    ("unknown", 401, "api_key_unknown"), ("revoked", 401, "api_key_revoked"), ("reader", 403, "insufficient_scope")])
def test_a_key_that_may_not_pass_is_refused_with_its_reason(gate, keys, name, status, expected):
    key = keys.get(name) or apikey.new_key()
    response = get(gate, key)
    assert (response.status_code, code(response)) == (status, expected)
    assert key not in response.text
    assert response.headers["www-authenticate"].startswith('Bearer realm="voxgate"')


def test_per_key_limits_are_exact_across_both_workers(gate, keys):
    barrier = threading.Barrier(CONNECTIONS)

    def one(_):
        with requests.Session() as session:
            barrier.wait(timeout=30)
            return session.get(gate.url + MODELS, headers={"Authorization": f"Bearer {keys['metered']}"},
                               timeout=TIMEOUT).status_code

    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        statuses = list(pool.map(one, range(CONNECTIONS)))
    assert (statuses.count(200), statuses.count(429)) == (METERED_CAPACITY, CONNECTIONS - METERED_CAPACITY)


def test_a_key_is_read_from_the_configured_token_header_too(stack, key_config, keys, envoy_factory):
    config = json.loads(json.dumps(key_config))
    config["auth"]["token_header"] = "x-api-key"
    envoy = stack.new_envoy(config, extra_env={apikey.PEPPER_ENV: PEPPER}).start()
    try:
        assert get(envoy, keys["valid"], header="x-api-key").status_code == 200
        assert code(get(envoy, apikey.new_key(), header="x-api-key")) == "api_key_unknown"
    finally:
        envoy.stop()


def test_jwts_still_pass_beside_keys(stack, gate):
    assert get(gate, stack.token(sub=f"jwt-{uuid.uuid4().hex[:8]}")).status_code == 200


def test_without_the_pepper_in_envoys_environment_the_configuration_is_refused(stack, key_config):
    result = stack.new_envoy(key_config).validate()
    assert result.returncode != 0
    assert "auth.api_keys.pepper_env" in result.stdout + result.stderr
