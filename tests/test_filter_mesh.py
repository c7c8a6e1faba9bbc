"""End to end: the filter chain of the Istio deployment (envoy/istio/), where Envoy withholds the
body from a Wasm filter that pauses at the headers, so the filter runs with
`hold_headers_for_body: false` and Envoy's buffer filter holds the headers before the router.

Every body and transport case of the hostile corpus goes through that chain with the answer it
gets from the standalone one, and a refused case must not even open a request to the sidecar:
Envoy's own count of upstream requests to the sidecar cluster moves only for the cases the
filter lets through. A valid body dripped in pieces still gets speech.
"""

from __future__ import annotations

import pytest

import rawhttp
from corpus_gate import EXCHANGE_TIMEOUT_S, Gate, assert_answer
from gate_checks import sidecar_requests, wasm_traps
from hostile_cases import CASES, TOKEN_HEADER, Kit, speech, speech_json

BODY_CASES = [c for c in CASES if not c.background and c.id.split("-")[0] in ("body", "transport")]
UPSTREAM_REQUESTS = "envoy_cluster_upstream_rq_total"


def upstream_requests(envoy) -> int:
    """Requests Envoy's router opened to the sidecar, whether or not they were answered."""
    return int(envoy.stats().value(UPSTREAM_REQUESTS, envoy_cluster_name="voxgate_sidecar"))


@pytest.fixture(scope="module")
def mesh_gate(stack):
    config = stack.filter_config()
    config["auth"]["token_header"] = TOKEN_HEADER
    envoy = stack.new_envoy(config, mesh=True).start()
    try:
        yield Gate(stack, envoy, Kit(stack, config), source_octet=78)
    finally:
        envoy.stop()


def test_the_corpus_has_body_cases_both_ways():
    assert len(BODY_CASES) >= 100
    assert any(c.forwarded for c in BODY_CASES) and any(not c.forwarded for c in BODY_CASES)


@pytest.mark.parametrize("case", BODY_CASES, ids=lambda c: c.id)
def test_body_case_gets_its_answer_and_opens_an_upstream_request_only_if_valid(mesh_gate, case):
    before = upstream_requests(mesh_gate.envoy), sidecar_requests(mesh_gate.stack.sidecar)
    response = mesh_gate.send(case)
    assert_answer(case, response)
    opened = upstream_requests(mesh_gate.envoy) - before[0]
    reached = sidecar_requests(mesh_gate.stack.sidecar) - before[1]
    assert (opened, reached) == (int(case.forwarded),) * 2, f"{case.id}: opened {opened}, answered {reached}"
    assert wasm_traps(mesh_gate.log.new_text()) == []


def test_a_dripped_valid_body_gets_speech(mesh_gate):
    request = speech(mesh_gate.kit, speech_json())
    head, body = request.split(b"\r\n\r\n", 1)
    pieces = [rawhttp.Piece(head + b"\r\n\r\n", 0.05)]
    pieces += [rawhttp.Piece(body[i:i + 9], 0.02) for i in range(0, len(body), 9)]
    before = upstream_requests(mesh_gate.envoy)
    response = rawhttp.exchange("127.0.0.1", mesh_gate.envoy.port, pieces,
                                source=mesh_gate.addresses.next(), timeout=EXCHANGE_TIMEOUT_S)
    assert response.status == 200, response.body[:300]
    assert response.header("content-type") == "audio/wav"
    assert response.body[:4] == b"RIFF" and len(response.body) > 10_000
    assert upstream_requests(mesh_gate.envoy) - before == 1
