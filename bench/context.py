"""What the runner hands each benchmark: where things are, where results and logs go, how
long to measure, and a progress line printer."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Context:
    root: Path
    """The repository root."""
    run_dir: Path
    """This run's results folder (report and logs)."""
    quick: bool = False
    """Fewer rounds and shorter phases, for trying a benchmark out; the report says so."""
    benchmark: str = ""
    """The key of the benchmark running, which names its logs."""
    started: float = field(default_factory=time.monotonic)

    @property
    def deps(self) -> Path:
        return self.root / ".deps"

    @property
    def voices_dir(self) -> Path:
        return Path(os.environ.get("VOXGATE_VOICES_DIR", self.deps / "voices"))

    @property
    def work_dir(self) -> Path:
        path = self.run_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_path(self, name: str) -> Path:
        return self.run_dir / "logs" / f"{self.benchmark or 'bench'}-{name}.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("ORT_DYLIB_PATH", str(self.deps / "lib" / "libonnxruntime.so"))
        return env

    def seconds(self, full: float) -> float:
        """A phase's duration: `full`, or a quarter of it (at least 3 s) in a quick run."""
        return max(full / 4, 3.0) if self.quick else full

    def rounds(self, full: int) -> int:
        """A figure's round count: `full`, or 2 in a quick run (a spread needs two)."""
        return min(full, 2) if self.quick else full

    def say(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)
