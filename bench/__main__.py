"""`python -m bench [--only KEY,KEY] [--quick]`: runs the selected benchmarks in their
numbered order and writes the report to bench-results/<UTC time>/ and bench-results/latest/.

Each benchmark is a module with `KEY`, `NUMBER`, `TITLE` and `run(ctx) -> Section`, listed in
`BENCHMARKS`; adding one is adding its module there. A benchmark that fails is reported as
failed and the run goes on; the exit status is then 1. Missed targets are results, not
failures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import (cluster_limits, cost_per_unit, encoding, filter_cost, filter_host, first_audio, flood_resilience,
               forged_tokens, report, scheduling, synthesis, throughput)
from .context import Context
from .core import Section, method_of

BENCHMARKS = {module.KEY: module for module in sorted(
    (filter_cost, synthesis, throughput, first_audio, forged_tokens, flood_resilience, cost_per_unit, encoding,
     scheduling, cluster_limits, filter_host),
    key=lambda m: m.NUMBER)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help=f"comma-separated keys of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter phases (marked in the report)")
    parser.add_argument("--results", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)

    selected = [key.strip() for key in args.only.split(",") if key.strip()] or list(BENCHMARKS)
    unknown = [key for key in selected if key not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    root = Path(__file__).resolve().parent.parent
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results = args.results if args.results.is_absolute() else root / args.results
    ctx = Context(root=root, run_dir=results / stamp, quick=args.quick)
    meta = machine_meta(root, args.quick, selected)

    whole_run = BackgroundLoad()
    sections = [run_one(ctx, BENCHMARKS[key]) for key in sorted(selected, key=lambda k: BENCHMARKS[k].NUMBER)]
    meta["total seconds"] = round(time.monotonic() - ctx.started)
    meta["background load"] = whole_run.describe()
    markdown, _ = report.write(ctx.run_dir, meta, sections)
    latest = results / "latest"
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(ctx.run_dir, latest, ignore=shutil.ignore_patterns("work"))
    print(markdown.read_text(encoding="utf-8"))
    ctx.say(f"report: {markdown} (also {latest}/report.md, report.json)")
    return 1 if any(s.error for s in sections) else 0


def run_one(ctx: Context, module) -> Section:
    ctx.say(f"{module.NUMBER}. {module.TITLE}")
    load = BackgroundLoad()
    started = time.monotonic()
    try:
        section = module.run(dataclasses.replace(ctx, benchmark=module.KEY))
    except Exception as error:  # a failed benchmark is reported, and the others still run
        traceback.print_exc()
        section = Section(module.KEY, module.NUMBER, module.TITLE, method=method_of(module.__doc__ or ""),
                          error=f"{type(error).__name__}: {error}")
    section.seconds = time.monotonic() - started
    section.conditions["background"] = load.describe()
    return section


class BackgroundLoad:
    """CPU used by other processes on the machine while a benchmark ran: all busy CPU time
    from /proc/stat less this process's and its waited-for children's. The machine may be
    shared, so every section states it."""

    def __init__(self):
        self.wall = time.monotonic()
        self.busy = _busy_seconds()
        self.own = _own_seconds()

    def describe(self) -> str:
        wall = time.monotonic() - self.wall
        other = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        return f"other processes used {max(other, 0) / wall:.2f} of {os.cpu_count()} cores on average"


def _busy_seconds() -> float:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def machine_meta(root: Path, quick: bool, selected: list[str]) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "make bench" + (f" BENCH={','.join(selected)}" if selected != list(BENCHMARKS) else "")
                   + (" QUICK=1" if quick else ""),
        "commit": _git(root, "rev-parse", "--short", "HEAD") + (" (with local changes)" if _git(root, "status", "--porcelain") else ""),
        "machine": f"{cpu}, {os.cpu_count()} cores, {memory_kib / 1024 / 1024:.0f} GiB, {platform.system()} {platform.release()}",
        "mode": "quick (fewer rounds, shorter phases: not for publishing)" if quick else "full",
        "settings from the environment": ", ".join(f"{name}={value}" for name, value in sorted(os.environ.items())
                                                   if name.startswith("VOXGATE_SIDECAR_")) or "none",
    }


def _git(root: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
