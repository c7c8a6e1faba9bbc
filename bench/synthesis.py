"""Benchmark 2, synthesis speed: the real-time factor (synthesis seconds per audio second) and
peak memory for the Joe voice on one paragraph, one request at a time, warm.

Subjects: the floor (`rtf_floor`: ONNX Runtime runs for the paragraph's ids, sessions set up
as the sidecar's), the sidecar end to end over HTTP (client-side time, from sending the request
to the last byte of the WAV), and piper-tts's Python API in-process (no HTTP at all, which
favours it). The three run in alternation, one round each in turn with the starting subject
rotating, so a burst of load on the shared machine hits all of them alike; ratios pair each
round with its neighbours.
"""

from __future__ import annotations

from contextlib import ExitStack

from .context import Context
from .core import Figure, Section, Table, Target, method_of, turns
from .http_client import audio_seconds, post_json
from .subjects import sidecar_payload, start_floor, start_piper_api, start_sidecar
from .texts import PARAGRAPH

KEY = "synthesis"
NUMBER = 2
TITLE = "Synthesis speed"
ROUNDS = 12
SIDECAR_WARMUP = 2
REQUEST_TIMEOUT_S = 60.0
MIB = 1024 * 1024


def run(ctx: Context) -> Section:
    section = Section(KEY, NUMBER, TITLE, method=method_of(__doc__))
    text_file = ctx.work_dir / "paragraph.txt"
    text_file.write_text(PARAGRAPH, encoding="utf-8")
    rounds = ctx.rounds(ROUNDS)

    with ExitStack() as stack:
        ctx.say("synthesis: starting the floor, the sidecar and piper-tts (API)")
        floor = stack.enter_context(start_floor(ctx, text_file))
        piper = stack.enter_context(start_piper_api(ctx, text_file))
        sidecar = stack.enter_context(start_sidecar(ctx))
        payload = sidecar_payload(PARAGRAPH)

        def sidecar_round() -> dict:
            reply = post_json(sidecar.url("/v1/audio/speech"), payload, REQUEST_TIMEOUT_S)
            if not reply.ok:
                raise RuntimeError(f"sidecar answered {reply.status} {reply.error or reply.body[:200]!r}")
            return {"synthesis_seconds": reply.total_s, "audio_seconds": audio_seconds(reply)}

        for _ in range(SIDECAR_WARMUP):
            sidecar_round()
        subjects = {"floor": (floor, floor.round), "sidecar": (sidecar, sidecar_round),
                    "piper-tts": (piper, piper.round)}
        order = list(subjects)
        results: dict[str, list[dict]] = {name: [] for name in order}
        for index in range(rounds):
            ctx.say(f"synthesis: round {index + 1}/{rounds}")
            for name in turns(order, index):
                process, one_round = subjects[name]
                cpu_before = process.cpu_seconds()
                result = one_round()
                result["cpu_seconds"] = process.cpu_seconds() - cpu_before
                results[name].append(result)
        peaks = {name: process.memory()["peak"] for name, (process, _) in subjects.items()}
        section.conditions = {"floor": floor.setup, "piper-tts": piper.setup, "rounds": rounds,
                              "paragraph_chars": len(PARAGRAPH)}

    rtf = {name: Figure.of([r["synthesis_seconds"] / r["audio_seconds"] for r in rows])
           for name, rows in results.items()}
    cpu_rtf = {name: Figure.of([r["cpu_seconds"] / r["audio_seconds"] for r in rows])
               for name, rows in results.items()}
    audio = {name: Figure.of([r["audio_seconds"] for r in rows], "s") for name, rows in results.items()}
    synth = {name: Figure.of([r["synthesis_seconds"] for r in rows], "s") for name, rows in results.items()}
    memory = {name: Figure.of([peak / MIB], "MiB") for name, peak in peaks.items()}
    vs_floor = {name: rtf[name].ratio(rtf["floor"], paired=True) for name in rtf}

    table = Table(f"Joe voice, {len(PARAGRAPH)}-character paragraph, one request at a time, warm; "
                  f"median (min–max) of {rounds} rounds",
                  ["subject", "real-time factor", "× floor", "synthesis", "audio", "CPU s per audio s",
                   "CPU × floor", "peak RSS"])
    labels = {"floor": "ONNX Runtime run only (floor)", "sidecar": "voxgate sidecar, HTTP end to end",
              "piper-tts": "piper-tts 1.8.0 Python API"}
    for name in order:
        table.add(labels[name], rtf[name], vs_floor[name], synth[name], audio[name], cpu_rtf[name],
                  cpu_rtf[name].ratio(cpu_rtf["floor"], paired=True), memory[name])
    section.tables.append(table)

    section.targets += [
        Target("sidecar RTF ÷ floor RTF", vs_floor["sidecar"], "<=", 1.05),
        Target("sidecar RTF ÷ piper-tts RTF", rtf["sidecar"].ratio(rtf["piper-tts"], paired=True), "<=", 1.0),
    ]
    section.notes += [
        "Every subject uses one ONNX Runtime 1.32.0 intra-op thread, one inter-op thread, full graph "
        "optimization and no spinning; the floor and the sidecar load the sidecar's default pool "
        f"({floor.setup['sessions_per_voice']} sessions), piper-tts one session.",
        "Audio lengths differ a little between rounds and subjects because the voice's duration noise "
        "is random (noise_w), and piper-tts's patched espeak-ng phonemizes slightly differently; "
        "the real-time factor divides that out.",
        "CPU seconds are the whole process group's (all threads, the sidecar's phonemizer processes "
        "included, from /proc, 10 ms ticks), read around each "
        "round: unlike wall time they hardly move when other programs load the machine, so they confirm "
        "or correct the wall-clock ratios on a busy machine. The floor's include the process's idle "
        "threads, the sidecar's its HTTP server, piper-tts's the Python interpreter.",
        "Peak RSS is VmHWM after all rounds, summed over the process group (the sidecar's phonemizer "
        "processes included).",
    ]
    return section
