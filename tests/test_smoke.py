"""The whole path works: client → Envoy → voxgate filter → sidecar, with a dev token."""

import io
import wave

import numpy as np
import requests

from harness import PIPER_VOICE

TEXT = "Hello from voxgate. This sentence travels through Envoy."


def read_wav(data: bytes):
    """(sample rate, samples as float in [-1, 1]) of a 16-bit mono WAV."""
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        frames = w.readframes(w.getnframes())
        return w.getframerate(), np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0


def test_speech_through_envoy_is_a_plausible_wav(stack):
    response = requests.post(
        f"{stack.url}/v1/audio/speech",
        headers={"Authorization": f"Bearer {stack.token(sub='smoke')}"},
        json={"model": "tts-1", "input": TEXT, "voice": PIPER_VOICE, "response_format": "wav"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/"), response.headers
    rate, samples = read_wav(response.content)
    assert rate == 22050
    seconds = len(samples) / rate
    words = len(TEXT.split())
    assert 0.15 * words < seconds < 1.5 * words, seconds
    rms = float(np.sqrt(np.mean(samples ** 2)))
    assert 0.01 < rms < 0.7, rms


def test_speech_without_token_is_refused_by_the_filter(stack):
    response = requests.post(f"{stack.url}/v1/audio/speech",
                             json={"model": "tts-1", "input": TEXT, "voice": PIPER_VOICE}, timeout=30)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_healthz_passes_without_token(stack):
    response = requests.get(f"{stack.url}/healthz", timeout=10)
    assert response.status_code == 200, response.text


def test_envoy_admin_is_reachable_and_exports_labelled_filter_metrics(stack):
    assert requests.get(f"{stack.admin_url}/ready", timeout=10).text.strip() == "LIVE"
    requests.get(f"{stack.url}/healthz", timeout=10)
    stats = stack.envoy_stats()
    assert stats.value("voxgate_decision", reason="allowed") >= 1
    assert stack.sidecar_metrics().names(), "the sidecar exports no metrics"
