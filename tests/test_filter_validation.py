"""End to end: the filter's body and text decisions (413, 415, 400, 404, 405) and the speech that
valid requests get, through the real Envoy and the real sidecar.

The module runs its own Envoy whose text rules add a deny pattern; everything else is the
default configuration. Each test uses its own subject, so no test drains another's buckets.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from gate_checks import LogCursor

SPEECH = "/v1/audio/speech"
COQUI = "/api/tts"
VOICE = "en_US-joe-medium"
DENIED = "forbidden phrase"
TIMEOUT = 60


@pytest.fixture(scope="module")
def gate(stack, envoy_factory):
    config = stack.filter_config()
    config["text"]["deny_patterns"] = [f"(?i){DENIED}"]
    envoy = envoy_factory(config)
    envoy.max_body_bytes = config["text"]["max_body_bytes"]
    envoy.max_chars = config["text"]["max_chars"]
    return envoy


def auth(stack) -> dict:
    return {"Authorization": f"Bearer {stack.token(sub=f'text-{uuid.uuid4().hex[:12]}')}"}


def speech(text: str = "Hello there.", **fields) -> dict:
    return {"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav", **fields}


def post_json(gate, stack, body, path: str = SPEECH, **headers) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(gate.url + path, data=data, timeout=TIMEOUT,
                         headers={**auth(stack), "Content-Type": "application/json", **headers})


def assert_error(response: requests.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code, error
    return error


def assert_wav(response: requests.Response) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/wav")
    assert response.content[:4] == b"RIFF" and response.content[8:12] == b"WAVE"
    assert len(response.content) > 10_000


def test_valid_openai_request_gets_speech_and_rate_limit_headers(gate, stack):
    response = post_json(gate, stack, speech("The filter read this text and found it fine."))
    assert_wav(response)
    assert int(response.headers["x-ratelimit-remaining"]) >= 0
    assert response.headers["x-ratelimit-limit"]
    assert int(response.headers["x-ratelimit-reset"]) >= 0


def test_valid_coqui_requests_get_speech(gate, stack):
    assert_wav(requests.get(gate.url + COQUI, params={"text": "Hello from the query string."},
                            headers=auth(stack), timeout=TIMEOUT))
    assert_wav(requests.post(gate.url + COQUI, data={"text": "Hello from a form."}, headers=auth(stack),
                             timeout=TIMEOUT))


def test_body_over_the_limit_is_413_announced_or_streamed(gate, stack):
    oversize = json.dumps(speech("x" * (gate.max_body_bytes + 10))).encode()
    assert_error(post_json(gate, stack, oversize), 413, "body_too_large")

    def chunks():
        for i in range(0, len(oversize), 4096):
            yield oversize[i:i + 4096]

    response = requests.post(gate.url + SPEECH, data=chunks(), timeout=TIMEOUT,
                             headers={**auth(stack), "Content-Type": "application/json"})
    assert_error(response, 413, "body_too_large")


def test_a_body_at_the_filters_limit_gets_speech_from_the_sidecar(gate, stack):
    """The sidecar reads bodies at least as large as the filter admits, so no body the filter
    has admitted (and charged to the buckets) is refused behind it for its size."""
    body = json.dumps(speech("Mostly padding, and a short text.")).encode()
    padded = body[:-1] + b" " * (gate.max_body_bytes - len(body)) + b"}"
    assert len(padded) == gate.max_body_bytes
    assert_wav(post_json(gate, stack, padded))


def test_wrong_content_type_is_415(gate, stack):
    response = requests.post(gate.url + SPEECH, data=json.dumps(speech()), timeout=TIMEOUT,
                             headers={**auth(stack), "Content-Type": "text/plain"})
    assert_error(response, 415, "unsupported_media_type")
    response = post_json(gate, stack, speech(), **{"Content-Type": "application/json; charset=latin1"})
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("name, body, code", [
    ("malformed JSON", b'{"input": "unterminated', "malformed_json"),
    ("invalid UTF-8", b'{"input": "caf\xc3", "voice": "en_US-joe-medium"}', "invalid_utf8"),
    ("bidi override", speech("pay \u202eusd 01\u202c now"), "forbidden_character"),
    ("zero-width character", speech("in\u200bvisible"), "forbidden_character"),
    ("deny pattern", speech(f"Please say the {DENIED.upper()} now."), "denied_text"),
    ("empty text", speech("   "), "empty_input"),
    ("unknown voice", speech(voice="someone-else"), "unknown_voice"),
    ("speed too high", speech(speed=4.5), "invalid_speed"),
    ("speed too low", speech(speed=0.1), "invalid_speed"),
    ("unsupported format", speech(response_format="aac"), "unsupported_response_format"),
    ("missing input", {"model": "tts-1", "voice": VOICE}, "missing_field"),
])
def test_invalid_speech_requests_are_400(gate, stack, name, body, code):
    error = assert_error(post_json(gate, stack, body), 400, code)
    assert error["type"] == "invalid_request_error"
    if isinstance(body, dict) and body.get("input", "").strip():
        assert body["input"] not in error["message"], "the text is never echoed"


def test_text_over_the_character_limit_is_400(gate, stack):
    assert_error(post_json(gate, stack, speech("a" * (gate.max_chars + 1))), 400, "input_too_long")
    response = requests.get(gate.url + COQUI, params={"text": "b" * (gate.max_chars + 1)}, headers=auth(stack),
                            timeout=TIMEOUT)
    assert_error(response, 400, "input_too_long")


def test_coqui_parameters_are_read_from_one_checked_source(gate, stack):
    response = requests.get(gate.url + COQUI, params={"text": "fine"},
                            headers={**auth(stack), "text": "unchecked"}, timeout=TIMEOUT)
    assert_error(response, 400, "unsupported_parameter_source")
    response = requests.post(gate.url + COQUI, params={"text": "one"}, data={"text": "another"},
                             headers=auth(stack), timeout=TIMEOUT)
    assert_error(response, 400, "ambiguous_parameters")


def test_unknown_routes_methods_and_ambiguous_paths_are_refused(gate, stack):
    assert_error(requests.get(gate.url + "/admin", headers=auth(stack), timeout=TIMEOUT), 404, "unknown_route")
    response = requests.get(gate.url + SPEECH, headers=auth(stack), timeout=TIMEOUT)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    response = requests.delete(gate.url + "/v1/models", headers=auth(stack), timeout=TIMEOUT)
    assert_error(response, 405, "method_not_allowed")
    # Envoy normalizes `%73` to `s` first, so this is the speech route, not a metadata path.
    response = requests.get(gate.url + "/v1/audio/%73peech", headers=auth(stack), timeout=TIMEOUT)
    assert_error(response, 405, "method_not_allowed")
    # What normalization keeps encoded could be read differently upstream: refused.
    response = requests.get(gate.url + "/v1/%25admin", headers=auth(stack), timeout=TIMEOUT)
    assert_error(response, 400, "invalid_path")
    # Prefixes match whole path segments: `/healthzz` is not under the anonymous `/healthz`.
    for path in ("/healthzz", "/healthz.json", "/api/ttsx"):
        assert_error(requests.get(gate.url + path, timeout=TIMEOUT), 404, "unknown_route")
    assert requests.get(gate.url + "/healthz", timeout=TIMEOUT).status_code == 200


def test_a_refused_method_is_logged_with_the_route_it_matched(gate, stack):
    log = LogCursor(gate.log_path)
    response = requests.put(gate.url + "/api/tts", headers=auth(stack), timeout=TIMEOUT)
    assert_error(response, 405, "method_not_allowed")
    line = "voxgate: refused reason=method_not_allowed status=405 route=/api/tts "
    deadline = time.monotonic() + 10
    seen = ""
    while line not in seen:
        assert time.monotonic() < deadline, f"no refusal line names the route: {seen[-500:]}"
        time.sleep(0.2)
        seen += log.new_text()


def test_refused_bodies_never_reach_the_sidecar(gate, stack):
    """A unique request id finds each request in Envoy's access log, which names the upstream if
    there was one."""
    probes = {}
    for body, status in [(b'{"input": ', 400), (speech(f"{DENIED}"), 400), (speech("a" * (gate.max_chars + 1)), 400),
                         (b"x" * (gate.max_body_bytes + 1), 413)]:
        request_id = f"probe-{uuid.uuid4().hex}"
        assert post_json(gate, stack, body, **{"x-request-id": request_id}).status_code == status
        probes[request_id] = status
    deadline = time.monotonic() + 15
    while True:
        entries = {e["request_id"]: e for e in gate.access_log()}
        if all(p in entries for p in probes) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    for request_id, status in probes.items():
        assert entries[request_id]["status"] == status
        assert entries[request_id]["upstream"] in (None, "-", ""), f"{request_id} reached the sidecar"
