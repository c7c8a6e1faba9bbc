"""Benchmark 4, time to first audio: a five-sentence paragraph requested with `"stream": true`
(raw PCM, so the first body byte is audio), timing the first audio byte and the last one, one
request at a time on a warm sidecar. The same request without streaming runs in alternation,
to show what the client would wait for without it.
"""

from __future__ import annotations

from .context import Context
from .core import Figure, Section, Table, Target, method_of
from .http_client import Reply, audio_seconds, post_json
from .subjects import sidecar_payload, start_sidecar
from .texts import PARAGRAPH, PARAGRAPH_SENTENCES

KEY = "first_audio"
NUMBER = 4
TITLE = "Time to first audio"
ROUNDS = 9
WARMUP = 2
REQUEST_TIMEOUT_S = 60.0


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    rounds = ctx.rounds(ROUNDS)
    with start_sidecar(ctx) as sidecar:
        url = sidecar.url("/v1/audio/speech")
        streamed_payload = sidecar_payload(PARAGRAPH, stream=True, response_format="pcm")
        complete_payload = sidecar_payload(PARAGRAPH, stream=False, response_format="pcm")

        def request(payload: dict) -> Reply:
            reply = post_json(url, payload, REQUEST_TIMEOUT_S)
            if not reply.ok or not reply.body:
                raise RuntimeError(f"sidecar answered {reply.status} {reply.error or reply.body[:200]!r}")
            return reply

        for _ in range(WARMUP):
            request(streamed_payload)
        streamed, complete = [], []
        for index in range(rounds):
            ctx.say(f"first audio: round {index + 1}/{rounds}")
            streamed.append(request(streamed_payload))
            complete.append(request(complete_payload))

    first = Figure.of([r.first_byte_s for r in streamed], "s")
    full = Figure.of([r.total_s for r in streamed], "s")
    unstreamed = Figure.of([r.total_s for r in complete], "s")
    audio = Figure.of([audio_seconds(r) for r in streamed], "s")
    share = first.ratio(full, paired=True)

    table = Table(f"{len(PARAGRAPH)} characters, {PARAGRAPH_SENTENCES} sentences, raw PCM, one request at a time; "
                  f"median (min–max) of {rounds} rounds",
                  ["request", "first audio byte", "complete response", "first ÷ complete", "audio"])
    table.add("`stream: true`", first, full, share, audio)
    table.add("`stream: false`", None, unstreamed, None, Figure.of([audio_seconds(r) for r in complete], "s"))
    section.tables.append(table)
    section.targets.append(Target("first audio byte ÷ complete streamed response", share, "<=", 0.30))
    section.notes.append("The first chunk is the first sentence's audio; it leaves with the response headers, "
                         "so the time to first byte is the time to the first sentence's audio.")
    return section
