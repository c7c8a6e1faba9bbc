"""The sidecar's scheduler: sentences are the unit of work, shared fairly between tenants.

- Ordering: a multi-sentence request synthesized on two workers at once gives exactly the
  samples of the same request synthesized sentence by sentence on one worker, whole and
  streamed (a Coqui fixture with its noise scales at 0, so every run is deterministic), and
  the sidecar's log shows that the two workers really ran it at once.
- Fairness, through Envoy: while one tenant holds six long requests on a one-worker sidecar,
  a second tenant's short request starts within two sentences (`x-voxgate-sentences-before`,
  work counted, not time), while the flooding tenant's own short request waits behind its
  backlog.
- Release: after a client disconnects mid-stream, a deadline ends a synthesis, a queued
  request is given up or times out in the queue, the scheduler's gauges are back to zero.

Each test starts its own sidecars (on free loopback ports) so that their worker counts and
timeouts are known and the session's sidecar is left alone.
"""

import json
import re
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from harness.ports import free_port
from harness.services import Envoy, Sidecar
from harness.stack import COQUI_FIXTURES, PIPER_VOICE, piper_voices_dir

SPEECH = "/v1/audio/speech"
TIMEOUT = 120
GAUGES = ("voxgate_sidecar_queue_depth", "voxgate_sidecar_in_flight", "voxgate_sidecar_requests_in_progress")
# Six sentences of different lengths: enough for both workers to be busy for most of the text.
STORY = (
    "The gate opened before dawn. "
    "A long line of travellers waited quietly in the cold morning air. "
    "Nobody spoke. "
    "The guard counted every cart, every horse and every basket of apples twice. "
    "Then the bell rang. "
    "One by one they walked into the town, and the square filled with voices."
)
LONG_SENTENCE = "The travellers waited at the gate while the guard counted every cart and every horse. "


def still_voices(folder: Path) -> Path:
    """A voices folder with one Coqui VITS fixture whose noise scales are 0: the same text
    always gives the same samples, whichever worker runs it."""
    voice = folder / "still"
    voice.mkdir(parents=True)
    (voice / "model.onnx").symlink_to(COQUI_FIXTURES / "coqui_vits_espeak.onnx")
    config = json.loads((COQUI_FIXTURES / "coqui_vits_espeak.config.json").read_text())
    config["model_args"]["inference_noise_scale"] = 0.0
    config["model_args"]["inference_noise_scale_dp"] = 0.0
    (voice / "config.json").write_text(json.dumps(config))
    return folder


def sidecar(stack, name: str, voices: Path, **env) -> Sidecar:
    return Sidecar(stack.root / name, free_port(), voices, extra_env=env).start()


def gauges(sidecar: Sidecar) -> dict:
    metrics = sidecar.metrics()
    return {name: metrics.value(name) for name in GAUGES}


def settled(sidecar: Sidecar, seconds: float = 30) -> dict:
    """The scheduler's gauges once nothing is in progress, or as they stand after `seconds`."""
    until = time.monotonic() + seconds
    while True:
        now = gauges(sidecar)
        if not any(now.values()) or time.monotonic() > until:
            return now
        time.sleep(0.1)


def wait_for(predicate, what: str, seconds: float = 30):
    until = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < until, f"timed out waiting for {what}"
        time.sleep(0.05)


def finished_lines(sidecar: Sidecar) -> list[str]:
    return [line for line in sidecar.log_text().splitlines() if "synthesis finished" in line]


def field(line: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", line)
    assert match, f"{name} missing from {line!r}"
    return match.group(1)


# --- Ordering -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def still_pair(stack):
    """Two sidecars on the same deterministic voice: two workers, and one."""
    voices = still_voices(stack.root / "scheduler-still-voices")
    parallel = sidecar(stack, "scheduler-parallel", voices, VOXGATE_SIDECAR_WORKERS="2")
    serial = sidecar(stack, "scheduler-serial", voices, VOXGATE_SIDECAR_WORKERS="1")
    yield parallel, serial
    parallel.stop()
    serial.stop()


def speak(url: str, stream: bool) -> bytes:
    body = {"model": "tts-1", "voice": "still", "input": STORY, "response_format": "pcm", "stream": stream}
    response = requests.post(url + SPEECH, json=body, timeout=TIMEOUT, stream=stream)
    assert response.status_code == 200, response.text
    if not stream:
        return response.content
    return b"".join(response.iter_content(chunk_size=None))


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "streamed"])
def test_sentences_in_parallel_give_the_samples_of_sentence_by_sentence(still_pair, stream):
    parallel, serial = still_pair
    one_at_a_time = speak(serial.url, stream)
    at_once = speak(parallel.url, stream)
    assert len(one_at_a_time) > 22050 * 2, "several seconds of audio"
    assert at_once == one_at_a_time
    assert field(finished_lines(serial)[-1], "most_at_once") == "1"
    assert field(finished_lines(parallel)[-1], "most_at_once") == "2"
    assert field(finished_lines(parallel)[-1], "spoken") == "6"


def test_streamed_and_complete_answers_hold_the_same_samples(still_pair):
    parallel, _ = still_pair
    assert speak(parallel.url, stream=True) == speak(parallel.url, stream=False)


# --- Fairness through Envoy -----------------------------------------------------------------

def test_a_second_tenant_is_not_kept_waiting_behind_a_flooding_tenant(stack):
    """One worker; tenant `flood` (pro) holds six requests of ten long sentences each. A short
    request of another tenant starts within two sentences; the same short request from `flood`
    itself waits behind its own backlog, which shows the count would reveal first come, first
    served."""
    worker = sidecar(stack, "scheduler-fair", piper_voices_dir(stack.root / "scheduler-fair-voices"),
                     VOXGATE_DEFAULT_VOICE=PIPER_VOICE, VOXGATE_SIDECAR_WORKERS="1")
    envoy = Envoy(stack.root / "scheduler-fair-envoy", stack.filter_config(), sidecar_port=worker.port,
                  jwks_port=stack.jwks_server.port).start()
    flooder = f"flood-{uuid.uuid4().hex[:8]}"

    def post(sub: str, plan: str, text: str) -> requests.Response:
        headers = {"Authorization": f"Bearer {stack.token(sub=sub, plan=plan)}"}
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"}
        return requests.post(envoy.url + SPEECH, json=body, headers=headers, timeout=TIMEOUT)

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            flood = [pool.submit(post, flooder, "pro", LONG_SENTENCE * 10) for _ in range(6)]
            wait_for(lambda: worker.metrics().value("voxgate_sidecar_requests_in_progress") >= 6,
                     "the six long requests to be admitted")
            own = pool.submit(post, flooder, "pro", "Me again.")
            wait_for(lambda: worker.metrics().value("voxgate_sidecar_requests_in_progress") >= 7,
                     "the flooder's short request to be admitted")
            other = post(f"quiet-{uuid.uuid4().hex[:8]}", "free", "Just one short line.")
            own = own.result()
            flood = [f.result() for f in flood]
        assert other.status_code == 200, other.text
        assert own.status_code == 200, own.text
        assert all(f.status_code == 200 for f in flood), [f.text[:120] for f in flood]
        assert int(other.headers["x-voxgate-sentences-before"]) <= 2
        assert int(own.headers["x-voxgate-sentences-before"]) >= 5
        assert settled(worker) == dict.fromkeys(GAUGES, 0)
    finally:
        envoy.stop()
        worker.stop()


# --- Release on every path ------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_worker(stack):
    voices = piper_voices_dir(stack.root / "scheduler-release-voices")
    started = sidecar(stack, "scheduler-release", voices, VOXGATE_DEFAULT_VOICE=PIPER_VOICE,
                      VOXGATE_SIDECAR_WORKERS="1", VOXGATE_SIDECAR_MAX_QUEUE="4",
                      VOXGATE_SIDECAR_MAX_UTTERANCE_SECONDS="60")
    yield started
    started.stop()


def long_request(text_sentences: int = 40, stream: bool = False, text: str | None = None) -> bytes:
    text = LONG_SENTENCE * text_sentences if text is None else text
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": text,
                       "response_format": "pcm", "stream": stream}).encode()
    return (f"POST {SPEECH} HTTP/1.1\r\nHost: sidecar\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_a_client_that_disconnects_mid_stream_releases_everything(one_worker):
    with socket.create_connection(("127.0.0.1", one_worker.port), timeout=TIMEOUT) as client:
        client.sendall(long_request(stream=True))
        assert client.recv(65536).startswith(b"HTTP/1.1 200")
    assert settled(one_worker) == dict.fromkeys(GAUGES, 0)
    assert "outcome=\"client_disconnected\"" in finished_lines(one_worker)[-1]


def test_a_request_given_up_while_queued_releases_its_place(one_worker):
    """The worker runs one utterance of about a minute of audio (seconds of inference) while
    a second request waits for it; that client leaves before its turn."""
    one_long_sentence = LONG_SENTENCE.rstrip(". ") + ", " + (LONG_SENTENCE.rstrip(". ") + ", ") * 5 + "and then."
    with socket.create_connection(("127.0.0.1", one_worker.port), timeout=TIMEOUT) as running:
        running.sendall(long_request(text=one_long_sentence))
        wait_for(lambda: gauges(one_worker)["voxgate_sidecar_in_flight"] >= 1, "the long synthesis")
        with socket.create_connection(("127.0.0.1", one_worker.port), timeout=TIMEOUT) as queued:
            queued.sendall(long_request(text_sentences=2))
            wait_for(lambda: gauges(one_worker)["voxgate_sidecar_queue_depth"] >= 1, "a queued request")
        wait_for(lambda: any("spoken=0" in line and "client_disconnected" in line
                             for line in finished_lines(one_worker)), "the queued request to end unspoken")
        assert gauges(one_worker)["voxgate_sidecar_in_flight"] == 1, "the long synthesis still runs"
    assert settled(one_worker) == dict.fromkeys(GAUGES, 0)


def test_a_deadline_during_synthesis_or_in_the_queue_releases_everything(stack):
    voices = piper_voices_dir(stack.root / "scheduler-deadline-voices")
    hurried = sidecar(stack, "scheduler-deadline", voices, VOXGATE_DEFAULT_VOICE=PIPER_VOICE,
                      VOXGATE_SIDECAR_WORKERS="1", VOXGATE_SIDECAR_REQUEST_TIMEOUT_MS="1500")
    body = {"model": "tts-1", "voice": "alloy", "input": LONG_SENTENCE * 40, "response_format": "wav"}
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            first = pool.submit(requests.post, hurried.url + SPEECH, json=body, timeout=TIMEOUT)
            wait_for(lambda: gauges(hurried)["voxgate_sidecar_in_flight"] >= 1, "the first synthesis")
            second = requests.post(hurried.url + SPEECH, json=body, timeout=TIMEOUT)
            first = first.result()
        assert first.status_code == 504 and first.json()["error"]["code"] == "deadline_exceeded", first.text
        # The second waits behind the first, then either never gets the worker before its own
        # deadline (503, retry later) or gets it and runs out of time (504).
        code = second.json()["error"]["code"]
        assert (second.status_code, code) in {(503, "queue_timeout"), (504, "deadline_exceeded")}, second.text
        if second.status_code == 503:
            assert int(second.headers["retry-after"]) >= 1
        assert settled(hurried) == dict.fromkeys(GAUGES, 0)
    finally:
        hurried.stop()


def test_a_burst_over_the_queue_is_refused_and_leaves_nothing_behind(one_worker):
    body = {"model": "tts-1", "voice": "alloy", "input": LONG_SENTENCE * 4, "response_format": "wav"}
    barrier = threading.Barrier(8)

    def one(_):
        barrier.wait(timeout=30)
        return requests.post(one_worker.url + SPEECH, json=body, timeout=TIMEOUT)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 503}, statuses
    assert all(a.json()["error"]["code"] == "queue_full" for a in answers if a.status_code == 503)
    assert settled(one_worker) == dict.fromkeys(GAUGES, 0)
