"""End to end: the client address the per-address buckets are keyed by, through the real Envoy.

The filter reads the address Envoy derived for the request (`source.address`): the peer itself
by default, the trusted `X-Forwarded-For` entry when the listener trusts proxies in front of it
(`xff_num_trusted_hops`). Both the failed-auth and the anonymous bucket key it the same way: an
IPv6 address by its /64, an IPv4-mapped IPv6 address as its IPv4 address.
"""

from __future__ import annotations

import pytest
import requests

from tools import devkeys

MODELS = "/v1/models"
TIMEOUT = 30
CAPACITY = 3


@pytest.fixture(scope="module")
def behind_one_proxy(stack):
    """An Envoy that trusts one proxy in front of it, with a failed-auth bucket of 3."""
    config = stack.filter_config()
    config["auth"]["failed_auth"] = {"capacity": CAPACITY, "refill_per_second": 0.01}
    envoy = stack.new_envoy(config, xff_trusted_hops=1).start()
    try:
        yield envoy
    finally:
        envoy.stop()


def forged(stack) -> str:
    return stack.token(sub="mallory", signing_key=devkeys.generate_private("ES256"))


def get(envoy, token: str, forwarded_for: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    return requests.get(envoy.url + MODELS, headers=headers, timeout=TIMEOUT)


def code(response: requests.Response) -> str:
    return response.json()["error"]["code"]


def test_an_ipv6_client_rotating_within_its_64_stays_refused(stack, behind_one_proxy):
    token = forged(stack)
    for n in range(1, CAPACITY + 1):
        response = get(behind_one_proxy, token, f"2001:db8::{n}")
        assert (response.status_code, code(response)) == (401, "bad_signature")
    response = get(behind_one_proxy, token, f"2001:db8::{CAPACITY + 1}")
    assert (response.status_code, code(response)) == (429, "auth_failures")
    response = get(behind_one_proxy, token, "2001:db8::abcd:1234:5678:9abc")
    assert (response.status_code, code(response)) == (429, "auth_failures")
    # Another /64 is another client.
    response = get(behind_one_proxy, token, "2001:db8:0:1::1")
    assert (response.status_code, code(response)) == (401, "bad_signature")


def test_an_ipv4_mapped_address_is_its_ipv4_address(stack, behind_one_proxy):
    token = forged(stack)
    for _ in range(CAPACITY):
        assert get(behind_one_proxy, token, "198.51.100.44").status_code == 401
    response = get(behind_one_proxy, token, "::ffff:198.51.100.44")
    assert (response.status_code, code(response)) == (429, "auth_failures")


def test_the_trusted_hop_decides_not_the_entries_a_client_adds_before_it(stack, behind_one_proxy):
    token = forged(stack)
    for n in range(CAPACITY):
        assert get(behind_one_proxy, token, f"192.0.2.{n + 1}, 203.0.113.50").status_code == 401
    response = get(behind_one_proxy, token, "192.0.2.99, 203.0.113.50")
    assert (response.status_code, code(response)) == (429, "auth_failures")
    valid = stack.token(sub="client-address-valid")
    assert get(behind_one_proxy, valid, "203.0.113.51").status_code == 200


def test_without_trusted_hops_a_client_cannot_name_its_address(stack, envoy_factory):
    config = stack.filter_config()
    config["auth"]["failed_auth"] = {"capacity": CAPACITY, "refill_per_second": 0.01}
    envoy = envoy_factory(config)
    token = forged(stack)
    for n in range(CAPACITY):
        assert get(envoy, token, f"2001:db8:{n}::1").status_code == 401
    response = get(envoy, token, "198.51.100.200")
    assert (response.status_code, code(response)) == (429, "auth_failures")
