"""End to end: the hostile-input corpus (tests/hostile_cases.py) through the real Envoy listener
in front of the real sidecar.

Each case gets its expected status and error code (Envoy's own answers too, in the same JSON
shape through its local_reply_config), from a loopback source address no other case used, so the
per-address failed-authentication bucket never decides a case. Around every case the sidecar's
own request counter must move by exactly the number of requests the filter lets through (0 for
every refused case), and Envoy's log must show no filter VM failing. The cases that wait on
Envoy's timeouts (stalled clients) run in the background meanwhile. Last, over the whole batch:
the sidecar answered exactly the forwarded cases, no spoofed identity was ever forwarded, no VM
trapped, the access log tells the filter's answers from Envoy's, and a valid request still gets
speech.

The module's Envoy is the default configuration plus a raw-token header (`x-api-token`), so
"a token in two places" can be sent.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import rawhttp
from corpus_gate import BACKGROUND_TIMEOUT_S, EXCHANGE_TIMEOUT_S, Gate, assert_answer
from gate_checks import sidecar_requests, wasm_traps
from hostile_cases import CASES, SPOOFED_SUBJECTS, TOKEN_HEADER, Kit, speech, speech_json

FOREGROUND = [c for c in CASES if not c.background]
BACKGROUND = [c for c in CASES if c.background]
ACCESS_LOG_WAIT_S = 20


@pytest.fixture(scope="module")
def gate(stack, envoy_factory):
    config = stack.filter_config()
    config["auth"]["token_header"] = TOKEN_HEADER
    envoy = envoy_factory(config)
    gate = Gate(stack, envoy, Kit(stack, config), source_octet=77)
    with ThreadPoolExecutor(max_workers=max(1, len(BACKGROUND))) as pool:
        gate.background = {case.id: pool.submit(gate.send, case) for case in BACKGROUND}
        yield gate


@pytest.mark.parametrize("case", FOREGROUND, ids=lambda c: c.id)
def test_hostile_request_gets_its_answer_and_reaches_the_sidecar_only_if_valid(gate, case):
    before = sidecar_requests(gate.stack.sidecar)
    response = gate.send(case)
    assert_answer(case, response)
    reached = sidecar_requests(gate.stack.sidecar) - before
    assert reached == int(case.forwarded), f"{case.id}: the sidecar answered {reached} request(s)"
    assert wasm_traps(gate.log.new_text()) == []


@pytest.mark.parametrize("case", BACKGROUND, ids=lambda c: c.id)
def test_stalled_client_is_ended_by_envoy(gate, case):
    response = gate.background[case.id].result(timeout=BACKGROUND_TIMEOUT_S)
    assert_answer(case, response)


def test_after_the_batch_only_valid_requests_reached_the_sidecar_and_envoy_still_serves(gate):
    for future in gate.background.values():
        future.result(timeout=BACKGROUND_TIMEOUT_S)
    assert sidecar_requests(gate.stack.sidecar) - gate.sidecar_before == gate.expected_forwards

    response = rawhttp.exchange("127.0.0.1", gate.envoy.port, speech(gate.kit, speech_json()),
                                source=gate.addresses.next(), timeout=EXCHANGE_TIMEOUT_S)
    assert response.status == 200, response.body[:300]
    assert response.body[:4] == b"RIFF"
    assert gate.envoy.running

    log = gate.envoy.log_text()
    assert wasm_traps(log) == []
    assert "voxgate: refused reason=" in log, "the filter logs one line per refusal"

    deadline = time.monotonic() + ACCESS_LOG_WAIT_S
    while True:
        entries = gate.envoy.access_log()
        if len(entries) >= len(FOREGROUND) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    subjects = {entry.get("subject") for entry in entries}
    assert not subjects & set(SPOOFED_SUBJECTS), "a spoofed identity was forwarded"
    # The access log tells the filter's answers (details `voxgate.<code>`) from Envoy's own.
    details = {entry.get("details") for entry in entries}
    assert {"voxgate.unknown_route", "voxgate.token_malformed", "http1.headers_too_large"} <= details, details


def test_the_corpus_covers_every_required_kind_of_input():
    ids = {c.id for c in CASES}
    assert len(CASES) >= 150
    for required in ["token-alg_none_empty_signature", "token-hs256_signed_with_rsa_public_pem",
                     "token-kid_path_traversal", "token-kid_sql_injection", "token-token_100kb",
                     "token-standard_base64_alphabet", "token-header_not_json", "token-claims_not_json",
                     "token-exp_string", "token-exp_1e300", "token-typ_jws", "token-authorization_twice",
                     "token-bearer_and_token_header", "body-invalid_utf8_overlong_nul", "body-escaped_nul",
                     "body-bidi_rlo", "body-invisible_zwsp", "body-five_megabytes_declared",
                     "body-five_megabytes_chunked", "body-arrays_20000_deep", "body-duplicate_input",
                     "body-wrong_type_input_number", "body-missing_input", "body-garbage_trailing_text",
                     "transport-chunked_7_byte_chunks", "transport-body_dripped_byte_by_byte",
                     "route-spoofed_subject", "route-method_delete_on_models", "route-path_admin",
                     "route-headers_101"]:
        assert required in ids, required
