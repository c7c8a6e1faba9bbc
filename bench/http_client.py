"""Timed HTTP requests to loopback servers, and the audio length of what they answer.

Every request opens its own connection, the same way for every server measured, so no
server gains from connection reuse the other cannot have. Only loopback addresses are
accepted: benchmarks never send traffic off the machine.
"""

from __future__ import annotations

import http.client
import io
import json
import time
import urllib.parse
import wave
from dataclasses import dataclass, field

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    started: float
    """`time.monotonic()` when the request was sent."""
    first_byte_s: float
    """Seconds from sending to the first byte of the body (to the headers when it is empty)."""
    total_s: float
    """Seconds from sending to the last byte of the body."""
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300


def post_json(url: str, payload: dict, timeout_s: float, headers: dict[str, str] | None = None) -> Reply:
    """POSTs `payload` (with `headers` besides the content type); a connection failure or
    timeout becomes a reply with status 0."""
    target = urllib.parse.urlsplit(url)
    if target.hostname not in LOOPBACK_HOSTS:
        raise ValueError(f"benchmarks only talk to loopback, not {target.hostname}")
    body = json.dumps(payload).encode()
    started = time.monotonic()
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout_s)
    try:
        connection.request("POST", target.path, body=body,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        first = response.read(1)
        first_byte_s = time.monotonic() - started
        data = first + response.read()
        total_s = time.monotonic() - started
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, headers, data, started, first_byte_s, total_s)
    except (OSError, http.client.HTTPException) as error:
        elapsed = time.monotonic() - started
        return Reply(0, {}, b"", started, elapsed, elapsed, error=f"{type(error).__name__}: {error}")
    finally:
        connection.close()


def audio_seconds(reply: Reply) -> float:
    """Seconds of audio in a WAV body, or in a raw 16-bit mono PCM body whose sample rate
    is in the sidecar's `x-sample-rate` header."""
    if reply.body[:4] == b"RIFF":
        with wave.open(io.BytesIO(reply.body)) as wav:
            frame_bytes = wav.getsampwidth() * wav.getnchannels()
            return (len(reply.body) - _data_offset(reply.body)) // frame_bytes / wav.getframerate()
    return len(reply.body) / 2 / int(reply.headers["x-sample-rate"])


def _data_offset(body: bytes) -> int:
    """Offset of the samples: after the `data` chunk header (the RIFF sizes of a streamed
    WAV are placeholders, so the length comes from the body, not the header)."""
    position = 12
    while position + 8 <= len(body):
        chunk_id, size = body[position:position + 4], int.from_bytes(body[position + 4:position + 8], "little")
        if chunk_id == b"data":
            return position + 8
        position += 8 + size
    raise ValueError("WAV body without a data chunk")
