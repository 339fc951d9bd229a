"""The `lensray` command line.

    lensray bench curves [--data CSV ...] [--json OUT]   predictor benchmark on recorded curves

Errors in the user's input are printed as one line naming the problem and the fix (exit 2);
a traceback means a bug in lensray.
"""

from __future__ import annotations

import argparse
import sys

from lensray.curves import CurveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lensray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    curves = bench_sub.add_parser(
        "curves", help="every selection method's PearCorr and RelAcc on recorded curves"
    )
    curves.add_argument(
        "--data", action="append", metavar="CSV",
        help="curves file (CSV or Parquet, schema in lensray/curves.py); repeatable; "
        "default: the packaged FLAN and WMT19 curves",
    )
    curves.add_argument("--json", metavar="OUT", help="also write the scores as JSON to OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bench" and args.bench == "curves":
            from lensray.bench import run_bench_curves

            return run_bench_curves(args.data, args.json)
    except (CurveError, ValueError, FileNotFoundError) as err:
        print(f"lensray: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args}")  # argparse guarantees a known command


if __name__ == "__main__":
    sys.exit(main())
