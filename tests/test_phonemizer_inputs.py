"""Texts that crashed espeak-ng inside the phonemizer are spoken through Envoy and the sidecar.

libespeak-ng 1.51 overflows a stack buffer on long runs of initials ("a." × 85, the alphabet as
initials, in every form it joins) and writes past its word array in a clause of hundreds of
one-letter words; the sidecar answered 500 `phonemizer_failed`. Each text here is a request of
its own subject, so the free plan's budget never refuses one.
"""

import io
import string
import uuid
import wave

import numpy as np
import pytest
import requests

from harness import PIPER_VOICE

COQUI = "/api/tts"

ALPHABET = "".join(f"{c}." for c in string.ascii_uppercase)

# (name, text, letters spelled). Spelled letters run together ("ˌeɪˌeɪˈeɪ…"): about 0.08 s each.
CRASHING_TEXTS = [
    ("a_dot_x85", "a." * 85, 85),
    ("alphabet_as_initials", ALPHABET * 4, 104),
    ("lowercase_alphabet_as_initials", ALPHABET.lower() * 4, 104),
    ("spaced_periods", "a . " * 90, 90),
    ("double_periods", "b.." * 90, 90),
    ("no_final_period", ".".join("x" * 90), 90),
    ("possessive", "a." * 84 + "'s", 84),
    ("two_byte_letters", "é." * 57, 57),
    ("in_a_sentence", "Say " + "u." * 100 + " now.", 100),
    ("clause_of_one_letter_words", "a . " * 150 + "1" * 32, 150),
]

MIN_SECONDS_PER_LETTER = 0.04
MAX_SECONDS_PER_LETTER = 1.5


def wav_seconds_and_peak(data: bytes):
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0
        return len(samples) / w.getframerate(), float(np.max(np.abs(samples)))


def assert_spoken(response, letters):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("audio/"), response.headers
    seconds, peak = wav_seconds_and_peak(response.content)
    assert MIN_SECONDS_PER_LETTER * letters < seconds < MAX_SECONDS_PER_LETTER * letters, seconds
    assert 0.05 < peak <= 1.0, "silence"


def bearer(stack):
    return {"Authorization": f"Bearer {stack.token(sub=f'phonemizer-{uuid.uuid4().hex[:12]}')}"}


def crashes(stack) -> float:
    """Texts on which espeak-ng crashed so far (the counter appears with the first)."""
    return sum(s.value for s in stack.sidecar_metrics().find("voxgate_sidecar_phonemizer_crashes_total"))


@pytest.mark.parametrize("name,text,letters", CRASHING_TEXTS, ids=[c[0] for c in CRASHING_TEXTS])
def test_openai_speech_of_a_text_that_crashed_espeak(stack, name, text, letters):
    crashed_before = crashes(stack)
    response = requests.post(
        f"{stack.url}/v1/audio/speech",
        headers=bearer(stack),
        json={"model": "tts-1", "input": text, "voice": PIPER_VOICE, "response_format": "wav"},
        timeout=120,
    )
    assert_spoken(response, letters)
    assert crashes(stack) == crashed_before


def test_coqui_speech_of_the_alphabet_as_initials(stack):
    crashed_before = crashes(stack)
    response = requests.post(f"{stack.url}{COQUI}", headers=bearer(stack), data={"text": ALPHABET * 4},
                             timeout=120)
    assert_spoken(response, 104)
    assert crashes(stack) == crashed_before
