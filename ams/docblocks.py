"""Generated blocks of the documentation: the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in
README.md or a page under docs/. The evaluation, the benchmarks and `tools.config_table` write their tables
through it; `write_block` finds the one page that holds the block."""
from __future__ import annotations

import glob
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with the block `name` replaced by `content`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{content}\n{end}{rest.split(end, 1)[1]}"


def pages(root: str = ROOT) -> list[str]:
    """README.md and every Markdown page under docs/."""
    return [os.path.join(root, "README.md"), *sorted(glob.glob(os.path.join(root, "docs", "**", "*.md"), recursive=True))]


def page_of(name: str, root: str = ROOT) -> str:
    """The page holding block `name`; KeyError when none does."""
    marker = f"<!-- {name}:begin -->"
    for path in pages(root):
        with open(path) as f:
            if marker in f.read():
                return path
    raise KeyError(f"no page under {root} holds the block {name!r}")


def write_block(name: str, content: str, path: str | None = None) -> None:
    """Rewrite the block `name` in place, in `path` or the page that holds it."""
    path = path or page_of(name)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(replace_block(text, name, content))


def write_block_from_results(name: str, results_path: str, table) -> None:
    """Rewrite block `name` with `table(results)` for the JSON results at `results_path`."""
    with open(results_path) as f:
        write_block(name, table(json.load(f)))
