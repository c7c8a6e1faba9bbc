"""What a request costs is what it synthesizes, through the shipped configuration.

The free plan's `audio_seconds` budget, priced by the sidecar from the phonemes of the text,
bounds the synthesis CPU a subject can spend whatever its text: texts espeak-ng expands (emoji
names, code-point spellings, digit strings) at the slowest speed cost a fresh subject no more
CPU than prose does. Also: the per-request limits, runs stopped by a client that leaves, and
the sidecar's memory under the worst texts.
"""

import os
import threading
import time
import uuid

import pytest
import requests

from harness import PIPER_VOICE

PROSE = ("The quick brown fox jumps over the lazy dog near the riverbank, while a gentle breeze "
         "carries the scent of pine across the valley. Children laugh in the distance, and an old "
         "clock tower chimes the hour as the sun begins to set behind the hills.")
# Texts chosen by what they cost: each makes several times the audio of prose per character.
AMPLIFIERS = {
    "emoji": "🈶 " * 10,
    "code_points": "𝐀𝐁𝐂𝐃𝐄𝐅𝐆𝐇𝐈𝐉",
    "digits": "1234567890" * 4,
}
WINDOW_S = 25.0


def speak(stack, token, text, speed=1.0, stream=False, timeout=120):
    return requests.post(
        f"{stack.url}/v1/audio/speech",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "tts-1", "input": text, "voice": PIPER_VOICE, "response_format": "wav",
              "speed": speed, "stream": stream},
        timeout=timeout, stream=stream,
    )


def synthesis_cpu(stack) -> float:
    """Seconds the sidecar spent in model runs so far (nothing before its first synthesis)."""
    return sum(s.value for s in stack.sidecar_metrics().find("voxgate_sidecar_synthesis_seconds_sum"))


def spend_for_a_window(stack, text, speed) -> tuple[float, int]:
    """A fresh free subject sends `text` back to back for WINDOW_S, waiting out each 429 that
    ends inside the window: the synthesis seconds the sidecar spent, and the refusals seen."""
    token = stack.token(sub=f"cost-{uuid.uuid4().hex[:8]}", plan="free")
    before = synthesis_cpu(stack)
    refusals = 0
    end = time.monotonic() + WINDOW_S
    while time.monotonic() < end:
        response = speak(stack, token, text, speed)
        if response.status_code == 429:
            refusals += 1
            wait = int(response.headers["retry-after"])
            if time.monotonic() + wait >= end:
                break
            time.sleep(wait)
            continue
        assert response.status_code == 200, response.text
        assert float(response.headers["x-voxgate-audio-seconds"]) > 0
    time.sleep(0.5)
    return synthesis_cpu(stack) - before, refusals


@pytest.fixture(scope="module")
def prose_cpu(stack):
    cpu, refusals = spend_for_a_window(stack, PROSE, 1.0)
    assert refusals >= 1, "prose never reached the plan's limit within the window"
    return cpu


@pytest.mark.parametrize("name", sorted(AMPLIFIERS))
def test_amplifier_texts_at_the_slowest_speed_cost_at_most_twice_prose(stack, prose_cpu, name):
    cpu, refusals = spend_for_a_window(stack, AMPLIFIERS[name], 0.25)
    assert refusals >= 1, "the audio budget never stopped the subject"
    assert cpu <= 2.0 * prose_cpu, f"{name}: {cpu:.2f} s of synthesis against {prose_cpu:.2f} s for prose"


def test_a_text_over_the_plan_or_the_request_limit_is_a_400_naming_it(stack):
    token = stack.token(sub=f"cost-{uuid.uuid4().hex[:8]}", plan="free")
    before = synthesis_cpu(stack)
    over_plan = speak(stack, token, "🈶 " * 30, speed=0.25)
    assert over_plan.status_code == 400, over_plan.text
    error = over_plan.json()["error"]
    assert (error["code"], error["param"]) == ("audio_exceeds_plan", "input")
    assert "audio_seconds" in error["message"]
    pro = stack.token(sub=f"cost-{uuid.uuid4().hex[:8]}", plan="pro")
    over_request = speak(stack, pro, "🈶 " * 60, speed=0.25)
    assert over_request.status_code == 400, over_request.text
    assert over_request.json()["error"]["code"] == "audio_limit_exceeded"
    assert "max_request_audio_seconds" in over_request.json()["error"]["message"]
    assert synthesis_cpu(stack) == before, "a refused text was synthesized"
    # The subject was charged nothing: an ordinary request still passes, charged the minimum
    # of one audio second though "Hello there." makes less.
    hello = speak(stack, token, "Hello there.")
    assert hello.status_code == 200
    assert float(hello.headers["x-voxgate-audio-seconds"]) == 1.0


def process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_leaves_stops_the_synthesis_within_a_second_of_cpu(stack):
    token = stack.token(sub=f"cost-{uuid.uuid4().hex[:8]}", plan="pro")
    before = stack.sidecar_metrics()
    response = speak(stack, token, "🈶 " * 25, speed=0.25, stream=True)
    assert response.status_code == 200
    next(response.iter_content(4096))
    response.close()
    time.sleep(1.0)
    pid = stack.sidecar.proc.pid
    at_close = process_cpu_seconds(pid)
    time.sleep(3.0)
    assert process_cpu_seconds(pid) - at_close < 1.0, "the sidecar kept synthesizing for a client that left"
    after = stack.sidecar_metrics()
    cancelled = after.value("voxgate_sidecar_synthesis_cancelled_total", reason="client_disconnected")
    earlier = sum(s.value for s in before.find("voxgate_sidecar_synthesis_cancelled_total", reason="client_disconnected"))
    assert cancelled > earlier


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_two_worst_case_requests_at_once_stay_under_a_gigabyte(stack):
    pid = stack.sidecar.proc.pid
    peak = [resident_bytes(pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak.append(resident_bytes(pid))
            time.sleep(0.1)

    def worst_case():
        token = stack.token(sub=f"cost-{uuid.uuid4().hex[:8]}", plan="pro")
        with speak(stack, token, "🈶 " * 25, speed=0.25, stream=True) as response:
            assert response.status_code == 200
            end = time.monotonic() + 8
            for _ in response.iter_content(65536):
                if time.monotonic() > end:
                    break

    sampler = threading.Thread(target=sample)
    sampler.start()
    clients = [threading.Thread(target=worst_case) for _ in range(2)]
    try:
        for client in clients:
            client.start()
        for client in clients:
            client.join(60)
    finally:
        done.set()
        sampler.join()
    assert max(peak) < 1024 ** 3, f"peak resident memory {max(peak) / 2**20:.0f} MiB"
