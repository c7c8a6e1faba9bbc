"""End to end: faults around the gate, with the real Envoy, the real filter and real sidecars.

- A sidecar killed under load: clients get Envoy's 503 at once (not after the route timeout),
  in the JSON error shape (`upstream_unavailable`), and service resumes by itself once the
  sidecar is back, without touching Envoy.
- A saturated sidecar (one worker, a queue of one): its 503 `queue_full` with `Retry-After`
  passes through Envoy; with the circuit breaker tightened, Envoy refuses the overflow itself
  (`upstream_rq_pending_overflow`, a JSON `upstream_unavailable`) and the sidecar never sees it;
  nothing waits without bound.
- A sidecar slower than the route timeout: Envoy's 504, as JSON `upstream_timeout`.
- A phonemizer process (espeak-ng) that dies or hangs: the request that met a dead one is
  answered by a fresh process, the one that met a hung one gets a JSON 500 `phonemizer_failed`
  after the phonemizer timeout, the process is replaced and counted, the sidecar keeps serving.
- A JWKS endpoint that serves garbage, never answers, or is down: the last good keys keep
  working, every failed fetch is counted in `voxgate_jwks_fetch{result="failed"}` (and logged
  once), and a rotated key set is picked up once the endpoint is back.
- A filter that cannot start (bad configuration, garbage or truncated module): `envoy --mode
  validate` refuses it, and a real Envoy refuses to start with it, so nothing is ever served
  unfiltered. A filter VM that traps while serving (a minimal proxy-wasm module whose request
  callback is `unreachable`) fails closed: 503 `filter_failed`, never forwarded, and the trap shows in the log
  the way the other tests look for it.

These tests start their own sidecars (one worker, the Piper voice only) on their own ports, so
killing or saturating them leaves the session's sidecar alone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

from gate_checks import sidecar_requests, wasm_traps
from harness import PIPER_VOICE, Envoy, Sidecar, free_port
from harness.stack import piper_voices_dir
from hostile_cases import MARKER
from tools import devkeys, procs, render_envoy

SPEECH = "/v1/audio/speech"
SHORT_TEXT = f"The patient {MARKER} waits."
# Long enough that one synthesis keeps the single worker busy while the others arrive.
LONG_TEXT = " ".join([f"The patient {MARKER} waits at the gate while the sidecar is busy speaking."] * 2)
# "Fast" is measured against the route timeout (120 s): a refused request must not wait for it.
FAST_S = 10.0
# The longest any request in these tests may take, however it ends.
BOUND_S = 60.0
TIMEOUT = 90


def spare_sidecar(stack, name: str, **env) -> Sidecar:
    settings = {"VOXGATE_DEFAULT_VOICE": PIPER_VOICE, "VOXGATE_SIDECAR_WORKERS": "1", **env}
    return Sidecar(stack.root / name, free_port(), piper_voices_dir(stack.root / f"{name}-voices"),
                   extra_env=settings)


def roomy_config(stack) -> dict:
    """The default configuration with limits that never refuse: these tests are about what
    happens behind the filter."""
    config = stack.filter_config()
    config["rate_limits"] = {"slots": 1024, "default_plan": "load",
                             "plans": {"load": {"requests": {"capacity": 1_000_000, "refill_per_second": 100_000}}}}
    return config


def speech_headers(stack) -> dict:
    return {"Authorization": f"Bearer {stack.token(sub=f'fault-{uuid.uuid4().hex[:12]}')}",
            "Content-Type": "application/json"}


def speech_body(text: str) -> dict:
    return {"model": "tts-1", "input": text, "voice": PIPER_VOICE, "response_format": "wav"}


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None
    body: bytes
    headers: dict
    error: str | None = None

    @property
    def elapsed(self) -> float:
        return self.finished - self.started


def post_speech(url: str, headers: dict, text: str) -> Outcome:
    started = time.monotonic()
    try:
        response = requests.post(url + SPEECH, json=speech_body(text), headers=headers, timeout=TIMEOUT)
        return Outcome(started, time.monotonic(), response.status_code, response.content,
                       {k.lower(): v for k, v in response.headers.items()})
    except requests.RequestException as error:
        # A stream cut when its sidecar died.
        return Outcome(started, time.monotonic(), None, b"", {}, error=type(error).__name__)


class Load:
    """Clients sending speech requests back to back until stopped."""

    def __init__(self, url: str, headers: dict, clients: int):
        self.url, self.headers = url, headers
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self):
        while not self._stop.is_set():
            outcome = post_speech(self.url, self.headers, SHORT_TEXT)
            with self._lock:
                self.outcomes.append(outcome)
            if outcome.status != 200:
                time.sleep(0.05)

    def start(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=BOUND_S)

    def between(self, start: float, end: float = float("inf")) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]

    def wait_for_successes(self, since: float, count: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while sum(o.status == 200 for o in self.between(since)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} successes within {seconds} s"
            time.sleep(0.1)


def envoy_error(outcome: Outcome) -> dict | None:
    """The `error` object of a JSON error answer, or None."""
    if outcome.headers.get("content-type") != "application/json":
        return None
    try:
        error = json.loads(outcome.body).get("error")
    except (ValueError, AttributeError):
        return None
    return error if isinstance(error, dict) else None


def is_envoy_upstream_failure(outcome: Outcome) -> bool:
    """Envoy's own 503 for an unreachable sidecar, in the JSON shape of its local_reply_config."""
    error = envoy_error(outcome) or {}
    return (outcome.status == 503 and error.get("code") == "upstream_unavailable"
            and error.get("type") == "server_error" and error.get("message", "").startswith("upstream connect error"))


@pytest.fixture(scope="module")
def victim(stack):
    sidecar = spare_sidecar(stack, "fault-victim").start()
    envoy = Envoy(stack.root / "fault-victim-envoy", roomy_config(stack), sidecar_port=sidecar.port,
                  jwks_port=stack.jwks_server.port).start()
    yield sidecar, envoy
    envoy.stop()
    sidecar.stop()


def test_sidecar_killed_under_load_gives_fast_503s_and_service_resumes_by_itself(stack, victim):
    sidecar, envoy = victim
    load = Load(envoy.url, speech_headers(stack), clients=3).start()
    try:
        began = time.monotonic()
        load.wait_for_successes(began, 3, BOUND_S)

        killed = time.monotonic()
        sidecar.proc.kill()
        sidecar.proc.wait(timeout=10)
        dead = time.monotonic()
        time.sleep(2.0)

        restarting = time.monotonic()
        sidecar.start()
        ready = time.monotonic()
        load.wait_for_successes(ready, 3, BOUND_S)
        resumed = min(o.finished for o in load.between(ready) if o.status == 200)
    finally:
        load.stop()

    while_dead = load.between(dead, restarting)
    assert while_dead, "no request was sent while the sidecar was down"
    assert all(is_envoy_upstream_failure(o) for o in while_dead), [(o.status, o.body[:80]) for o in while_dead]
    assert max(o.elapsed for o in while_dead) < FAST_S
    in_flight = [o for o in load.between(began, dead) if o.finished >= killed]
    assert all(o.status in (200, 503) or o.error for o in in_flight)
    assert all(o.elapsed < BOUND_S for o in load.outcomes), "a request waited too long"
    # Until it listens Envoy answers 503; until it has loaded its voices the sidecar answers
    # 503 `not_ready` itself (with Retry-After); then speech again.
    for o in load.between(restarting, ready):
        assert o.status == 200 or is_envoy_upstream_failure(o) or (
            o.status == 503 and b'"not_ready"' in o.body and "retry-after" in o.headers), (o.status, o.body[:80])
    assert envoy.stats().value("envoy_cluster_upstream_cx_connect_fail", envoy_cluster_name="voxgate_sidecar") >= 1
    assert wasm_traps(envoy.log_text()) == []
    print(f"\nfault figures: {len(while_dead)} requests while the sidecar was down, slowest 503 after "
          f"{max(o.elapsed for o in while_dead) * 1000:.1f} ms; first 200 {resumed - restarting:.2f} s after the "
          f"restart began, {ready - restarting:.2f} s of it until the sidecar was ready")


@pytest.fixture(scope="module")
def saturated(stack):
    sidecar = spare_sidecar(stack, "fault-saturated", VOXGATE_SIDECAR_MAX_QUEUE="1").start()
    yield sidecar
    sidecar.stop()


class TightBreakerEnvoy(Envoy):
    """The bootstrap with the sidecar cluster's circuit breaker narrowed to one connection,
    one pending request and one request, so a handful of clients overflow it."""

    LIMITS = {"max_connections": 1, "max_pending_requests": 1, "max_requests": 1}

    def render(self) -> Path:
        path = super().render()
        bootstrap = yaml.safe_load(path.read_text())
        [sidecar] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "voxgate_sidecar"]
        [thresholds] = sidecar["circuit_breakers"]["thresholds"]
        assert set(self.LIMITS) <= set(thresholds), thresholds
        thresholds.update(self.LIMITS)
        path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
        return path


def burst(url: str, stack, clients: int) -> list[Outcome]:
    barrier = threading.Barrier(clients)
    headers = [speech_headers(stack) for _ in range(clients)]

    def one(i):
        barrier.wait(timeout=30)
        return post_speech(url, headers[i], LONG_TEXT)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, range(clients)))


def rejections(sidecar, reason: str) -> float:
    return sum(s.value for s in sidecar.metrics().find("voxgate_sidecar_rejections_total", reason=reason))


def test_saturated_sidecar_sheds_load_with_503_and_retry_after_through_envoy(stack, saturated):
    envoy = Envoy(stack.root / "fault-saturated-envoy", roomy_config(stack), sidecar_port=saturated.port,
                  jwks_port=stack.jwks_server.port).start()
    try:
        shed_before = rejections(saturated, "queue_full")
        outcomes = burst(envoy.url, stack, 8)
    finally:
        envoy.stop()
    spoken = [o for o in outcomes if o.status == 200]
    shed = [o for o in outcomes if o.status == 503]
    assert len(spoken) + len(shed) == len(outcomes), [o.status for o in outcomes]
    assert spoken and shed
    for o in shed:
        assert o.headers["content-type"] == "application/json"
        assert b'"queue_full"' in o.body
        assert int(o.headers["retry-after"]) >= 1
        assert o.elapsed < FAST_S
    assert all(o.body[:4] == b"RIFF" for o in spoken)
    assert all(o.elapsed < BOUND_S for o in outcomes)
    assert rejections(saturated, "queue_full") - shed_before == len(shed)


def test_circuit_breaker_refuses_the_overflow_before_the_sidecar(stack, saturated):
    envoy = TightBreakerEnvoy(stack.root / "fault-breaker-envoy", roomy_config(stack), sidecar_port=saturated.port,
                              jwks_port=stack.jwks_server.port).start()
    try:
        reached_before = sidecar_requests(saturated)
        outcomes = burst(envoy.url, stack, 8)
        reached = sidecar_requests(saturated) - reached_before
        stats = envoy.stats()
        # The pending queue overflowed, or a queued request found the request cap still reached.
        overflow = sum(stats.value(f"envoy_cluster_upstream_rq_{kind}_overflow", envoy_cluster_name="voxgate_sidecar")
                       for kind in ("pending", "active"))
    finally:
        envoy.stop()
    overloaded = [o for o in outcomes if o.status == 503 and o.headers.get("x-envoy-overloaded") == "true"]
    spoken = [o for o in outcomes if o.status == 200]
    assert overloaded and spoken
    assert len(overloaded) + len(spoken) == len(outcomes), [(o.status, o.body[:60]) for o in outcomes]
    assert overflow == len(overloaded)
    for o in overloaded:
        error = envoy_error(o)
        assert error is not None and error["code"] == "upstream_unavailable", (o.headers, o.body[:200])
        assert "overflow" in error["message"], error
    assert reached == len(spoken), "the requests Envoy refused never reached the sidecar"
    assert all(o.elapsed < FAST_S for o in overloaded)
    assert all(o.elapsed < BOUND_S for o in outcomes)


class ShortRouteTimeoutEnvoy(Envoy):
    """The bootstrap with the route timeout cut to 50 ms, shorter than any synthesis."""

    def render(self) -> Path:
        path = super().render()
        text, count = re.subn(r"\btimeout: 120s\b", "timeout: 0.05s", path.read_text())
        assert count == 1, "the bootstrap has no single route timeout of 120 s"
        path.write_text(text)
        return path


def test_a_sidecar_slower_than_the_route_timeout_gets_envoys_json_504(stack):
    sidecar = spare_sidecar(stack, "fault-slow").start()
    envoy = ShortRouteTimeoutEnvoy(stack.root / "fault-slow-envoy", roomy_config(stack), sidecar_port=sidecar.port,
                                   jwks_port=stack.jwks_server.port)
    try:
        envoy.start()
        outcome = post_speech(envoy.url, speech_headers(stack), LONG_TEXT)
    finally:
        envoy.stop()
        sidecar.stop()
    assert outcome.status == 504, (outcome.status, outcome.body[:200])
    assert envoy_error(outcome) == {"type": "server_error", "code": "upstream_timeout",
                                    "message": "upstream request timeout", "param": None}, outcome.body
    assert outcome.elapsed < FAST_S


PHONEMIZER_TIMEOUT_MS = 1000


def phonemizer_processes(sidecar: Sidecar) -> list[int]:
    """Pids of the sidecar's live phonemizer processes (its children running voxgate-phonemizer)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            exe = (entry / "exe").resolve().name
        except OSError:
            continue
        state, parent = stat[stat.rindex(")") + 2:].split()[:2]
        if int(parent) == sidecar.proc.pid and state != "Z" and exe == "voxgate-phonemizer":
            pids.append(int(entry.name))
    return pids


def replaced(sidecar: Sidecar, reason: str) -> float:
    found = sidecar.metrics().find("voxgate_sidecar_phonemizers_replaced_total", reason=reason)
    return sum(s.value for s in found)


def test_a_phonemizer_that_dies_or_hangs_costs_one_request_not_the_sidecar(stack):
    """espeak-ng runs in the sidecar's phonemizer processes because some texts reach its memory
    defects; here the process is killed (as a crash would end it) and then stopped (as a hang
    would leave it), under Envoy."""
    sidecar = spare_sidecar(stack, "fault-phonemizer", VOXGATE_SIDECAR_PHONEMIZERS="1",
                            VOXGATE_SIDECAR_PHONEMIZER_TIMEOUT_MS=str(PHONEMIZER_TIMEOUT_MS)).start()
    envoy = Envoy(stack.root / "fault-phonemizer-envoy", roomy_config(stack), sidecar_port=sidecar.port,
                  jwks_port=stack.jwks_server.port)
    try:
        envoy.start()
        headers = speech_headers(stack)
        assert post_speech(envoy.url, headers, SHORT_TEXT).status == 200
        [killed] = phonemizer_processes(sidecar)
        os.kill(killed, signal.SIGKILL)
        procs.wait_until(lambda: killed not in phonemizer_processes(sidecar), "the killed phonemizer to go",
                         sidecar.proc, sidecar.log_path, 10)

        after_kill = post_speech(envoy.url, headers, SHORT_TEXT)
        assert after_kill.status == 200 and after_kill.body[:4] == b"RIFF", after_kill.body[:200]
        assert replaced(sidecar, "died") == 1
        [stuck] = phonemizer_processes(sidecar)
        assert stuck != killed
        os.kill(stuck, signal.SIGSTOP)

        hung = post_speech(envoy.url, headers, SHORT_TEXT)
        assert hung.status == 500, (hung.status, hung.body[:200])
        assert envoy_error(hung)["code"] == "phonemizer_failed", hung.body
        assert PHONEMIZER_TIMEOUT_MS / 1000 <= hung.elapsed < FAST_S
        assert replaced(sidecar, "timed_out") == 1
        assert stuck not in phonemizer_processes(sidecar), "the stuck phonemizer is killed and reaped"

        recovered = post_speech(envoy.url, headers, SHORT_TEXT)
        assert recovered.status == 200 and recovered.body[:4] == b"RIFF"
        assert sidecar.running
        log = sidecar.log_text()
    finally:
        envoy.stop()
        sidecar.stop()
    assert f'phonemizer process replaced pid={killed} reason="died" status=signal 9' in log
    assert f'phonemizer process replaced pid={stuck} reason="timed_out" status=signal 9' in log
    assert MARKER not in log, "the log carries the request's text"


class FlakyIdentityProvider:
    """A JWKS endpoint on a fixed loopback port that serves the key set (`keys`), or an HTML
    error page (`html`), or accepts connections and never answers (`hang`), or is not
    listening at all (`down`)."""

    def __init__(self, jwks: dict):
        self.port = free_port()
        self.jwks = jwks
        self.mode = "keys"
        self._listener: socket.socket | None = None
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listen()

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with self._lock:
            mode, jwks = self.mode, self.jwks
        connection.settimeout(5)
        try:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                request += chunk
        except OSError:
            connection.close()
            return
        if mode == "hang":
            with self._lock:
                self._held.append(connection)
            return
        bodies = {"keys": ("application/json", json.dumps(jwks).encode()),
                  "html": ("text/html", f"<html><body>{MARKER} gateway error</body></html>".encode())}
        if mode not in bodies:
            # Accepted just before the endpoint went down.
            connection.close()
            return
        content_type, body = bodies[mode]
        head = (f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode()
        try:
            connection.sendall(head + body)
        finally:
            connection.close()

    def set(self, mode: str, jwks: dict | None = None) -> None:
        with self._lock:
            was = self.mode
            self.mode = mode
            if jwks is not None:
                self.jwks = jwks
        if mode == "down" and was != "down":
            self._listener.close()
        elif was == "down" and mode != "down":
            self._listen()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for connection in self._held:
                connection.close()


CORP_ISSUER = "https://idp.example"
CORP_AUDIENCE = "tts-service"


def corp_key():
    private = devkeys.generate_private("ES256")
    jwk = devkeys.public_jwk("ES256", private)
    jwk["kid"] = f"corp-{uuid.uuid4().hex[:8]}"
    return private, jwk


def test_jwks_endpoint_failures_keep_the_last_good_keys_and_are_counted(stack):
    (a_private, a_jwk), (b_private, b_jwk) = corp_key(), corp_key()
    idp = FlakyIdentityProvider({"keys": [a_jwk]})
    config = stack.filter_config()
    config["auth"]["providers"].append({
        "name": "corp", "issuer": CORP_ISSUER, "audiences": [CORP_AUDIENCE],
        "remote_jwks": {"cluster": "jwks", "authority": "idp.example", "path": "/jwks.json",
                        "refresh_seconds": 10, "timeout_ms": 1000}})
    # One worker: "the filter has fetched" is then one VM's state.
    envoy = Envoy(stack.root / "fault-jwks-envoy", config, sidecar_port=stack.sidecar.port,
                  jwks_port=idp.port, concurrency=1).start()

    def status(private, jwk) -> int:
        token = stack.token(signing_key=private, kid=jwk["kid"], iss=CORP_ISSUER, aud=CORP_AUDIENCE,
                            sub=f"corp-{uuid.uuid4().hex[:8]}")
        return requests.get(envoy.url + "/v1/models", headers={"Authorization": f"Bearer {token}"},
                            timeout=TIMEOUT).status_code

    def fetches(result: str) -> float:
        return envoy.stats().value("voxgate_jwks_fetch", provider="corp", result=result)

    def wait(condition, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {seconds} s"
            time.sleep(0.2)

    try:
        wait(lambda: status(a_private, a_jwk) == 200, 15, "the first key set was fetched")
        # After a good fetch the next is due in 10 s; after failures, 1 s, 2 s, 4 s later.
        for mode, seconds in [("html", 15), ("hang", 8), ("down", 8)]:
            failed = fetches("failed")
            idp.set(mode)
            wait(lambda: fetches("failed") > failed, seconds, f"a failed fetch ({mode}) was counted")
            assert status(a_private, a_jwk) == 200, f"the last good key stopped working ({mode})"
        ok = fetches("ok")
        idp.set("keys", {"keys": [a_jwk, b_jwk]})
        wait(lambda: fetches("ok") > ok, 15, "the endpoint was fetched again once it recovered")
        assert status(b_private, b_jwk) == 200
        assert status(a_private, a_jwk) == 200
        failed = fetches("failed")
        log = envoy.log_text()
    finally:
        envoy.stop()
        idp.close()
    # Every VM (each worker, and Envoy's main thread) fetches for itself: count lines, not rounds.
    logged = re.findall(r"jwks fetch for provider corp (?:failed, keeping the last good keys|not started)", log)
    assert len(logged) == failed >= 3, log
    assert wasm_traps(log) == []
    assert MARKER not in log, "the endpoint's answer is not logged"


def unstartable_envoy(stack, kind: str, folder: Path) -> Envoy:
    """An Envoy whose module is garbage, truncated or empty, or whose filter configuration is
    invalid (`config`)."""
    folder.mkdir(parents=True, exist_ok=True)
    config, wasm = stack.filter_config(), render_envoy.WASM
    if kind == "config":
        config["rate_limits"]["plans"]["free"]["requests"]["capacity"] = 0
    else:
        real = render_envoy.WASM.read_bytes()
        modules = {"module_garbage": b"\x7fELF not a wasm module " * 64, "module_truncated": real[: len(real) // 2],
                   "module_empty": b""}
        wasm = folder / f"{kind}.wasm"
        wasm.write_bytes(modules[kind])
    return Envoy(folder / "envoy", config, sidecar_port=stack.sidecar.port, jwks_port=stack.jwks_server.port,
                 wasm_path=wasm)


@pytest.mark.parametrize("kind", ["module_garbage", "module_truncated", "module_empty", "config"])
def test_filter_that_cannot_start_is_refused_at_validation_and_at_start(stack, kind):
    envoy = unstartable_envoy(stack, kind, stack.root / f"fault-unstartable-{kind}")
    validated = envoy.validate()
    output = validated.stdout + validated.stderr
    assert validated.returncode != 0, output
    assert "Unable to create Wasm plugin voxgate" in output

    reached_before = sidecar_requests(stack.sidecar)
    with pytest.raises(procs.StartupError) as refused:
        envoy.start()
    assert not envoy.running
    message = str(refused.value)
    assert "exited during start-up" in message and "Unable to create Wasm plugin voxgate" in message
    if kind == "config":
        lines = [line for line in envoy.log_text().splitlines() if "voxgate: invalid configuration" in line]
        assert len(lines) == 1 and "rate_limits.plans.free.requests.capacity" in lines[0], lines
    else:
        assert "Failed to load Wasm code" in envoy.log_text() or "failed to load" in envoy.log_text()
    assert sidecar_requests(stack.sidecar) == reached_before


def trapping_module() -> bytes:
    """The smallest proxy-wasm module Envoy accepts: it starts and configures fine, and its
    `proxy_on_request_headers` executes `unreachable`, i.e. the VM traps on the first request."""

    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | 0x80 if n else byte)
            if not n:
                return bytes(out)

    def vec(items: list) -> bytes:
        return leb(len(items)) + b"".join(items)

    def section(section_id: int, content: bytes) -> bytes:
        return bytes([section_id]) + leb(len(content)) + content

    i32 = b"\x7f"
    types = [b"\x60" + vec(params) + vec(results) for params, results in [
        ([], []), ([i32], [i32]), ([i32, i32], []), ([i32, i32], [i32]), ([i32, i32, i32], [i32])]]
    exports = [("memory", 2, 0), ("proxy_abi_version_0_2_1", 0, 0), ("proxy_on_memory_allocate", 0, 1),
               ("proxy_on_context_create", 0, 2), ("proxy_on_vm_start", 0, 3), ("proxy_on_configure", 0, 4),
               ("proxy_on_request_headers", 0, 5)]
    # Bodies: no locals, then: nothing; i32.const 1024 (a scratch buffer); nothing; i32.const 1
    # (true) twice; unreachable.
    bodies = [b"\x00\x0b", b"\x00\x41\x80\x08\x0b", b"\x00\x0b", b"\x00\x41\x01\x0b", b"\x00\x41\x01\x0b",
              b"\x00\x00\x0b"]
    return (b"\x00asm\x01\x00\x00\x00"
            + section(1, vec(types))
            + section(3, vec([leb(t) for t in (0, 1, 2, 3, 3, 4)]))
            + section(5, vec([b"\x00" + leb(2)]))
            + section(7, vec([leb(len(n)) + n.encode() + bytes([kind]) + leb(index) for n, kind, index in exports]))
            + section(10, vec([leb(len(body)) + body for body in bodies])))


def test_filter_vm_that_traps_while_serving_fails_closed(stack):
    folder = stack.root / "fault-trapping-module"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trap.wasm").write_bytes(trapping_module())
    envoy = Envoy(folder / "envoy", stack.filter_config(), sidecar_port=stack.sidecar.port,
                  jwks_port=stack.jwks_server.port, wasm_path=folder / "trap.wasm")
    assert envoy.validate().returncode == 0, "the module itself is valid"
    reached_before = sidecar_requests(stack.sidecar)
    envoy.start()
    try:
        answers = [requests.get(envoy.url + path, timeout=TIMEOUT) for path in ("/healthz", "/v1/models", "/healthz")]
        assert [a.status_code for a in answers] == [503, 503, 503]
        assert all(a.headers["content-type"] == "application/json" for a in answers)
        assert [a.json()["error"]["code"] for a in answers] == ["filter_failed"] * 3
        assert envoy.running
        log = envoy.log_text()
    finally:
        envoy.stop()
    assert sidecar_requests(stack.sidecar) == reached_before, "nothing passed the failed filter"
    assert any("Function: proxy_on_request_headers failed" in line for line in wasm_traps(log)), log
