"""The programs the synthesis benchmarks measure, each started with the settings that make
them comparable: the voxgate sidecar, the raw ONNX Runtime floor (`rtf_floor`), and piper-tts
(its Python API, and its own HTTP server), all on the same Joe voice files.

Comparability rules, applied here once for every benchmark:
- one intra-op thread per ONNX session everywhere we choose it (the sidecar's default);
  piper's HTTP server is run as shipped, since it has no option for threads;
- no silence added between sentences (the sidecar's `--sentence-gap-ms 0`; piper's default),
  so audio seconds are the model's output only;
- the voice's own noise and length scales everywhere (nobody overrides them).
"""

from __future__ import annotations

from pathlib import Path

from .context import Context
from .processes import RoundWorker, Server, free_port

JOE = "en_US-joe-medium"
SIDECAR_FLAGS = ["--sentence-gap-ms", "0"]
READY_TIMEOUT_S = 120.0


def sidecar_binary(ctx: Context) -> Path:
    return ctx.root / "target" / "release" / "voxgate-sidecar"


def bench_python(ctx: Context) -> Path:
    return ctx.deps / "bench-venv" / "bin" / "python"


def joe_model(ctx: Context) -> Path:
    return ctx.voices_dir / f"{JOE}.onnx"


def start_sidecar(ctx: Context, *flags: str, name: str = "sidecar") -> Server:
    """The sidecar with its defaults plus `SIDECAR_FLAGS`, then `flags`."""
    port = free_port()
    argv = [str(sidecar_binary(ctx)), "--bind", "127.0.0.1", "--port", str(port),
            "--voices-dir", str(ctx.voices_dir), "--default-voice", JOE, *SIDECAR_FLAGS, *flags]
    server = Server(name, argv, port, ctx.log_path(name), ctx.env())
    server.wait_ready("/readyz", READY_TIMEOUT_S)
    return server


def sidecar_payload(text: str, stream: bool = False, response_format: str = "wav") -> dict:
    return {"model": "tts-1", "voice": JOE, "input": text, "response_format": response_format, "stream": stream}


def start_piper_http(ctx: Context) -> Server:
    port = free_port()
    argv = [str(bench_python(ctx)), "-m", "piper.http_server", "--host", "127.0.0.1", "--port", str(port),
            "--model", str(joe_model(ctx))]
    server = Server("piper-http", argv, port, ctx.log_path("piper-http"), ctx.env())
    server.wait_ready("/info", READY_TIMEOUT_S)
    return server


def piper_payload(text: str) -> dict:
    return {"text": text}


def start_floor(ctx: Context, text_file: Path) -> RoundWorker:
    argv = [str(ctx.root / "target" / "release" / "examples" / "rtf_floor"),
            "--voices-dir", str(ctx.voices_dir), "--default-voice", JOE, "--text-file", str(text_file)]
    return RoundWorker("floor", argv, ctx.log_path("floor"), ctx.env())


def start_piper_api(ctx: Context, text_file: Path) -> RoundWorker:
    argv = [str(bench_python(ctx)), str(ctx.root / "bench" / "piper_api_worker.py"),
            "--model", str(joe_model(ctx)), "--text-file", str(text_file), "--intra-op-threads", "1"]
    return RoundWorker("piper-api", argv, ctx.log_path("piper-api"), ctx.env())
