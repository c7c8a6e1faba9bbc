"""The report of a run, written twice: Markdown for people (`report.md`) and JSON for machines
(`report.json`), from the same sections."""

from __future__ import annotations

import json
from pathlib import Path

from .core import Figure, Section


def write(run_dir: Path, meta: dict, sections: list[Section]) -> tuple[Path, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    markdown, data = run_dir / "report.md", run_dir / "report.json"
    markdown.write_text(to_markdown(meta, sections), encoding="utf-8")
    data.write_text(json.dumps(to_json(meta, sections), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return markdown, data


def to_json(meta: dict, sections: list[Section]) -> dict:
    return {
        "meta": meta,
        "benchmarks": {
            s.key: {
                "number": s.number,
                "title": s.title,
                "seconds": round(s.seconds, 1),
                "error": s.error,
                "method": s.method,
                "conditions": s.conditions,
                "tables": [{"title": t.title, "columns": t.columns, "rows": [[_cell_json(c) for c in row]
                                                                            for row in t.rows]}
                           for t in s.tables],
                "targets": [t.to_json() for t in s.targets],
                "notes": s.notes,
            }
            for s in sections
        },
    }


def to_markdown(meta: dict, sections: list[Section]) -> str:
    lines = ["# voxgate benchmarks", ""]
    lines += [f"- **{key}**: {value}" for key, value in meta.items() if not isinstance(value, (dict, list))]
    lines += ["", "## Targets", "",
              "Each result is a median over rounds with its range (min–max); each ratio compares subjects "
              "measured in this run.", "",
              "| # | benchmark | target | result |", "|---|---|---|---|"]
    for section in sections:
        if section.error:
            lines.append(f"| {section.number} | {section.title} | — | **failed**: {_escape(section.error)} |")
        for target in section.targets:
            lines.append(f"| {section.number} | {section.title} | {target.label} "
                         f"{_op(target.op)} {_threshold(target)} | **{'met' if target.met else 'missed'}**: "
                         f"{target.figure.text()} |")
    for section in sections:
        lines += ["", f"## {section.number}. {section.title}", "", section.method, ""]
        if section.error:
            lines += [f"**The benchmark failed:** {_escape(section.error)}", ""]
        for table in section.tables:
            lines += [f"*{table.title}*", "", "| " + " | ".join(table.columns) + " |",
                      "|" + "---|" * len(table.columns)]
            lines += ["| " + " | ".join(_cell_text(c) for c in row) + " |" for row in table.rows]
            lines.append("")
        lines += [f"- {note}" for note in section.notes]
        lines.append(f"- Took {section.seconds:.0f} s; background load: {section.conditions.get('background', 'n/a')}.")
    return "\n".join(lines) + "\n"


def _cell_text(cell) -> str:
    if isinstance(cell, Figure):
        return cell.text()
    if isinstance(cell, float):
        return f"{cell:.3g}"
    return "—" if cell is None else _escape(str(cell))


def _cell_json(cell):
    return cell.to_json() if isinstance(cell, Figure) else cell


def _op(op: str) -> str:
    return {"<=": "≤", ">=": "≥"}[op]


def _threshold(target) -> str:
    unit = target.figure.unit
    return f"{target.threshold:g}{'×' if unit == '×' else (' ' + unit if unit else '')}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
