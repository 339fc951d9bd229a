"""The `lensray` command line.

    lensray select [CONFIG] [--out DIR|URI] [--resume]    run a selection sweep (default: the demo)
    lensray verify [CONFIG] [--json OUT]                  fine-tune every candidate at T, score the selection
    lensray submit [CONFIG] --address URL --out DIR [--resume] [--wait]   run it as a Ray job on a cluster
    lensray jobs | logs JOB | stop JOB [--address URL]   the cluster's jobs
    lensray zoo build [--out DIR] [--seed N] [--force]    build the offline tiny model zoo
    lensray bench curves [--data CSV ...] [--json OUT]   predictor benchmark on recorded curves
    lensray bench select | scale | probe                  sweep quality/cost, scale, probe throughput

Errors in the user's input are printed as one line naming the problem and the fix (exit 2);
a traceback means a bug in lensray.
"""

from __future__ import annotations

import argparse
import sys

from lensray.config import ConfigError
from lensray.curves import CurveError
from lensray.jobs import JobError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lensray", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    select = sub.add_parser("select", help="run a selection sweep and write the report files")
    select.add_argument("config", nargs="?", help="selection YAML (see configs/); default: the demo")
    select.add_argument("--out", metavar="DIR", help="output folder or storage URI, e.g. s3://bucket/sweeps (overrides the config's `output`)")
    select.add_argument("--resume", action="store_true", help="continue an interrupted sweep in its output folder")
    select.add_argument("--quiet", action="store_true", help="no progress lines")

    verify = sub.add_parser("verify", help="fine-tune every candidate at the target size and score the selection")
    verify.add_argument("config", nargs="?", help="the selection's YAML (its `lensray select` run must exist)")
    verify.add_argument("--out", metavar="DIR", help="output folder or storage URI, e.g. s3://bucket/sweeps (overrides the config's `output`)")
    verify.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")

    submit = sub.add_parser("submit", help="run a selection as a job on a Ray cluster (Ray Jobs API)")
    submit.add_argument("config", nargs="?", help="selection YAML; its folder is uploaded as the job's working dir")
    submit.add_argument("--out", metavar="DIR", help="output on storage the cluster shares (absolute path or URI)")
    submit.add_argument("--resume", action="store_true", help="continue the sweep already in the output")
    submit.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit 1 unless it succeeded")
    submit.add_argument("--entrypoint-cpus", type=float, default=0.0, help="CPUs reserved for the job's driver (default 0)")
    submit.add_argument("--entrypoint-gpus", type=float, default=0.0, help="GPUs reserved for the job's driver (default 0)")
    for name, text in (("jobs", "list the cluster's jobs"), ("logs", "print a job's logs"), ("stop", "stop a job")):
        p = sub.add_parser(name, help=text)
        if name != "jobs":
            p.add_argument("job", help="the submission id `lensray submit` printed")
    for p in (submit, sub.choices["jobs"], sub.choices["logs"], sub.choices["stop"]):
        p.add_argument("--address", metavar="URL", help="the job server, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")

    zoo = sub.add_parser("zoo", help="the offline tiny model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo", required=True)
    build = zoo_sub.add_parser("build", help="build (or reuse) the zoo: 8 tiny causal LMs and a task")
    build.add_argument("--out", metavar="DIR", default="zoo", help="folder (default: zoo)")
    build.add_argument("--seed", type=int, default=0, help="seed of the whole zoo (default 0)")
    build.add_argument("--force", action="store_true", help="rebuild even if it is up to date")

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
    scale.add_argument("--synchronous", action="store_true", help="synchronous rungs (a Tune pause per size; slower)")
    scale.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    scale.add_argument("--out", metavar="DIR", default="out/bench-scale", help="where the sweep's files go")
    probe = bench_sub.add_parser("probe", help="probe throughput (tokens/s) and memory on this machine")
    probe.add_argument("--zoo", metavar="DIR", default="zoo", help="zoo folder (built if missing)")
    probe.add_argument("--model", default="llama-copy-96", help="zoo model (default llama-copy-96)")
    probe.add_argument("--size", type=int, default=1024, help="examples fine-tuned on (default 1024)")
    probe.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    probe.add_argument("--zero-stage", type=int, default=2, help="DeepSpeed ZeRO stage (default 2)")
    probe.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    probe.add_argument("--micro-batch", type=int, default=8, help="examples per worker per step (default 8)")
    probe.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "select":
            return _select(args)
        if args.command == "verify":
            return _verify(args)
        if args.command in ("submit", "jobs", "logs", "stop"):
            return _jobs(args)
        if args.command == "zoo":
            from pathlib import Path

            from lensray.zoo import build_zoo

            build_zoo(Path(args.out), seed=args.seed, force=args.force)
            return 0
        if args.command == "bench" and args.bench == "probe":
            return _bench_probe(args)
        if args.command == "bench" and args.bench == "curves":
            from lensray.bench import run_bench_curves

            return run_bench_curves(args.data, args.json)
        if args.command == "bench":
            return _bench_sweep(args)
    except (ConfigError, CurveError, JobError, ValueError) as err:
        print(f"lensray: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        if not err.filename:  # not a path the user gave: a bug, keep its traceback
            raise
        print(f"lensray: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args}")  # argparse guarantees a known command


def _jobs(args: argparse.Namespace) -> int:
    from lensray import jobs

    if args.command == "submit":
        sub = jobs.plan_submission(args.config, args.out, args.resume, args.entrypoint_cpus, args.entrypoint_gpus)
        job_id = jobs.submit(sub, args.address)
        print(f"submitted {job_id}: {sub.entrypoint}")
        print(f"follow: lensray logs {job_id}; the report lands in {sub.output}")
        if not args.wait:
            return 0
        status = jobs.wait(job_id, args.address)
        print(f"job {job_id}: {status}")
        return 0 if status == "SUCCEEDED" else 1
    if args.command == "jobs":
        for r in jobs.list_jobs(args.address):
            print(f"{r['id']:<32} {r['status']:<10} {r['entrypoint']}")
        return 0
    if args.command == "logs":
        sys.stdout.write(jobs.logs(args.job, args.address))
        return 0
    stopped = jobs.stop(args.job, args.address)
    print(f"{args.job}: {'stopping' if stopped else 'already ended'}")
    return 0


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
        print(bench.format_select(result, paths))
    else:
        result = bench.bench_scale(args.candidates, out, args.synchronous)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _load(args: argparse.Namespace):
    """The config named on the command line (default: the packaged demo), with --out applied."""
    from dataclasses import replace

    from lensray.config import DEMO_CONFIG, load_config, output_location

    cfg = load_config(args.config or DEMO_CONFIG)
    return replace(cfg, output=output_location(args.out)) if args.out else cfg


def _bench_probe(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lensray.probe import bench_probe
    from lensray.zoo import build_zoo

    build_zoo(Path(args.zoo))
    result = bench_probe(Path(args.zoo), args.model, args.size, args.workers, args.zero_stage, args.lora, args.micro_batch)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from lensray.verify import run_verify

    result = run_verify(_load(args))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _select(args: argparse.Namespace) -> int:
    from lensray.driver import experiment_storage, run_select
    from lensray.report import unreliable_finishers

    cfg = _load(args)
    selection = run_select(cfg, resume=args.resume, quiet=args.quiet)
    cost = selection.doc["cost"]
    print(f"selected: {selection.selected}")
    unsure = unreliable_finishers(selection.doc)
    if unsure:
        shown = ", ".join(unsure[:5]) + (f" and {len(unsure) - 5} more" if len(unsure) > 5 else "")
        print(f"not ranked reliably: {shown}: probed to the budget, but their fits cannot be trusted, "
              "so any of them may beat the selection (reasons in the report)")
    if cost["fraction_of_all_probes"] is not None:
        print(f"compute: {cost['fraction_of_all_probes']:.1%} of probing every candidate to the budget, "
              f"{cost['fraction_of_full']:.2%} of fine-tuning every candidate at T")
    print(f"report: {experiment_storage(cfg).uri('report.md')} (selection.json, observations.parquet, curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
