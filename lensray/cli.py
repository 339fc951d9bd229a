"""The `lensray` command line.

    lensray select [CONFIG] [--out DIR] [--resume]        run a selection sweep (default: the demo)
    lensray bench curves [--data CSV ...] [--json OUT]   predictor benchmark on recorded curves

Errors in the user's input are printed as one line naming the problem and the fix (exit 2);
a traceback means a bug in lensray.
"""

from __future__ import annotations

import argparse
import sys

from lensray.config import ConfigError
from lensray.curves import CurveError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lensray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    select = sub.add_parser("select", help="run a selection sweep and write the report files")
    select.add_argument("config", nargs="?", help="selection YAML (see configs/); default: the demo")
    select.add_argument("--out", metavar="DIR", help="output folder (overrides the config's `output`)")
    select.add_argument("--resume", action="store_true", help="continue an interrupted sweep in its output folder")
    select.add_argument("--quiet", action="store_true", help="no progress lines")

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
    sel = bench_sub.add_parser("select", help="real replay sweeps through Tune at every budget: quality and cost")
    sel.add_argument("--data", action="append", metavar="CSV", help="curves file; repeatable; default: the packaged curves")
    sel.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    sel.add_argument("--out", metavar="DIR", default="out/bench-select", help="where the sweeps' files go")
    scale = bench_sub.add_parser("scale", help="a replay sweep over many synthetic candidates: wall time, scheduler share")
    scale.add_argument("--candidates", type=int, default=1000, help="pool size (default 1000)")
    scale.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    scale.add_argument("--out", metavar="DIR", default="out/bench-scale", help="where the sweep's files go")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "select":
            return _select(args)
        if args.command == "bench" and args.bench == "curves":
            from lensray.bench import run_bench_curves

            return run_bench_curves(args.data, args.json)
        if args.command == "bench":
            return _bench_sweep(args)
    except (ConfigError, CurveError, ValueError, FileNotFoundError) as err:
        print(f"lensray: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args}")  # argparse guarantees a known command


def _bench_sweep(args: argparse.Namespace) -> int:
    import json
    import shutil
    from pathlib import Path

    from lensray import bench
    from lensray.curves import packaged_curves

    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)  # a benchmark's own scratch folder, re-made each run
    if args.bench == "select":
        paths = [Path(p) for p in args.data] if args.data else packaged_curves()
        result = bench.bench_select(paths, out)
    else:
        result = bench.bench_scale(args.candidates, out)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _select(args: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from lensray.config import load_config
    from lensray.driver import experiment_dir, run_select

    cfg = load_config(args.config)
    if args.out:
        cfg = replace(cfg, output=str(Path(args.out).resolve()))
    selection = run_select(cfg, resume=args.resume, quiet=args.quiet)
    cost = selection.doc["cost"]
    print(f"selected: {selection.selected}")
    if cost["fraction_of_all_probes"] is not None:
        print(f"compute: {cost['fraction_of_all_probes']:.1%} of probing every candidate to the budget, "
              f"{cost['fraction_of_full']:.2%} of fine-tuning every candidate at T")
    print(f"report: {experiment_dir(cfg)}/report.md (selection.json, observations.parquet, curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
