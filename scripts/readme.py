"""Generated blocks of README.md: the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`."""
from __future__ import annotations


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with the block `name` replaced by `content`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{content}\n{end}{rest.split(end, 1)[1]}"


def write_block(name: str, content: str, path: str = "README.md") -> None:
    """Rewrite the block `name` of the README in place."""
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(replace_block(text, name, content))


def parse_bench_args(parser, argv: list[str] | None, name: str, table):
    """Parse a benchmark's arguments, adding `--readme`: with it, only rewrite README block `name` with
    `table` of the results at `--out` and return None; otherwise return the arguments."""
    parser.add_argument("--readme", action="store_true", help="only write the table of --out's results into README.md")
    args = parser.parse_args(argv)
    if args.readme:
        write_block_from_results(name, args.out, table)
        return None
    return args


def write_block_from_results(name: str, results_path: str, table) -> None:
    """Rewrite block `name` with `table(results)` for the JSON results at `results_path`."""
    import json

    with open(results_path) as f:
        write_block(name, table(json.load(f)))
