"""End to end: what the filter forwards, and that a refused request reaches nothing.

Two views of the upstream side:
- the real sidecar behind the session's Envoy, seen through Envoy's access log, which records the
  request headers as the filter left them (`subject` = `x-voxgate-subject`);
- a loopback echo upstream behind an Envoy of this module, which records every request it
  receives, headers and body, so forwarding is checked header by header.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from harness import Envoy
from tools import devtoken

SPEECH = "/v1/audio/speech"
MODELS = "/v1/models"
VOICE = "en_US-joe-medium"
TIMEOUT = 60


class EchoUpstream:
    """Answers 200 to everything and records (method, path, headers, body) of each request."""

    def __init__(self):
        self.received: list[dict] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("transfer-encoding", "").lower():
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline().strip():
                                pass
                            return body
                        body += self.rfile.read(size + 2)[:size]
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self):
                body = self._body()
                with upstream._lock:
                    upstream.received.append({
                        "method": self.command, "path": self.path, "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    })
                payload = b'{"ok":true}'
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_HEAD = _handle

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="echo-upstream", daemon=True)
        self._thread.start()

    def requests_to(self, path: str) -> list[dict]:
        with self._lock:
            return [r for r in self.received if r["path"] == path]

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def echo():
    upstream = EchoUpstream()
    yield upstream
    upstream.close()


def _echo_envoy(stack, echo, name: str, config: dict) -> Envoy:
    envoy = Envoy(stack.root / name, config, sidecar_port=echo.port, jwks_port=stack.jwks_server.port)
    return envoy.start()


@pytest.fixture(scope="module")
def echo_envoy(stack, echo):
    envoy = _echo_envoy(stack, echo, "envoy-echo", stack.filter_config())
    yield envoy
    envoy.stop()


def probe(route_prefix: str) -> str:
    """A path of its own under `route_prefix`, to find in the echo server's log. A speech API is
    served at its own path only, so there the query string tells requests apart."""
    separator = "?probe=" if route_prefix == SPEECH else "/probe-"
    return f"{route_prefix}{separator}{uuid.uuid4().hex}"


def subject() -> str:
    return f"fwd-{uuid.uuid4().hex[:12]}"


def test_verified_identity_replaces_spoofed_headers(stack, echo, echo_envoy):
    sub = subject()
    path = probe(MODELS)
    response = requests.get(echo_envoy.url + path, timeout=TIMEOUT, headers={
        "Authorization": f"Bearer {stack.token(sub=sub, plan='pro')}",
        "X-Voxgate-Subject": "admin",
        "x-voxgate-plan": "enterprise",
        "X-VOXGATE-Issuer": "https://voxgate.local/dev",
        "x-voxgate-role": "root",
    })
    assert response.status_code == 200, response.text
    [seen] = echo.requests_to(path)
    headers = seen["headers"]
    assert headers["x-voxgate-subject"] == sub
    assert headers["x-voxgate-issuer"] == devtoken.DEV_ISSUER
    assert headers["x-voxgate-plan"] == "pro"
    assert "x-voxgate-role" not in headers
    assert "authorization" not in headers, "the token is not forwarded unless configured"


@pytest.mark.parametrize("plan", ["pro\u202e", "pr\u200bo", "pro\u2028x-voxgate-role: root", "pro\u0085"])
def test_a_claim_with_a_character_unsafe_in_a_log_or_header_is_not_forwarded(stack, echo, echo_envoy, plan):
    path = probe(MODELS)
    response = requests.get(echo_envoy.url + path, timeout=TIMEOUT,
                            headers={"Authorization": f"Bearer {stack.token(sub=subject(), plan=plan)}"})
    assert response.status_code == 200, response.text
    [seen] = echo.requests_to(path)
    assert "x-voxgate-plan" not in seen["headers"], "dropped, not cleaned into another value"
    assert "x-voxgate-role" not in seen["headers"]


def test_anonymous_route_forwards_no_identity(echo, echo_envoy):
    path = "/healthz"
    before = len(echo.requests_to(path))
    response = requests.get(echo_envoy.url + path, headers={"x-voxgate-subject": "admin"}, timeout=TIMEOUT)
    assert response.status_code == 200
    seen = echo.requests_to(path)[before:]
    assert len(seen) == 1
    assert not [h for h in seen[0]["headers"] if h.startswith("x-voxgate-")]


def test_buffered_body_is_forwarded_unchanged(stack, echo, echo_envoy):
    path = probe(SPEECH)
    text = "A sentence that travels through the filter intact. " * 40
    body = json.dumps({"model": "tts-1", "input": text, "voice": VOICE, "response_format": "wav"}).encode()

    def chunks():
        for i in range(0, len(body), 500):
            yield body[i:i + 500]

    response = requests.post(echo_envoy.url + path, data=chunks(), timeout=TIMEOUT, headers={
        "Authorization": f"Bearer {stack.token(sub=subject(), plan='pro')}",
        "Content-Type": "application/json",
    })
    assert response.status_code == 200, response.text
    [seen] = echo.requests_to(path)
    assert seen["body"] == body
    assert "x-ratelimit-remaining" in response.headers


def test_refused_requests_reach_nothing(stack, echo, echo_envoy):
    token = stack.token(sub=subject())
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    max_body = stack.filter_config()["text"]["max_body_bytes"]
    refused = [
        ("GET", probe(MODELS), {}, None, 401),
        ("GET", probe(MODELS), {"Authorization": f"Bearer {stack.token(sub=subject(), exp=-3600)}"}, None, 401),
        ("POST", probe(SPEECH), auth, b'{"input": ', 400),
        ("POST", probe(SPEECH), auth, b"x" * (max_body + 1), 413),
        ("POST", probe(SPEECH), dict(auth, **{"Content-Type": "text/plain"}), b"hello", 415),
        ("GET", probe(SPEECH), auth, None, 405),
    ]
    for method, path, headers, body, status in refused:
        response = requests.request(method, echo_envoy.url + path, headers=headers, data=body, timeout=TIMEOUT)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["code"]
    time.sleep(0.5)
    for _, path, _, _, _ in refused:
        assert echo.requests_to(path) == [], f"{path} reached the upstream"


def test_token_is_forwarded_when_configured(stack, echo):
    config = stack.filter_config()
    config["forward_token"] = True
    envoy = _echo_envoy(stack, echo, "envoy-echo-forward-token", config)
    try:
        token = stack.token(sub=subject())
        path = probe(MODELS)
        assert requests.get(envoy.url + path, headers={"Authorization": f"Bearer {token}"},
                            timeout=TIMEOUT).status_code == 200
        [seen] = echo.requests_to(path)
        assert seen["headers"]["authorization"] == f"Bearer {token}"
    finally:
        envoy.stop()


def test_spoofed_subject_never_reaches_the_sidecar(stack):
    """With the real sidecar: Envoy's access log records `x-voxgate-subject` as forwarded."""
    sub = subject()
    spoofed = {"x-voxgate-subject": "admin"}
    authed = probe(MODELS)
    response = requests.get(stack.url + authed, timeout=TIMEOUT,
                            headers=dict(spoofed, Authorization=f"Bearer {stack.token(sub=sub)}"))
    assert response.status_code == 404, "the sidecar answers 404 for an unknown metadata path"
    anonymous_before = len([e for e in stack.envoy.access_log() if e.get("path") == "/healthz"])
    assert requests.get(stack.url + "/healthz", headers=spoofed, timeout=TIMEOUT).status_code == 200

    # Envoy flushes its access log on a timer, so an earlier test's `/healthz` line may land
    # after the count above: every anonymous line must lack a subject, not only ours.
    deadline = time.monotonic() + 10
    while True:
        log = stack.envoy.access_log()
        authed_entries = [e for e in log if e.get("path") == authed]
        anonymous_entries = [e for e in log if e.get("path") == "/healthz"]
        if (authed_entries and len(anonymous_entries) > anonymous_before) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert [e["subject"] for e in authed_entries] == [sub]
    assert authed_entries[0]["upstream"] not in (None, "-", "")
    assert len(anonymous_entries) > anonymous_before
    assert {e["subject"] for e in anonymous_entries} <= {None, "-"}
