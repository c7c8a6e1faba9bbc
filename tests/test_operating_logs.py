"""End to end: what Envoy's access log and the sidecar's log say about each request.

Every answer the filter makes is one access-log entry naming its decision, the limit that
refused it (`subject_requests`, `auth_failures`, …), the client address Envoy trusts, the
verified subject and the request id the client got back; the sidecar's lines of a request carry
the same id. A path whose text hides behind an encoded `?` is logged without it.
"""

from __future__ import annotations

import time
import uuid

import requests

from gate_checks import LogCursor, SourceAddresses
from harness import PIPER_VOICE
from hostile_cases import MARKER
from test_filter_ratelimit import _SourceAddress
from tools import devkeys

MODELS = "/v1/models"
TIMEOUT = 60
FAILED_AUTH_CAPACITY = 2


def config(stack) -> dict:
    config = stack.filter_config(metered_metadata=True)
    config["rate_limits"]["plans"]["single"] = {"requests": {"capacity": 1, "refill_per_second": 0}}
    config["rate_limits"].pop("global", None)
    config["auth"]["failed_auth"] = {"capacity": FAILED_AUTH_CAPACITY, "refill_per_second": 0.001}
    return config


def from_address(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _SourceAddress(address))
    return session


def test_each_answer_names_decision_limit_client_subject_and_request_id(stack, envoy_factory):
    envoy = envoy_factory(config(stack))
    address = SourceAddresses(231).next()
    subject = f"logs-{uuid.uuid4().hex[:10]}"
    token = stack.token(sub=subject, plan="single")
    with from_address(address) as session:
        allowed = session.get(envoy.url + MODELS, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
        chosen = f"ops-{uuid.uuid4()}"
        limited = session.get(envoy.url + MODELS, timeout=TIMEOUT,
                              headers={"Authorization": f"Bearer {token}", "x-request-id": chosen})
        forged = stack.token(sub=subject, signing_key=devkeys.generate_private("ES256"))
        failures = [session.get(envoy.url + MODELS, headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT)
                    for _ in range(FAILED_AUTH_CAPACITY + 1)]
    assert allowed.status_code == 200
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert [r.status_code for r in failures] == [401] * FAILED_AUTH_CAPACITY + [429]
    assert failures[-1].json()["error"]["code"] == "auth_failures"

    assert limited.headers["x-request-id"] == chosen, "the client's own request id is kept and returned"
    responses = [allowed, limited, *failures]
    ids = [r.headers["x-request-id"] for r in responses]
    assert len(set(ids)) == len(ids), "Envoy generated an id for every request that had none"
    entries = envoy.access_log_by_request_id(ids)

    logged = [(entries[i]["status"], entries[i]["decision"], entries[i]["limit"], entries[i]["subject"]) for i in ids]
    assert logged == [
        (200, "allowed", "-", subject),
        (429, "rate_limited", "subject_requests", subject),
        (401, "bad_signature", "-", None),
        (401, "bad_signature", "-", None),
        (429, "auth_failures", "auth_failures", None),
    ]
    for i in ids:
        assert entries[i]["client"] == address
        assert (entries[i]["route"], entries[i]["path"]) == ("/v1/", MODELS)


def test_sidecar_lines_carry_the_request_id(stack):
    log = LogCursor(stack.sidecar.log_path)
    request_id = f"ops-{uuid.uuid4()}"
    response = requests.post(
        f"{stack.url}/v1/audio/speech", timeout=TIMEOUT,
        headers={"Authorization": f"Bearer {stack.token(sub='logs-sidecar')}", "x-request-id": request_id},
        json={"model": "tts-1", "input": "Hello there.", "voice": PIPER_VOICE, "response_format": "wav"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 10
    seen = ""
    while "synthesis finished" not in seen:
        assert time.monotonic() < deadline, f"no synthesis line in the sidecar log: {seen[-500:]}"
        time.sleep(0.2)
        seen += log.new_text()
    finished = [line for line in seen.splitlines() if "synthesis finished" in line]
    assert any(f"request_id={request_id}" in line for line in finished), finished


def test_text_after_an_encoded_question_mark_is_not_logged(stack):
    request_id = f"ops-{uuid.uuid4()}"
    response = requests.get(f"{stack.url}/api/tts%3Ftext=A%20{MARKER}%20in%20the%20path", timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {stack.token(sub='logs-path')}",
                                     "x-request-id": request_id})
    assert response.status_code == 400
    entry = stack.envoy.access_log_by_request_id([request_id])[request_id]
    assert entry["path"] == "/api/tts"
    assert MARKER not in stack.envoy.params.access_log.read_text().lower()
