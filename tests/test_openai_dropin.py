"""End to end: voxgate as a drop-in for OpenAI speech clients, through the real Envoy with the
shipped filter configuration. Every OpenAI voice name is an alias the filter and the sidecar
resolve alike; the filter learns the voices from the sidecar, so a voice dropped into the folder
is usable after a restart with no other edit, and `model` cannot get past a voice allowlist."""

from __future__ import annotations

import uuid

import openai
import pytest
import requests

from harness.ports import free_port
from harness.services import Envoy, Sidecar
from harness.stack import PIPER_VOICE, PIPER_VOICES
from tools import render_envoy

OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx",
                 "sage", "shimmer", "verse")
TEXT = "Hello there."


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
    assert stack.catalog["voices"] == [voice["name"] for voice in listing["voices"]]


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
