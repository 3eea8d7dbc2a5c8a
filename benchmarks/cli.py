"""The benchmarks' shared command line."""
from __future__ import annotations

from ams.docblocks import write_block_from_results


def parse_bench_args(parser, argv: list[str] | None, name: str, table):
    """Parse a benchmark's arguments, adding `--readme`: with it, only rewrite the documentation block `name`
    with `table` of the results at `--out` and return None; otherwise return the arguments."""
    parser.add_argument("--readme", action="store_true", help="only write the table of --out's results into the docs")
    args = parser.parse_args(argv)
    if args.readme:
        write_block_from_results(name, args.out, table)
        return None
    return args
