"""``python -m astra.report --results DIR --out DIR [--filter key=value ...] [--format md,tex] [--no-figures]``."""

from __future__ import annotations

import argparse
import sys

from astra.report.write import FORMATS, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m astra.report", description="Tables and figures from result files.")
    parser.add_argument("--results", default="experiments/results", help="folder searched for result files (recursively)")
    parser.add_argument("--out", default="experiments/paper", help="where tables, figures and index.md go")
    parser.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                        help="keep results whose dotted KEY equals VALUE (repeatable: all must hold), e.g. experiment=nlg_math")
    parser.add_argument("--format", default=",".join(FORMATS), help="table formats, comma-separated: md, tex")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    try:
        written = write_report(args.results, args.out, args.filter, tuple(args.format.split(",")), not args.no_figures)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files; see {written[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
