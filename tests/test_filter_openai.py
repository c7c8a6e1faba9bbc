"""End to end: the official `openai` Python client speaks to the sidecar through Envoy and the
filter, with a dev JWT as its API key, and reads the filter's refusals as its own error types."""

from __future__ import annotations

import uuid

import openai
import pytest

VOICE = "en_US-joe-medium"


def client(stack, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def test_openai_client_gets_speech(stack):
    token = stack.token(sub=f"openai-{uuid.uuid4().hex[:8]}")
    speech = client(stack, token).audio.speech.create(
        model="tts-1", voice=VOICE, input="The gateway checked my token and let me speak.", response_format="wav")
    audio = speech.read()
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert len(audio) > 20_000


def test_openai_client_reads_refusals_as_its_error_types(stack):
    with pytest.raises(openai.AuthenticationError) as refused:
        client(stack, "not-a-token").audio.speech.create(model="tts-1", voice=VOICE, input="Hello.")
    assert refused.value.status_code == 401
    assert refused.value.code == "token_malformed"

    token = stack.token(sub=f"openai-{uuid.uuid4().hex[:8]}")
    with pytest.raises(openai.BadRequestError) as invalid:
        client(stack, token).audio.speech.create(model="tts-1", voice="no-such-voice", input="Hello.")
    assert invalid.value.status_code == 400
    assert invalid.value.body["type"] == "invalid_request_error"
