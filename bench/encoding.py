"""Benchmark 8, encoding cost by format: the sidecar's CPU for a five-sentence paragraph in each
`response_format`, one complete request at a time, the formats taking turns each round. Raw PCM
is the baseline: its CPU is synthesis alone, so a format's encoding cost is its CPU minus the
PCM request's of the same round, per audio second (the `x-voxgate-audio-seconds` the sidecar
reports), and as a share of the synthesis CPU. Then time to the first audio byte of the same
paragraph streamed (`"stream": true`) as mp3 and opus against streamed wav, in alternation; the
first chunk of every format leaves only once the first sentence is synthesized and encoded.
CPU is the sidecar process group's, read around each request.
"""

from __future__ import annotations

from .context import Context
from .core import Figure, Section, Table, Target, method_of, turns
from .http_client import Reply, post_json
from .subjects import sidecar_payload, start_sidecar
from .texts import PARAGRAPH, PARAGRAPH_SENTENCES

KEY = "encoding"
NUMBER = 8
TITLE = "Encoding cost and first audio by format"
ROUNDS = 7
WARMUP = 1
REQUEST_TIMEOUT_S = 120.0
BASELINE = "pcm"
FORMATS = ("pcm", "wav", "flac", "mp3", "opus")
STREAMED = ("wav", "mp3", "opus")
# What the encoders may add, and how much later the first audio may be, for the lossy formats
# clients ask for most.
SHARE_TARGET = 0.05
FIRST_AUDIO_TARGET = 1.1
# A tenant with a budget it never reaches, so that the sidecar reports the audio it made.
TENANT = {"x-voxgate-tenant": "bench", "x-voxgate-audio-budget": "100000",
          "x-voxgate-audio-capacity": "100000"}


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    rounds = ctx.rounds(ROUNDS)
    cpu: dict[str, list[float]] = {f: [] for f in FORMATS}
    audio: dict[str, list[float]] = {f: [] for f in FORMATS}
    first_byte: dict[str, list[float]] = {f: [] for f in STREAMED}

    with start_sidecar(ctx) as sidecar:
        url = sidecar.url("/v1/audio/speech")

        def request(response_format: str, stream: bool) -> tuple[Reply, float]:
            before = sidecar.cpu_seconds()
            reply = post_json(url, sidecar_payload(PARAGRAPH, stream=stream, response_format=response_format),
                              REQUEST_TIMEOUT_S, TENANT)
            spent = sidecar.cpu_seconds() - before
            if not reply.ok or not reply.body:
                raise RuntimeError(f"{response_format}: sidecar answered {reply.status} "
                                   f"{reply.error or reply.body[:200]!r}")
            return reply, spent

        for response_format in FORMATS:
            for _ in range(WARMUP):
                request(response_format, stream=False)
        for index in range(rounds):
            ctx.say(f"encoding: round {index + 1}/{rounds}")
            for response_format in turns(FORMATS, index):
                reply, spent = request(response_format, stream=False)
                cpu[response_format].append(spent)
                audio[response_format].append(float(reply.headers["x-voxgate-audio-seconds"]))
            for response_format in turns(STREAMED, index):
                reply, _ = request(response_format, stream=True)
                first_byte[response_format].append(reply.first_byte_s)

    synthesis = [c / a for c, a in zip(cpu[BASELINE], audio[BASELINE])]
    table = Table(f"{len(PARAGRAPH)} characters, {PARAGRAPH_SENTENCES} sentences, complete responses; "
                  f"median (min–max) of {rounds} rounds",
                  ["format", "CPU per audio second", "encoding CPU per audio second", "encoding ÷ synthesis"])
    for response_format in FORMATS:
        per_second = [c / a for c, a in zip(cpu[response_format], audio[response_format])]
        encoding = [p - s for p, s in zip(per_second, synthesis)]
        share = Figure.of([e / s for e, s in zip(encoding, synthesis)])
        table.add(f"`{response_format}`", Figure.of(per_second, "s"),
                  None if response_format == BASELINE else Figure.of(encoding, "s"),
                  None if response_format == BASELINE else share)
        if response_format in ("mp3", "opus"):
            section.targets.append(Target(f"{response_format} encoding CPU ÷ synthesis CPU", share, "<=",
                                          SHARE_TARGET))
    section.tables.append(table)

    wav_first = Figure.of(first_byte["wav"], "s")
    streamed = Table(f"the same paragraph with `\"stream\": true`; median (min–max) of {rounds} rounds",
                     ["format", "first audio byte", "÷ wav"])
    for response_format in STREAMED:
        figure = Figure.of(first_byte[response_format], "s")
        ratio = None if response_format == "wav" else figure.ratio(wav_first, paired=True)
        streamed.add(f"`{response_format}`", figure, ratio)
        if ratio is not None:
            section.targets.append(Target(f"{response_format} first audio ÷ wav first audio", ratio, "<=",
                                          FIRST_AUDIO_TARGET))
    section.tables.append(streamed)
    section.notes.append("Encoding differences of a few percent are within the round-to-round spread of "
                         "synthesis itself (Piper's noise makes each round's audio differ slightly); the "
                         "paired per-round subtraction keeps machine load out of them.")
    return section
