"""End to end: one set of request rules. Each request of the table goes to the sidecar directly
and through the real Envoy with the shipped configuration (a fresh `pro` subject each, so no
budget decides): wherever the filter admits a request the sidecar answers it too, and every
refusal of a request rule has the same status, code and `param` on both sides. Only the
gateway's own policy (deny patterns, parameters in two places, bodies on GET) is the filter's
alone, and the sidecar never sees those requests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
import requests

from harness.stack import PIPER_VOICE

SPEECH = "/v1/audio/speech"
COQUI = "/api/tts"
JSON_TYPE = "application/json"
FORM = "application/x-www-form-urlencoded"
TEXT = "Hi there."
MULTI = "coqui_vits_multispeaker"


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    content_type: str | None
    body: bytes


def speech(name: str, fields: dict, content_type: str | None = JSON_TYPE) -> Case:
    return Case(name, "POST", SPEECH, content_type, json.dumps({"model": "tts-1", **fields}).encode())


def raw(name: str, body: bytes, content_type: str | None = JSON_TYPE, path: str = SPEECH) -> Case:
    return Case(name, "POST", path, content_type, body)


def coqui(name: str, query: str) -> Case:
    return Case(name, "GET", f"{COQUI}?{query}", None, b"")


CASES = [
    # What clients send: the OpenAI client's defaults, Open WebUI, Home Assistant, SillyTavern.
    speech("openai_default_mp3", {"voice": "alloy", "input": TEXT}),
    speech("openai_wav_speed", {"voice": "nova", "input": TEXT, "response_format": "wav", "speed": 1.25}),
    speech("open_webui_upper_case_format", {"voice": "shimmer", "input": TEXT, "response_format": "MP3"}),
    speech("instructions_ignored", {"voice": "coral", "input": TEXT, "instructions": "Whisper.",
                                    "model": "gpt-4o-mini-tts"}),
    speech("model_names_the_voice", {"model": PIPER_VOICE, "input": TEXT, "response_format": "wav"}),
    speech("stream_sse", {"voice": "alloy", "input": TEXT, "stream_format": "sse"}),
    speech("stream_audio_opus", {"voice": "echo", "input": TEXT, "stream": True, "response_format": "opus"}),
    speech("speaker_index_zero", {"input": TEXT, "speaker": 0, "response_format": "wav"}),
    coqui("coqui_get", "text=Hi+there."),
    Case("coqui_form", "POST", COQUI, FORM, b"text=Hi+there.&speaker_id=&language_id=en"),
    Case("coqui_json", "POST", COQUI, JSON_TYPE, json.dumps({"text": TEXT, "style_wav": ""}).encode()),
    # Fields: presence, types, ranges.
    speech("missing_input", {"voice": "alloy"}),
    speech("null_input", {"input": None}),
    speech("input_number", {"input": 5}),
    speech("input_empty", {"input": ""}),
    speech("input_blank", {"input": " \t\n"}),
    speech("input_too_long", {"input": "a" * 4097}),
    speech("input_bidi_override", {"input": "abc\u202edef"}),
    speech("input_bell", {"input": "Bell \u0007 here."}),
    speech("input_zero_width", {"input": "a\u200bb"}),
    speech("speed_low", {"input": TEXT, "speed": 0.1}),
    speech("speed_high", {"input": TEXT, "speed": 5}),
    speech("speed_string", {"input": TEXT, "speed": "fast"}),
    speech("format_aac", {"input": TEXT, "response_format": "aac"}),
    speech("format_unknown", {"input": TEXT, "response_format": "ogg"}),
    speech("format_number", {"input": TEXT, "response_format": 3}),
    speech("stream_string", {"input": TEXT, "stream": "yes"}),
    speech("stream_format_unknown", {"input": TEXT, "stream_format": "events"}),
    speech("voice_unknown", {"input": TEXT, "voice": "nobody"}),
    speech("voice_number", {"input": TEXT, "voice": 3}),
    speech("model_unknown", {"input": TEXT, "model": "whisper-1"}),
    speech("model_number", {"input": TEXT, "model": 1}),
    speech("speaker_negative", {"input": TEXT, "speaker": -1}),
    speech("several_faults", {"input": "", "speed": 9, "voice": "nobody"}),
    # Speakers: of the voice the request resolves to, by name or index.
    speech("speaker_beyond_a_single_speaker", {"input": TEXT, "speaker": 5}),
    speech("speaker_one_of_alloy", {"voice": "alloy", "input": TEXT, "speaker": "1"}),
    speech("speaker_by_name", {"voice": MULTI, "input": TEXT, "speaker": "spk_b", "response_format": "wav"}),
    speech("speaker_by_index_via_model", {"model": MULTI, "input": TEXT, "speaker": 2, "response_format": "wav"}),
    speech("speaker_index_out_of_range", {"voice": MULTI, "input": TEXT, "speaker": 3}),
    speech("speaker_unknown_name", {"voice": MULTI, "input": TEXT, "speaker": "nobody"}),
    # Paths: a speech API is served at its own path only.
    raw("speech_trailing_slash", json.dumps({"input": TEXT}).encode(), path=SPEECH + "/"),
    raw("speech_sub_path", json.dumps({"input": TEXT}).encode(), path=SPEECH + "/more"),
    Case("coqui_trailing_slash", "GET", f"{COQUI}/?text=Hi", None, b""),
    # Bodies.
    raw("malformed_json", b'{"input": "Hi'),
    raw("top_level_array", b'["Hi"]'),
    raw("empty_body", b""),
    raw("duplicate_input", b'{"input": "Hi.", "input": "Other."}'),
    raw("invalid_utf8", b'{"input": "caf\xc3"}'),
    raw("text_plain", b'{"input": "Hi."}', content_type="text/plain"),
    raw("form_to_openai", b"input=Hi", content_type=FORM),
    raw("latin1_charset", b'{"input": "Hi."}', content_type="application/json; charset=latin1"),
    raw("no_content_type", b'{"input": "Hi."}', content_type=None),
    # Coqui parameters.
    coqui("coqui_missing_text", "speaker_id=1"),
    coqui("coqui_empty_text", "text=+++"),
    coqui("coqui_bad_escape", "text=%zz"),
    coqui("coqui_repeated_text", "text=a&text=b"),
    coqui("coqui_unknown_voice", "text=Hi&voice=nobody"),
    coqui("coqui_zero_width", "text=a%E2%80%8Bb"),
    coqui("coqui_language_the_voice_speaks", "text=Hi&language_id=en-US"),
    coqui("coqui_language_the_voice_does_not_speak", "text=Hi&language_id=de"),
    coqui("coqui_language_of_another_voice", "text=Hi&voice=coqui_vits_chars&language_id=en-gb"),
    coqui("coqui_speaker_by_name", f"text=Hi&voice={MULTI}&speaker_id=spk_c"),
    coqui("coqui_speaker_out_of_range", f"text=Hi&voice={MULTI}&speaker_id=7"),
    coqui("coqui_speaker_of_a_single_speaker_voice", "text=Hi&speaker_id=p225"),
    raw("coqui_json_negative_speaker", json.dumps({"text": TEXT, "speaker_id": -1}).encode(), path=COQUI),
    raw("coqui_json_style_wav_number", json.dumps({"text": TEXT, "style_wav": 1}).encode(), path=COQUI),
    raw("coqui_text_plain", b"text=Hi", content_type="text/plain", path=COQUI),
    raw("coqui_form_without_type", b"text=Hi", content_type=None, path=COQUI),
]


def send(url: str, case: Case, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    return requests.request(case.method, url + case.path, data=case.body, headers=headers, timeout=60)


def verdict(response: requests.Response) -> tuple:
    if response.status_code == 200:
        return (200,)
    error = response.json()["error"]
    return response.status_code, error["code"], error["param"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_filter_and_the_sidecar_answer_alike(stack, case):
    token = stack.token(sub=f"rules-{uuid.uuid4().hex[:8]}", plan="pro")
    through_envoy = send(stack.url, case, token)
    direct = send(stack.sidecar_url, case, None)
    assert verdict(through_envoy) == verdict(direct), (through_envoy.text[:300], direct.text[:300])
    if through_envoy.status_code != 200:
        assert "x-envoy-upstream-service-time" not in through_envoy.headers, "the filter let it through"
