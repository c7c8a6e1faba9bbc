"""What every benchmark produces: figures measured over rounds, ratios between them, targets
judged against them, and the section of the report that holds them.

A figure is never a single measurement: it keeps every round's value and is shown as the
median with the range (min–max) beside it. A ratio between two figures of the same run is
itself a figure: paired round by round when the subjects ran in alternation, otherwise the
ratio of medians bounded by the extremes.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Figure:
    """One quantity over repeated rounds."""

    values: tuple[float, ...]
    unit: str = ""
    low_override: float | None = None
    high_override: float | None = None

    @staticmethod
    def of(values: Sequence[float], unit: str = "") -> "Figure":
        """Rounds without a value (NaN, e.g. a latency of no requests) are left out; a figure
        with no value left is shown as missing."""
        kept = tuple(float(v) for v in values if not math.isnan(v))
        return Figure(kept or (math.nan,), unit)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def low(self) -> float:
        return min(self.values) if self.low_override is None else self.low_override

    @property
    def high(self) -> float:
        return max(self.values) if self.high_override is None else self.high_override

    def ratio(self, baseline: "Figure", paired: bool) -> "Figure":
        """This figure divided by `baseline`. Paired: round i over round i (the subjects ran
        in alternation, so each pair saw the same machine load). Unpaired, or when rounds
        without a value leave the two with different round counts: the ratio of the medians,
        with the widest range the rounds allow."""
        if paired and len(self.values) == len(baseline.values):
            return Figure.of([_divide(a, b) for a, b in zip(self.values, baseline.values)], "×")
        return Figure((_divide(self.median, baseline.median),), "×",
                      _divide(self.low, baseline.high), _divide(self.high, baseline.low))

    def text(self, digits: int = 3) -> str:
        """`median (low–high)`, or just the value when there is one round."""
        if math.isnan(self.median):
            return "—"
        unit = f" {self.unit}" if self.unit and self.unit != "×" else self.unit
        main = _number(self.median, digits)
        if len(self.values) == 1 and self.low_override is None:
            return f"{main}{unit}"
        return f"{main}{unit} ({_number(self.low, digits)}–{_number(self.high, digits)})"

    def to_json(self) -> dict:
        return {"median": _finite(self.median), "min": _finite(self.low), "max": _finite(self.high),
                "rounds": [_finite(v) for v in self.values], "unit": self.unit}


@dataclass(frozen=True)
class Target:
    """A claim judged on the median of a figure: `figure op threshold`."""

    label: str
    figure: Figure
    op: str
    threshold: float

    @property
    def met(self) -> bool:
        value = self.figure.median
        if math.isnan(value):
            return False
        return value <= self.threshold if self.op == "<=" else value >= self.threshold

    def to_json(self) -> dict:
        return {"label": self.label, "met": self.met, "op": self.op, "threshold": self.threshold,
                "figure": self.figure.to_json()}


Cell = str | Figure | int | float | None


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))


@dataclass
class Section:
    """One benchmark's part of the report."""

    key: str
    number: int
    title: str
    method: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    conditions: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def method_of(doc: str) -> str:
    """A benchmark's method for the report: its module docstring after the
    `Benchmark N, title:` lead-in, on one line."""
    method = " ".join(doc.strip().split(": ", 1)[-1].split())
    return method[:1].upper() + method[1:]


def turns(subjects: Sequence[str], round_index: int) -> list[str]:
    """The order the subjects take turns in during round `round_index`: each round starts with
    the next one, so none always runs first (on a cold cache) or last (after the others' load)."""
    start = round_index % len(subjects)
    return [*subjects[start:], *subjects[:start]]


def percentile(values: Sequence[float], fraction: float) -> float:
    """Linear-interpolated percentile (`fraction` in [0, 1]); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def _divide(a: float, b: float) -> float:
    return a / b if b else math.nan


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: float, digits: int) -> str:
    """About `digits` significant digits, without exponents."""
    if math.isnan(value):
        return "n/a"
    magnitude = math.floor(math.log10(abs(value))) + 1 if value else 1
    return f"{value:.{max(digits - magnitude, 0)}f}"
