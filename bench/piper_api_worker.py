"""piper-tts's Python API timed the way `rtf_floor` times ONNX Runtime, for the synthesis benchmark.

Runs under the benchmark venv (.deps/bench-venv), where piper-tts is installed. The voice is
built from its own parts instead of `PiperVoice.load`, only so the ONNX session gets the same
options as the sidecar's: `intra_op_threads` threads, one inter-op thread, full graph
optimization, no memory patterns, no spinning. A round is `PiperVoice.synthesize` over the
whole text plus the 16-bit PCM conversion its HTTP server does, so it covers what the
sidecar's request does: phonemes, ids, one model run per sentence, samples out.

Protocol (the same as `rtf_floor`): one JSON line describing the setup once loaded and warm,
then one timed round per line read on stdin, answered by `{"synthesis_seconds",
"audio_seconds"}`; exit at the end of stdin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import onnxruntime
from piper import PiperVoice
from piper.config import PiperConfig


def load_voice(model: Path, intra_op_threads: int) -> PiperVoice:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(str(model), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    config = json.loads(Path(f"{model}.json").read_text(encoding="utf-8"))
    return PiperVoice(session=session, config=PiperConfig.from_dict(config))


def synthesize(voice: PiperVoice, text: str) -> dict:
    started = time.perf_counter()
    samples = 0
    for chunk in voice.synthesize(text):
        samples += len(chunk.audio_int16_bytes) // 2
    return {"synthesis_seconds": time.perf_counter() - started,
            "audio_seconds": samples / voice.config.sample_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="Piper NAME.onnx (NAME.onnx.json beside it)")
    parser.add_argument("--text-file", type=Path, required=True)
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    voice = load_voice(args.model, args.intra_op_threads)
    text = args.text_file.read_text(encoding="utf-8")
    for _ in range(args.warmup):
        synthesize(voice, text)
    print(json.dumps({"onnxruntime": onnxruntime.__version__, "intra_op_threads": args.intra_op_threads,
                      "sentences": len(voice.phonemize(text))}), flush=True)
    for _ in sys.stdin:
        print(json.dumps(synthesize(voice, text)), flush=True)


if __name__ == "__main__":
    main()
