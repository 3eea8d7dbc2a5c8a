"""The documentation stays current and whole: README.md is the short first page (set-up first, ≤ 300 lines),
every AMS_* variable is documented with its default on the page that holds the configuration table, every
generated block lives on exactly one page, and every relative link and image of README.md and docs/ resolves."""
import collections
import os
import re

from ams.docblocks import page_of, pages
from tools.config_table import render_readme

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
README_MAX_LINES = 300

LINK = re.compile(r"(!?)\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
BLOCK_BEGIN = re.compile(r"<!-- ([A-Za-z0-9_-]+):begin -->")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _prose(text: str) -> str:
    """`text` without fenced code blocks and inline code: what Markdown renders as links and headings."""
    return INLINE_CODE.sub("code", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters of any script kept), spaces → '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    """Every heading anchor of the page at `path`, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: collections.Counter[str] = collections.Counter()
    anchors = set()
    for match in HEADING.finditer(FENCE.sub("", _read(path))):
        slug = _slug(match.group(2))
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def _links(path: str) -> list[tuple[bool, str]]:
    """(is an image, target) for every Markdown link and image on the page at `path`."""
    return [(bang == "!", target) for bang, target in LINK.findall(_prose(_read(path)))]


def _relative_links(path: str) -> list[tuple[bool, str, str]]:
    """(is an image, the file it points at, its #anchor or '') for every link to a file of this repository."""
    out = []
    for image, target in _links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
            continue          # http(s):, mailto: and the like
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        out.append((image, resolved, anchor))
    return out


def test_readme_starts_with_the_two_set_up_commands():
    text = _read(README)
    first_section = text.split("\n## ")[0]
    assert text.startswith("# AMS") and "make demo" in first_section and "make test" in first_section


def test_readme_is_short():
    with open(README, encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move sections to docs/"


def test_config_table_is_current():
    path = page_of("config-table")
    text = _read(path)
    assert render_readme(text) == text, (
        f"{_rel(path)}'s configuration table is stale: run python -m tools.config_table --readme")


def test_every_generated_block_is_on_exactly_one_page():
    holders: dict[str, list[str]] = collections.defaultdict(list)
    for path in pages(ROOT):
        text = _read(path)
        for name in BLOCK_BEGIN.findall(text):
            holders[name].append(_rel(path))
            assert text.count(f"<!-- {name}:end -->") == 1, f"{_rel(path)}: block {name!r} has no single end marker"
            assert text.index(f"<!-- {name}:begin -->") < text.index(f"<!-- {name}:end -->")
    assert {"eval", "eval-long", "codec", "fleet", "fuzz", "chaos", "config-table", "streamdeq-bench",
            "lowlatency-bench"} <= set(holders)
    assert {name: where for name, where in holders.items() if len(where) != 1} == {}


def test_every_relative_link_resolves():
    broken = []
    for path in pages(ROOT):
        for _, target, anchor in _relative_links(path):
            if not os.path.exists(target):
                broken.append(f"{_rel(path)}: {_rel(target)} does not exist")
            elif anchor and target.endswith(".md") and anchor not in _anchors(target):
                broken.append(f"{_rel(path)}: {_rel(target)} has no heading #{anchor}")
    assert broken == []


def test_every_image_resolves_and_every_figure_is_shown():
    shown = set()
    for path in pages(ROOT):
        for image, target, _ in _relative_links(path):
            if image:
                assert os.path.isfile(target), f"{_rel(path)}: image {_rel(target)} does not exist"
                shown.add(target)
    assert shown, "no page shows an image"
    figures = {os.path.join(ROOT, "docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".png")}
    assert figures <= shown, f"figures under docs/ no page shows: {sorted(_rel(p) for p in figures - shown)}"


def test_the_link_checker_sees_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## Hello, `world` → there\n\n[ok](../README.md) [ok](#hello-world--there)\n"
        "[bad](missing.md) [bad anchor](a.md#nowhere) ![gone](gone.png)\n"
        "```\n[in code](nothing.md)\n```\n[web](https://example.com)\n")
    (tmp_path / "README.md").write_text("# R\n")
    links = _relative_links(str(tmp_path / "docs" / "a.md"))
    assert [(image, os.path.basename(target), anchor) for image, target, anchor in links] == [
        (False, "README.md", ""), (False, "a.md", "hello-world--there"), (False, "missing.md", ""),
        (False, "a.md", "nowhere"), (True, "gone.png", "")]
    assert _anchors(str(tmp_path / "docs" / "a.md")) == {"a-page", "hello-world--there"}
