"""Sends cases of the hostile-input corpus (tests/hostile_cases.py) through one Envoy listener,
each from a loopback source address no other case used, and checks each answer against the
case's expected status and error code."""

from __future__ import annotations

import threading

import rawhttp
from gate_checks import LogCursor, SourceAddresses, sidecar_requests
from hostile_cases import MARKER

EXCHANGE_TIMEOUT_S = 60
# Envoy's request_timeout (30 s) is the longest wait a stalled client gets.
BACKGROUND_TIMEOUT_S = 75


class Gate:
    """One Envoy under test, the sidecar behind it, and the count of requests it should pass."""

    def __init__(self, stack, envoy, kit, source_octet: int):
        self.stack = stack
        self.envoy = envoy
        self.kit = kit
        self.addresses = SourceAddresses(source_octet)
        self.log = LogCursor(envoy.log_path)
        self.sidecar_before = sidecar_requests(stack.sidecar)
        self.expected_forwards = 0
        self.lock = threading.Lock()
        self.background = {}

    def send(self, case) -> rawhttp.Response:
        request = case.request(self.kit)
        with self.lock:
            self.expected_forwards += int(case.forwarded)
        timeout = BACKGROUND_TIMEOUT_S if case.background else EXCHANGE_TIMEOUT_S
        return rawhttp.exchange("127.0.0.1", self.envoy.port, request, source=self.addresses.next(),
                                timeout=timeout, head_request=case.head)


def matches(answer: tuple, response: rawhttp.Response) -> bool:
    status, code, message = answer
    if response.status != status:
        return False
    if code is None:
        return response.error() is None
    return response.code == code and (message is None or response.error()["message"] == message)


def assert_answer(case, response: rawhttp.Response) -> None:
    assert any(matches(answer, response) for answer in case.answers()), (
        f"{case.id}: expected one of {case.answers()}, got {response.status} "
        f"{response.headers} {response.body[:300]!r}")
    error = response.error()
    if error is not None:
        assert error.get("type") and error.get("message"), error
        assert "param" in error, f"{case.id}: the error body has no `param`: {error}"
        assert MARKER not in response.body.decode("utf-8", errors="replace"), "an answer echoed the text"
    if response.status == 401 and error is not None and not case.forwarded:
        assert (response.header("www-authenticate") or "").startswith('Bearer realm="voxgate"'), response.headers
