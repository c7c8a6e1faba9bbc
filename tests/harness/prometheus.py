"""Reading Prometheus text exposition (Envoy's /stats/prometheus, the sidecar's /metrics)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


def _labels(text: str) -> dict:
    labels, pos = {}, 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        if not match:
            raise ValueError(f"unparsable labels: {text!r}")
        labels[match.group(1)] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group(0)], match.group(2))
        pos = match.end()
    return labels


def parse(text: str) -> "Metrics":
    samples = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if not match:
            raise ValueError(f"unparsable metrics line: {line!r}")
        samples.append(Sample(match.group(1), _labels(match.group(2) or ""), float(match.group(3))))
    return Metrics(samples)


@dataclass(frozen=True)
class Metrics:
    samples: list

    def find(self, name: str, **labels) -> list:
        """Samples called `name` whose labels include every given label."""
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels) -> float:
        """The sum of the matching samples; KeyError when none matches, so a typo cannot read as 0."""
        found = self.find(name, **labels)
        if not found:
            known = sorted({s.name for s in self.samples if s.name.split("_")[0] == name.split("_")[0]})
            raise KeyError(f"no sample {name}{labels or ''}; similar names: {known[:20]}")
        return sum(s.value for s in found)

    def names(self) -> set:
        return {s.name for s in self.samples}
