"""End to end: voxgate as a drop-in for OpenAI speech clients, through the real Envoy with the
shipped filter configuration. Every OpenAI voice name is an alias the filter and the sidecar
resolve alike; the filter learns the voices from the sidecar, so a voice dropped into the folder
is usable after a restart with no other edit, and `model` cannot get past a voice allowlist.
Every `response_format`, whole and streamed, and the server-sent events decode (ffmpeg) to the
duration of the same speech as WAV, and the decoded mp3 and opus are still the words they were
asked to say: an offline recognizer (pocketsphinx, CMU's US English model) transcribes them."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import uuid

import openai
import pytest
import requests
from pocketsphinx import Decoder

from harness.ports import free_port
from harness.services import Envoy, Sidecar
from harness.stack import PIPER_VOICE, PIPER_VOICES
from tools import render_envoy

OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx",
                 "sage", "shimmer", "verse")
TEXT = "Hello there."
PARAGRAPH = "The quick brown fox jumps over the lazy dog. Then it ran into the woods."
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "flac": "audio/flac", "wav": "audio/wav",
                 "pcm": "audio/pcm"}
DECODE_RATE = 16000
# Words the recognizer gets right from the WAV of this voice (word error rate 0 to 0.08 there),
# so that what an encoder loses shows.
SPOKEN = ("Please call me when you get home tonight. I will leave the door open for you. "
          "The quick brown fox jumps over the lazy dog. Then it ran into the woods.")
MAX_WORD_ERROR_RATE = 0.35


def client(url: str, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0, timeout=60)


def pro_token(stack) -> str:
    """A token on the `pro` plan, whose budget holds every request of this module."""
    return stack.token(sub=f"dropin-{uuid.uuid4().hex[:8]}", plan="pro")


@pytest.mark.parametrize("voice", OPENAI_VOICES)
def test_every_openai_voice_name_speaks_through_envoy(stack, voice):
    speech = client(stack.url, pro_token(stack)).audio.speech.create(
        model="tts-1", voice=voice, input=TEXT, response_format="wav",
        extra_body={"instructions": "Speak calmly."})
    audio = speech.read()
    assert speech.response.headers["content-type"] == "audio/wav"
    assert audio[:4] == b"RIFF" and len(audio) > 10_000


def test_the_voice_listing_shows_the_alias_table(stack):
    headers = {"Authorization": f"Bearer {pro_token(stack)}"}
    listing = requests.get(f"{stack.url}/v1/audio/voices", headers=headers, timeout=10).json()
    assert listing["aliases"] == {name: PIPER_VOICE for name in OPENAI_VOICES}
    assert [voice["name"] for voice in stack.catalog["voices"]] == [voice["name"] for voice in listing["voices"]]


def test_the_filter_refuses_what_the_sidecar_would_with_the_same_code(stack):
    speech = client(stack.url, pro_token(stack)).audio.speech
    for fields, code, param in (({"voice": "nobody"}, "unknown_voice", "voice"),
                                ({"voice": "alloy", "model": "gpt-9-tts"}, "unknown_model", "model")):
        with pytest.raises(openai.BadRequestError) as refused:
            speech.create(input=TEXT, response_format="wav", **{"model": "tts-1", **fields})
        answer = refused.value.response
        assert (answer.status_code, refused.value.code, refused.value.param) == (400, code, param)
        assert "x-envoy-upstream-service-time" not in answer.headers, "answered by the filter"
        direct = requests.post(f"{stack.sidecar_url}/v1/audio/speech", timeout=30,
                               json={"input": TEXT, "model": "tts-1", **fields}).json()["error"]
        assert (direct["code"], direct["param"]) == (code, param)


@pytest.fixture(scope="module")
def dropped_in(stack):
    """A sidecar whose folder got one more voice (the Piper voice under a new name), and an Envoy
    rendered as `make run` renders it: from the sidecar's own voice listing."""
    folder = stack.root / "dropin-voices"
    folder.mkdir()
    for name in (PIPER_VOICE, "en_GB-dropped-in"):
        for suffix in (".onnx", ".onnx.json"):
            (folder / f"{name}{suffix}").symlink_to((PIPER_VOICES / f"{PIPER_VOICE}{suffix}").resolve())
    sidecar = Sidecar(stack.root / "dropin-sidecar", free_port(), folder,
                      extra_env={"VOXGATE_DEFAULT_VOICE": PIPER_VOICE, "VOXGATE_SIDECAR_WORKERS": "1"})
    envoys = []

    def envoy(voices: list[str]) -> Envoy:
        config = render_envoy.with_catalog(stack.filter_config(), render_envoy.fetch_catalog(sidecar.url))
        config["text"]["voices"] = voices
        started = Envoy(stack.root / f"dropin-envoy-{len(envoys)}", config, sidecar_port=sidecar.port,
                        jwks_port=stack.jwks_server.port).start()
        envoys.append(started)
        return started

    sidecar.start()
    try:
        yield envoy
    finally:
        for started in envoys:
            started.stop()
        sidecar.stop()


def test_a_voice_dropped_into_the_folder_is_usable_through_envoy(stack, dropped_in):
    speech = client(dropped_in([]).url, pro_token(stack)).audio.speech
    audio = speech.create(model="tts-1", voice="en_GB-dropped-in", input=TEXT, response_format="wav").read()
    assert audio[:4] == b"RIFF"
    audio = speech.create(model="en_GB-dropped-in", voice="alloy", input=TEXT, response_format="wav").read()
    assert audio[:4] == b"RIFF"


def test_model_cannot_get_past_a_voice_allowlist(stack, dropped_in):
    speech = client(dropped_in([PIPER_VOICE]).url, pro_token(stack)).audio.speech
    assert speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav").read()[:4] == b"RIFF"
    for fields, code in (({"model": "tts-1", "voice": "en_GB-dropped-in"}, "unknown_voice"),
                         ({"model": "en_GB-dropped-in", "voice": "alloy"}, "unknown_model")):
        with pytest.raises(openai.BadRequestError) as refused:
            speech.create(input=TEXT, response_format="wav", **fields)
        assert refused.value.code == code
    answer = requests.post(f"{dropped_in([PIPER_VOICE]).url}/v1/audio/speech", timeout=30,
                           headers={"Authorization": f"Bearer {pro_token(stack)}"},
                           json={"input": TEXT, "model": "en_GB-dropped-in"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, "unknown_model")


def decoded(audio: bytes, response_format: str, sample_rate: int | None = None) -> bytes:
    """What ffmpeg decodes from `audio`: 16-bit mono at DECODE_RATE (raw PCM needs its rate)."""
    raw = ["-f", "s16le", "-ar", str(sample_rate), "-ac", "1"] if response_format == "pcm" else []
    answer = subprocess.run(["ffmpeg", "-v", "error", *raw, "-i", "pipe:0", "-f", "s16le", "-ac", "1",
                             "-ar", str(DECODE_RATE), "pipe:1"], input=audio, capture_output=True, timeout=60)
    assert answer.returncode == 0 and not answer.stderr, (response_format, answer.stderr.decode())
    return answer.stdout


def decoded_seconds(audio: bytes, response_format: str, sample_rate: int) -> float:
    """Seconds of audio ffmpeg decodes from `audio`."""
    return len(decoded(audio, response_format, sample_rate)) / 2 / DECODE_RATE


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level edit distance (substitutions, insertions, deletions) over the reference's words."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        diagonal, row[0] = row[0], i
        for j, hyp_word in enumerate(hyp, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ref_word != hyp_word))
    return row[len(hyp)] / len(ref)


def test_word_error_rate_counts_edits():
    assert word_error_rate("the quick brown fox", "the quick brown fox") == 0
    assert word_error_rate("the quick brown fox", "a quick fox") == 0.5
    assert word_error_rate("one two", "") == 1


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("response_format", ["mp3", "opus"])
def test_mp3_and_opus_are_recognised_as_the_words_asked_for(stack, response_format, streamed):
    speech = client(stack.url, pro_token(stack)).audio.speech
    request = dict(model="tts-1", voice="alloy", input=SPOKEN, response_format=response_format)
    if streamed:
        with speech.with_streaming_response.create(**request, extra_body={"stream_format": "audio"}) as answer:
            audio = b"".join(answer.iter_bytes())
    else:
        audio = speech.create(**request).read()
    decoder = Decoder(samprate=DECODE_RATE, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(decoded(audio, response_format), full_utt=True)
    decoder.end_utt()
    heard = decoder.hyp().hypstr if decoder.hyp() else ""
    assert word_error_rate(SPOKEN, heard) <= MAX_WORD_ERROR_RATE, heard


@pytest.fixture(scope="module")
def reference(stack):
    """The paragraph's duration as WAV, and the voice's sample rate."""
    speech = client(stack.url, pro_token(stack)).audio.speech.create(
        model="tts-1", voice="alloy", input=PARAGRAPH, response_format="wav")
    rate = int(speech.response.headers["x-sample-rate"])
    return decoded_seconds(speech.read(), "wav", rate), rate


def assert_duration(seconds: float, reference) -> None:
    expected, _ = reference
    assert expected > 2.0
    assert abs(seconds - expected) <= 0.1 * expected, (seconds, expected)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("response_format", list(CONTENT_TYPES))
def test_every_format_decodes_to_the_expected_duration(stack, reference, response_format, streamed):
    speech = client(stack.url, pro_token(stack)).audio.speech
    request = dict(model="tts-1", voice="alloy", input=PARAGRAPH, response_format=response_format)
    if streamed:
        with speech.with_streaming_response.create(**request, extra_body={"stream_format": "audio"}) as answer:
            content_type = answer.headers["content-type"]
            audio = b"".join(answer.iter_bytes())
    else:
        answer = speech.create(**request)
        content_type, audio = answer.response.headers["content-type"], answer.read()
    assert content_type == CONTENT_TYPES[response_format]
    assert_duration(decoded_seconds(audio, response_format, reference[1]), reference)


def test_mp3_is_the_default_format(stack, reference):
    answer = client(stack.url, pro_token(stack)).audio.speech.create(model="tts-1", voice="alloy", input=PARAGRAPH)
    assert answer.response.headers["content-type"] == "audio/mpeg"
    assert_duration(decoded_seconds(answer.read(), "mp3", reference[1]), reference)


@pytest.mark.parametrize("response_format", ["mp3", "opus"])
def test_server_sent_events_carry_audio_that_decodes(stack, reference, response_format):
    answer = requests.post(f"{stack.url}/v1/audio/speech", timeout=60, stream=True,
                           headers={"Authorization": f"Bearer {pro_token(stack)}"},
                           json={"model": "tts-1", "voice": "alloy", "input": PARAGRAPH,
                                 "response_format": response_format, "stream_format": "sse"})
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/event-stream"
    events = [json.loads(line[len("data: "):]) for line in answer.iter_lines(decode_unicode=True)
              if line.startswith("data: ")]
    assert [event["type"] for event in events[-1:]] == ["speech.audio.done"]
    deltas = events[:-1]
    assert deltas and all(event["type"] == "speech.audio.delta" for event in deltas)
    audio = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert_duration(decoded_seconds(audio, response_format, reference[1]), reference)


def test_aac_is_refused_naming_the_supported_formats(stack):
    with pytest.raises(openai.BadRequestError) as refused:
        client(stack.url, pro_token(stack)).audio.speech.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="aac")
    assert (refused.value.code, refused.value.param) == ("unsupported_response_format", "response_format")
    assert "mp3, opus, flac, wav, pcm" in refused.value.message
