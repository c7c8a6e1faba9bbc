"""Every relative link in README.md and docs/*.md resolves, and README.md stays a short front door.

A link `[text](target)` (or an image, or a reference definition `[id]: target`) that is not
http(s) or mailto must name a file or folder that exists relative to the linking file; a
`#anchor` must be the slug of a heading in the target (or in the same file for `#anchor` alone),
under GitHub's rules: lowercase, every character but letters, digits, spaces, hyphens and
underscores dropped, spaces turned into hyphens, and `-1`, `-2`, … appended to repeated slugs.
Links and headings inside fenced code blocks and inline code do not count. Pure Python: no
processes, no network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 15_000

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})[ \t]+(.*?)[ \t]*(?:[ \t]#+[ \t]*)?$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the text may hold one level of brackets.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s()]*(?:\([^\s()]*\)[^\s()]*)*)(?:\s+[\"'(].*?[\"')])?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1."""
    lines: list[tuple[int, str]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                continue
            lines.append((number, line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and line.strip() == match.group(1):
            fence = None
    return lines


def slugify(heading: str) -> str:
    """GitHub's anchor for a heading's text (without its uniqueness suffix)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result: set[str] = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = slugify(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            found.append((number, definition.group(1)))
            continue
        line = INLINE_CODE.sub("", line)
        found.extend((number, match.group(1)) for match in INLINE_LINK.finditer(line))
    return [(number, target.strip("<>")) for number, target in found]


def broken_links(path: Path) -> list[str]:
    problems: list[str] = []
    name = path.relative_to(ROOT)
    for number, target in links(path):
        if not target or EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{name}:{number}: {target}: {file_part} does not exist")
            continue
        if anchor and linked.is_file() and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{name}:{number}: {target}: no heading in {linked.relative_to(ROOT)} "
                            f"has the anchor #{anchor}")
    return problems


def test_slugs_follow_github_rules():
    assert slugify("The filter: configuration, decisions, metrics") == "the-filter-configuration-decisions-metrics"
    assert slugify("Authentication (`auth`)") == "authentication-auth"
    assert slugify("Rate limits (`rate_limits`)") == "rate-limits-rate_limits"
    assert slugify("`jwt_authn` providers") == "jwt_authn-providers"
    assert slugify("Envoy's own answers") == "envoys-own-answers"
    assert slugify("`GET|POST /api/tts` (Coqui TTS server)") == "getpost-apitts-coqui-tts-server"
    assert slugify("VoxgateSidecarSaturated") == "voxgatesidecarsaturated"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n## Tests\n```\n# Tests\n```\n## Tests\n### Tests\n", encoding="utf-8")
    assert anchors(page) == {"a", "tests", "tests-1", "tests-2"}


def test_links_in_code_are_not_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](a.md) `[b](b.md)`\n```\n[c](c.md)\n```\n[d](d.md#x \"title\")\n",
                    encoding="utf-8")
    assert [target for _, target in links(page)] == ["a.md", "d.md#x"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    size = README.stat().st_size
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; reference material belongs in docs/"
