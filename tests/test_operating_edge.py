"""End to end: real NGINX (envoy/nginx/voxgate-edge.conf.in) in front of a real Envoy that trusts
one proxy hop, in front of the session's sidecar.

The edge refuses a flood from one address with its own 429 in voxgate's error shape; voxgate's
429s pass through it with their Retry-After and rate-limit headers; voxgate's per-address
anonymous limit counts the real client (from X-Forwarded-For), not the edge, and a client
cannot choose its address by sending X-Forwarded-For itself; requests held open from one address
meet the edge's connection limit (`limit_conn`), and give their slots back when they close.
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest
import requests

from gate_checks import SourceAddresses
from harness.nginx import Nginx
from hostile_cases import MARKER
from test_filter_ratelimit import _SourceAddress

TIMEOUT = 60
ANONYMOUS_CAPACITY = 5
EDGE_BURST = 40
RATE_LIMIT_HEADERS = ("retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


@pytest.fixture(scope="module")
def edge(stack, tmp_path_factory):
    config = stack.filter_config(metered_metadata=True)
    config["rate_limits"]["anonymous"] = {"requests": {"capacity": ANONYMOUS_CAPACITY, "refill_per_second": 0.001}}
    config["rate_limits"].pop("global", None)
    envoy = stack.new_envoy(config)
    envoy.params.xff_trusted_hops = 1
    envoy.start()
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), envoy.port)
    try:
        nginx.start()
        yield envoy, nginx
    finally:
        nginx.stop()
        envoy.stop()


ADDRESSES = SourceAddresses(233)


def session_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _SourceAddress(address))
    return session


def test_voxgate_refusals_pass_the_edge_and_a_flood_meets_the_edge_limit(edge):
    envoy, nginx = edge
    with session_from(ADDRESSES.next()) as session:
        answers = [session.get(nginx.url + "/healthz", timeout=TIMEOUT) for _ in range(EDGE_BURST + 20)]
    codes = [a.status_code if a.status_code == 200 else a.json()["error"]["code"] for a in answers]
    assert codes[:ANONYMOUS_CAPACITY + 1] == [200] * ANONYMOUS_CAPACITY + ["rate_limited"]
    assert set(codes[ANONYMOUS_CAPACITY:]) == {"rate_limited", "edge_rate_limited"}
    assert codes.count("edge_rate_limited") >= 10, codes

    voxgate_429 = answers[ANONYMOUS_CAPACITY]
    assert voxgate_429.status_code == 429
    assert all(h in voxgate_429.headers for h in RATE_LIMIT_HEADERS), dict(voxgate_429.headers)
    assert voxgate_429.headers["x-ratelimit-remaining"] == "0"
    assert int(voxgate_429.headers["retry-after"]) > 1, "voxgate's own Retry-After, not the edge's"

    edge_429 = answers[codes.index("edge_rate_limited")]
    assert edge_429.status_code == 429
    assert edge_429.headers["content-type"] == "application/json"
    assert edge_429.headers["retry-after"] == "1"
    error = edge_429.json()["error"]
    assert error["type"] == "rate_limit_error" and error["message"]


def test_anonymous_limits_count_the_real_client_address(edge):
    envoy, nginx = edge
    for address in (ADDRESSES.next(), ADDRESSES.next()):
        with session_from(address) as session:
            statuses = [session.get(nginx.url + "/healthz", timeout=TIMEOUT,
                                    headers={"X-Forwarded-For": "198.51.100.7"}).status_code
                        for _ in range(ANONYMOUS_CAPACITY + 2)]
            request_id = f"edge-{uuid.uuid4()}"
            last = session.get(nginx.url + "/healthz", headers={"x-request-id": request_id}, timeout=TIMEOUT)
        assert statuses == [200] * ANONYMOUS_CAPACITY + [429, 429], address
        assert last.headers["x-request-id"] == request_id
        entry = envoy.access_log_by_request_id([request_id])[request_id]
        assert (entry["client"], entry["decision"], entry["limit"]) == (address, "rate_limited", "anonymous_requests")


def test_the_edge_logs_one_request_id_with_voxgate_and_no_text(edge, stack):
    envoy, nginx = edge
    with session_from(ADDRESSES.next()) as session:
        answer = session.get(f"{nginx.url}/api/tts?text=A%20{MARKER}%20at%20the%20edge", timeout=TIMEOUT,
                             headers={"Authorization": f"Bearer {stack.token(sub='edge-logs')}"})
    assert answer.status_code == 200
    request_id = answer.headers["x-request-id"]
    assert envoy.access_log_by_request_id([request_id])[request_id]["path"] == "/api/tts"
    deadline = time.monotonic() + 10
    while request_id not in nginx.access_log_text():
        assert time.monotonic() < deadline, "the edge did not log the request id voxgate logged"
        time.sleep(0.25)
    assert '"path":"/api/tts"' in nginx.access_log_text()
    assert MARKER not in nginx.access_log_text().lower()


EDGE_CONNECTIONS = 16
# Unmetered through voxgate (401 token_missing), so only the edge can answer it with 429.
PROBE = "/v1/models"


def _held_request(nginx, address: str) -> socket.socket:
    """A connection from `address` whose request is in progress at the edge: its headers are
    sent and its body is still to come, so NGINX holds it (reading the body) and counts it."""
    connection = socket.create_connection(("127.0.0.1", nginx.port), timeout=TIMEOUT, source_address=(address, 0))
    connection.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 1000\r\n\r\n{\"input\":")
    return connection


def test_open_connections_from_one_address_meet_the_edge_connection_limit(edge):
    envoy, nginx = edge
    address = ADDRESSES.next()
    held = [_held_request(nginx, address) for _ in range(EDGE_CONNECTIONS)]
    try:
        with session_from(address) as session:
            deadline = time.monotonic() + 10
            while True:
                answer = session.get(nginx.url + PROBE, timeout=TIMEOUT)
                if answer.status_code == 429:
                    break
                assert time.monotonic() < deadline, "NGINX never counted the held connections"
                time.sleep(0.1)
        assert answer.json()["error"]["code"] == "edge_rate_limited"
        assert answer.headers["retry-after"] == "1"
        with session_from(ADDRESSES.next()) as other:
            assert other.get(nginx.url + PROBE, timeout=TIMEOUT).status_code == 401, "another address passes"
        deadline = time.monotonic() + 10
        while "limiting connections by zone \"voxgate_connections\"" not in nginx.error_log_text():
            assert time.monotonic() < deadline, "the refusal was not the connection limit's"
            time.sleep(0.1)
    finally:
        for connection in held:
            connection.close()
    with session_from(address) as session:
        deadline = time.monotonic() + 10
        while session.get(nginx.url + PROBE, timeout=TIMEOUT).status_code == 429:
            assert time.monotonic() < deadline, "the connection slots were not given back"
            time.sleep(0.1)
