"""The `lensray` command line: parse, call, print.

    lensray select [CONFIG] [--out DIR|URI] [--resume] [--set K=V ...]   run a selection sweep (default: the demo)
    lensray config [CONFIG] [--set K=V ...] [--reference]   the resolved config as YAML, or every field's reference
    lensray verify [CONFIG] [--json OUT] [--set K=V ...]    fine-tune every candidate at T, score the selection
    lensray record [CONFIG] --out CSV [--resume] [--set K=V ...]   every candidate at every size up to T, as a curves CSV
    lensray phylo [CONFIG] [--scores CSV] [--json OUT] [--set K=V ...]   PhyloLM fingerprints, family tree, near-duplicates, priors
    lensray route CONFIG [--out DIR|URI] [--json OUT] [--set K=V ...]   SelectLLM routing over a finished selection's finalists
    lensray serve CONFIG [--host 127.0.0.1] [--port 8000] [--set K=V ...]   serve the finalists behind the router (Ray Serve)
    lensray submit [CONFIG] --address URL --out DIR [--resume] [--wait] [--set K=V ...]   run it as a Ray job
    lensray jobs | logs JOB | stop JOB [--address URL]   the cluster's jobs
    lensray zoo build [--out DIR] [--seed N] [--force]    build the offline tiny model zoo
    lensray bench curves [--data CSV ...] [--json OUT]   predictor benchmark on recorded curves
    lensray bench curves --suite [--part dev|held-out|all] [--methods M ...] [--json OUT]
    lensray bench select | scale | probe | phylo          sweep quality/cost, scale, probe throughput, fingerprint cost
    lensray bench route CONFIG [--requests N] [--json OUT]   router training/scoring time, serving latency
    lensray bench aggregate CONFIG ... [--rounds R ...] [--json OUT]   greedy vs propose-and-aggregate per kept model

`--set section.field=value` (the value in YAML) overrides any config field, e.g.
`--set fit.window=4 --set probe.lr=1e-4 --set pool.models=[a,b]`. Errors in the user's input are
printed as one line naming the problem and the fix (exit 2); a traceback means a bug in lensray.
"""

from __future__ import annotations

import argparse
import sys

from lensray.core.errors import ConfigError, LensrayError

EXAMPLES = """\
commands, one example each:
  select  lensray select configs/replay-flan.yaml --set plan.budget=6400   (no CONFIG: the zoo demo)
  config  lensray config configs/replay-flan.yaml --set fit.window=4       (--reference: every field)
  verify  lensray verify configs/replay-flan.yaml --json out/verify.json
  record  lensray record --out curves.csv                                   (no CONFIG: the zoo demo's pool)
  phylo   lensray phylo --scores known.csv                                  (CSV columns: model,score)
  route   lensray route configs/route-demo.yaml                             (after its `lensray select`)
  serve   lensray serve configs/route-demo.yaml --port 8000                 (after its route stage ran)
  submit  lensray submit configs/replay-flan.yaml --address http://127.0.0.1:8265 --out /mnt/shared/lensray
  jobs    lensray jobs --address http://127.0.0.1:8265
  logs    lensray logs raysubmit_XXXX --address http://127.0.0.1:8265
  stop    lensray stop raysubmit_XXXX --address http://127.0.0.1:8265
  zoo     lensray zoo build --out zoo
  bench   lensray bench curves --json out/bench-curves.json
          lensray bench select --out out/bench-select --json out/bench-select.json
          lensray bench scale --candidates 10000 --out out/bench-scale
          lensray bench probe --zoo zoo --model llama-copy-96 --workers 1
          lensray bench phylo --models 100
          lensray bench route configs/route-demo.yaml --json out/bench-route.json   (after its `lensray select`)
          lensray bench aggregate configs/aft-aspects.yaml configs/aft-cipher.yaml   (after their `lensray select`)

Errors in your input are one line naming the field or file and the fix (exit 2).
"""


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override one config field, the value in YAML (repeatable), e.g. --set fit.window=4 --set probe.lr=1e-4",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensray",
        description="Pick the pretrained model to fine-tune from small fine-tunes: Ray Tune sweeps, DeepSpeed probes, "
        "scaling-curve early stopping.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    select = sub.add_parser("select", help="run a selection sweep and write the report files")
    select.add_argument("config", nargs="?", help="selection YAML (see configs/); default: the demo")
    select.add_argument("--out", metavar="DIR", help="output folder or storage URI, e.g. s3://bucket/sweeps (overrides the config's `output`)")
    select.add_argument("--resume", action="store_true", help="continue an interrupted sweep in its output folder")
    select.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_set(select)

    config = sub.add_parser("config", help="print the resolved config as YAML (every default filled in), or the reference")
    config.add_argument("config", nargs="?", help="selection YAML; default: the demo")
    config.add_argument("--reference", action="store_true", help="print every field's type, default and meaning (docs/config.md) instead")
    _add_set(config)

    verify = sub.add_parser("verify", help="fine-tune every candidate at the target size and score the selection")
    verify.add_argument("config", nargs="?", help="the selection's YAML (its `lensray select` run must exist)")
    verify.add_argument("--out", metavar="DIR", help="output folder or storage URI, e.g. s3://bucket/sweeps (overrides the config's `output`)")
    verify.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    _add_set(verify)

    record = sub.add_parser("record", help="fine-tune every candidate at every planned size up to T; write the curves CSV")
    record.add_argument("config", nargs="?", help="selection YAML; default: the demo")
    record.add_argument("--out", metavar="CSV", required=True, help="the curves file to write (lensray/core/curves.py); never overwritten")
    record.add_argument("--resume", action="store_true", help="continue an interrupted recording (its state: <output>/<name>-record/)")
    record.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_set(record)

    phylo = sub.add_parser("phylo", help="fingerprint the pool's models: distances, family tree, near-duplicates, priors")
    phylo.add_argument("config", nargs="?", help="selection YAML (its pool, data and phylo section); default: the demo")
    phylo.add_argument("--scores", metavar="CSV", default="", help="known losses at T (columns model,score): priors and score prediction")
    phylo.add_argument("--json", metavar="OUT", help="also write phylo.json's content to OUT")
    _add_set(phylo)

    route = sub.add_parser("route", help="SelectLLM routing over a finished selection's finalists: evaluation, router, report")
    route.add_argument("config", help="the selection's YAML (its `lensray select` run must exist, with probe.metric: task)")
    route.add_argument("--out", metavar="DIR", help="output folder or storage URI, e.g. s3://bucket/sweeps (overrides the config's `output`)")
    route.add_argument("--json", metavar="OUT", help="also write route.json's content to OUT")
    _add_set(route)

    serve = sub.add_parser("serve", help="serve the finalists behind the trained router on Ray Serve (HTTP) until Ctrl-C")
    serve.add_argument("config", help="the selection's YAML (its route stage must have run)")
    serve.add_argument("--out", metavar="DIR", help="output folder or storage URI, e.g. s3://bucket/sweeps (overrides the config's `output`)")
    serve.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    _add_set(serve)

    submit = sub.add_parser("submit", help="run a selection as a job on a Ray cluster (Ray Jobs API)")
    submit.add_argument("config", nargs="?", help="selection YAML; its folder is uploaded as the job's working dir")
    submit.add_argument("--out", metavar="DIR", help="output on storage the cluster shares (absolute path or URI)")
    submit.add_argument("--resume", action="store_true", help="continue the sweep already in the output")
    submit.add_argument("--wait", action="store_true", help="follow the job's logs until it ends; exit 1 unless it succeeded")
    submit.add_argument("--entrypoint-cpus", type=float, default=0.0, help="CPUs reserved for the job's driver (default 0)")
    submit.add_argument("--entrypoint-gpus", type=float, default=0.0, help="GPUs reserved for the job's driver (default 0)")
    _add_set(submit)
    for name, text in (("jobs", "list the cluster's jobs"), ("logs", "print a job's logs"), ("stop", "stop a job")):
        p = sub.add_parser(name, help=text)
        if name != "jobs":
            p.add_argument("job", help="the submission id `lensray submit` printed")
    for p in (submit, sub.choices["jobs"], sub.choices["logs"], sub.choices["stop"]):
        p.add_argument("--address", metavar="URL", help="the job server, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)")

    zoo = sub.add_parser("zoo", help="the offline tiny model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo", required=True)
    build = zoo_sub.add_parser("build", help="build (or reuse) the zoo: 8 tiny causal LMs, a task, and models derived from them (lineages)")
    build.add_argument("--out", metavar="DIR", default="zoo", help="folder (default: zoo); a new or empty one, or a zoo")
    build.add_argument("--seed", type=int, default=0, help="seed of the whole zoo (default 0)")
    build.add_argument("--force", action="store_true", help="rebuild even if it is up to date")

    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    curves = bench_sub.add_parser(
        "curves", help="every selection method's PearCorr and RelAcc on recorded curves"
    )
    curves.add_argument(
        "--data", action="append", metavar="CSV",
        help="curves file (CSV or Parquet, schema in lensray/core/curves.py); repeatable; "
        "default: the packaged FLAN and WMT19 curves",
    )
    curves.add_argument("--json", metavar="OUT", help="also write the scores as JSON to OUT")
    curves.add_argument(
        "--suite", action="store_true",
        help="the predictor suite: the packaged, the recorded and synthetic pools, summarised per group, "
        "with the default predictor's targets (lensray/bench/suite.py)",
    )
    curves.add_argument(
        "--part", choices=("dev", "held-out", "all"),
        help="with --suite: the synthetic pools, dev (40, developed on), held-out (120, reported) or all "
        "(default held-out)",
    )
    curves.add_argument("--methods", nargs="+", metavar="M", help="only these methods (default: every method)")
    sel = bench_sub.add_parser("select", help="real replay sweeps through Tune at every budget: quality and cost")
    sel.add_argument("--data", action="append", metavar="CSV", help="curves file; repeatable; default: the packaged curves and the recorded zoo pools")
    sel.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    sel.add_argument("--out", metavar="DIR", default="out/bench-select", help="where the sweeps' files go: a new or empty folder, or one a bench made")
    sel.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                     help="also sweep with Tune's ASHA (reduction factors 2, 3, 4) and median stopping rule (default: on)")
    scale = bench_sub.add_parser("scale", help="a replay sweep over many synthetic candidates: wall time, scheduler share")
    scale.add_argument("--candidates", type=int, default=1000, help="pool size (default 1000)")
    scale.add_argument("--synchronous", action="store_true", help="synchronous rungs (a Tune pause per size; slower)")
    scale.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    scale.add_argument("--out", metavar="DIR", default="out/bench-scale", help="where the sweep's files go: a new or empty folder, or one a bench made")
    phylo_b = bench_sub.add_parser("phylo", help="a PhyloLM fingerprint's cost beside a probe, and for many models")
    phylo_b.add_argument("config", nargs="?", help="selection YAML with backend hf; default: the demo")
    phylo_b.add_argument("--model", default="", help="the pool's model to measure (default: its first)")
    phylo_b.add_argument("--models", type=int, default=100, help="fingerprints made at once for the wall time (default 100)")
    phylo_b.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    _add_set(phylo_b)
    route_b = bench_sub.add_parser("route", help="router training and scoring time, serving latency per query over HTTP")
    route_b.add_argument("config", help="the selection's YAML (its route stage must have run)")
    route_b.add_argument("--requests", type=int, default=64, help="single-query HTTP requests timed (default 64)")
    route_b.add_argument("--repeats", type=int, default=5, help="router trainings timed; the median is given (default 5)")
    route_b.add_argument("--out", metavar="DIR", help="output folder or storage URI (overrides the config's `output`)")
    route_b.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    _add_set(route_b)
    agg_b = bench_sub.add_parser("aggregate", help="each kept model's greedy answer against propose-and-aggregate")
    agg_b.add_argument("configs", nargs="+", metavar="CONFIG",
                       help="the selections' YAML, one or more (their probes must have kept their weights)")
    agg_b.add_argument("--rounds", type=int, nargs="+", default=[1, 2], help="aggregation rounds R measured (default 1 2)")
    agg_b.add_argument("--out", metavar="DIR", help="output folder or storage URI (overrides the config's `output`)")
    agg_b.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    _add_set(agg_b)
    probe = bench_sub.add_parser("probe", help="probe throughput (tokens/s), MFU, memory and wall time by phase on this machine")
    probe.add_argument("--zoo", metavar="DIR", default="zoo", help="zoo folder (built if missing)")
    probe.add_argument("--model", default="llama-copy-96",
                       help="zoo model, or a hub-sized one with random weights: llama-1b, llama-tiny (default llama-copy-96)")
    probe.add_argument("--size", type=int, nargs="+", default=[1024],
                       help="examples fine-tuned on, one fine-tune per size as a probe runs them (default 1024)")
    probe.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    probe.add_argument("--zero-stage", type=int, default=2, help="DeepSpeed ZeRO stage (default 2)")
    probe.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    probe.add_argument("--micro-batch", type=int, default=8, help="examples per worker per step (default 8)")
    probe.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where the workers train (default auto)")
    probe.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="training precision (default fp32)")
    probe.add_argument("--length", type=int, default=512, help="tokens per example of a hub-sized model's data (default 512)")
    probe.add_argument("--peak-tflops", type=float, help="the device's bf16 peak for MFU (default: by its name)")
    probe.add_argument("--worker-group", action="store_true",
                       help="a Ray Train worker group even for one CPU worker (a sweep fine-tunes that in the trial's process)")
    probe.add_argument("--json", metavar="OUT", help="also write the figures as JSON to OUT")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_json_out(getattr(args, "json", None))
        if args.command == "select":
            return _select(args)
        if args.command == "config":
            return _config(args)
        if args.command == "verify":
            return _verify(args)
        if args.command == "record":
            return _record(args)
        if args.command == "phylo":
            return _phylo(args)
        if args.command == "route":
            return _route(args)
        if args.command == "serve":
            return _serve(args)
        if args.command in ("submit", "jobs", "logs", "stop"):
            return _jobs(args)
        if args.command == "zoo":
            from pathlib import Path

            from lensray.zoo.build import build_zoo
            from lensray.zoo.lineages import build_lineages

            build_zoo(Path(args.out), seed=args.seed, force=args.force)
            build_lineages(Path(args.out), seed=args.seed, force=args.force)
            return 0
        if args.command == "bench" and args.bench == "probe":
            return _bench_probe(args)
        if args.command == "bench" and args.bench == "phylo":
            return _bench_phylo(args)
        if args.command == "bench" and args.bench == "route":
            return _bench_route(args)
        if args.command == "bench" and args.bench == "aggregate":
            return _bench_aggregate(args)
        if args.command == "bench" and args.bench == "curves":
            from lensray.bench.curves import run_bench_curves

            return run_bench_curves(args.data, args.json, args.methods, args.suite, args.part)
        if args.command == "bench":
            return _bench_sweep(args)
    except LensrayError as err:
        return _fail(err)
    except FileNotFoundError as err:
        if not err.filename:  # not a path the user gave: a bug, keep its traceback
            raise
        return _fail(err)
    raise AssertionError(f"unhandled command {args}")  # argparse guarantees a known command


def _fail(err: BaseException) -> int:
    """Print `err` as the one line `lensray: error: ...` on stderr; the exit status 2."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"lensray: error: {text}", file=sys.stderr)
    return 2


def _check_json_out(json_out: str | None) -> None:
    """--json names a file to write: refuse a folder (or a path under a file) before any work."""
    if not json_out:
        return
    from pathlib import Path

    out = Path(json_out).expanduser()
    if out.is_dir():
        raise ConfigError(f"--json {json_out!r} is a folder: give the file to write, e.g. --json {out / 'result.json'}")
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"--json {json_out!r}: {blocked} is a file, not a folder; choose another path")


def _write_json(result: dict, json_out: str | None) -> None:
    import json
    from pathlib import Path

    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1) + "\n")


def _jobs(args: argparse.Namespace) -> int:
    from lensray.cluster import jobs

    if args.command == "submit":
        sub = jobs.plan_submission(args.config, args.out, args.resume, args.entrypoint_cpus, args.entrypoint_gpus,
                                   args.overrides)
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


def bench_outputs(args: argparse.Namespace) -> list[str]:
    """What `bench select`/`bench scale` write into --out, by name, after reading and checking
    every input: the names a rerun may replace, and nothing else."""

    from lensray.bench.scale import scale_outputs
    from lensray.bench.select import select_outputs

    if args.bench == "select":
        return select_outputs(_select_data(args), args.baselines)
    return scale_outputs(args.candidates)


def _select_data(args: argparse.Namespace) -> list:
    """The curves `bench select` replays: --data, else the packaged and the recorded ones."""
    from pathlib import Path

    from lensray.core.curves import packaged_curves, recorded_curves

    return [Path(p) for p in args.data] if args.data else [*packaged_curves(), *recorded_curves()]


def _bench_sweep(args: argparse.Namespace) -> int:
    import json
    import shutil
    from pathlib import Path

    from lensray.bench.scale import bench_scale
    from lensray.bench.select import bench_select, format_select
    from lensray.cluster.storage import claim_folder

    names = bench_outputs(args)  # inputs first: a bad one leaves --out untouched
    out = claim_folder(Path(args.out), f"lensray bench {args.bench}")
    for name in names:  # a previous run's own files, re-made now
        old = out / name
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        elif old.exists() or old.is_symlink():
            old.unlink()
    if args.bench == "select":
        paths = _select_data(args)
        result = bench_select(paths, out, baselines=args.baselines)
        print(format_select(result, paths))
    else:
        result = bench_scale(args.candidates, out, args.synchronous)
    print(json.dumps(result, indent=1))
    _write_json(result, args.json)
    return 0


def _load(args: argparse.Namespace, config: str | None = None):
    """The config named on the command line (or `config`; default: the packaged demo), with --set
    and --out applied (--out last: it wins over `--set output=...`)."""
    import json

    from lensray.config.load import DEMO_CONFIG, load_config

    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "out", None):
        overrides.append(f"output={json.dumps(args.out)}")  # a JSON string is YAML: a URI stays one string
    return load_config(config or args.config or DEMO_CONFIG, overrides)


def _config(args: argparse.Namespace) -> int:
    if args.reference:
        if args.config or args.overrides:
            raise ConfigError("--reference prints the reference of every field: give it no CONFIG and no --set")
        from lensray.config.reference import config_reference

        sys.stdout.write(config_reference())
        return 0
    import dataclasses

    import yaml

    from lensray.config.load import DEMO_CONFIG

    doc = _plain(dataclasses.asdict(_load(args)))
    source = args.config or f"the demo, {DEMO_CONFIG}"
    sys.stdout.write(f"# {source}, resolved: every field, defaults filled in, paths absolute\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))
    return 0


def _plain(value):
    """Tuples as lists, all the way down: what yaml.safe_dump writes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _bench_phylo(args: argparse.Namespace) -> int:
    import json

    from lensray.bench.phylo import bench_phylo, format_phylo

    result = bench_phylo(_load(args), args.model, args.models)
    print(format_phylo(result))
    print(json.dumps(result, indent=1))
    _write_json(result, args.json)
    return 0


def _bench_route(args: argparse.Namespace) -> int:
    from lensray.bench.route import bench_route

    _write_json(bench_route(_load(args), args.requests, args.repeats), args.json)
    return 0


def _bench_aggregate(args: argparse.Namespace) -> int:
    from lensray.bench.aggregate import bench_aggregate

    configs = [_load(args, path) for path in args.configs]  # every config checked before any model runs
    _write_json({"runs": [bench_aggregate(cfg, args.rounds) for cfg in configs]}, args.json)
    return 0


def _bench_probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lensray.bench.probe import bench_probe
    from lensray.zoo.build import build_zoo

    build_zoo(Path(args.zoo))
    result = bench_probe(Path(args.zoo), args.model, tuple(args.size), args.workers, args.zero_stage, args.lora,
                         args.micro_batch, args.device, args.precision, args.length, args.peak_tflops,
                         args.worker_group)
    _write_json(result, args.json)
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json

    from lensray.verify import run_verify

    result = run_verify(_load(args))
    print(json.dumps(result, indent=1))
    _write_json(result, args.json)
    return 0


def _record(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lensray.bench.record import record_config, run_record
    from lensray.config.load import DEMO_CONFIG, load_config

    cfg = load_config(args.config or DEMO_CONFIG, args.overrides)
    out = run_record(cfg, Path(args.out), resume=args.resume, quiet=args.quiet)
    print(f"recorded: {out} ({len(cfg.candidates())} candidates; the sweep's files: {record_config(cfg).storage().uri()})")
    return 0


def _phylo(args: argparse.Namespace) -> int:
    from lensray.stages.phylo.stage import FILES, run_phylo

    folder, summary = run_phylo(_load(args), args.scores)
    models = summary["models"]
    done = [m for m in models.values() if not m.get("error")]
    print(f"fingerprinted {len(done)} of {len(models)} models on {summary['genes']} genes "
          f"({sum(not m['cached'] for m in done)} new, the rest from the cache)")
    for name, m in models.items():
        cost = f"{m['tokens']} tokens, {m['seconds']:.1f} s" if not m.get("error") else f"failed: {m['error']}"
        print(f"  {name}: {cost}")
    for g in summary["groups"]:
        dropped = ", ".join(f"{n} (d = {d:.3g})" for n, d in g["dropped"].items())
        print(f"near-duplicates: {g['kept']} kept; {dropped}")
    score = summary.get("score_prediction")
    if score:
        r = score["lofo_pearson_r"]
        print(f"score prediction: leave-one-family-out Pearson r = {'n/a' if r is None else f'{r:.3f}'} "
              f"({score['known']} known scores, {score['families']} families)")
    print(f"files: {', '.join(str(folder / f) for f in FILES if (folder / f).exists())}")
    _write_json(summary, args.json)
    return 0


def _route(args: argparse.Namespace) -> int:
    from lensray.stages.route.saved import FILES as ROUTER_FILES
    from lensray.stages.route.stage import FILES, run_route

    folder, selection = run_route(_load(args))
    r = selection.doc["route"]
    sizes = ", ".join(f"{n} (size {r['sizes'][n]})" for n in r["finalists"])
    print(f"routed {r['queries']} held-out queries between {len(r['finalists'])} finalists: {sizes}; "
          f"{r['folds']}-fold cross-validation")
    for name, s in r["scores"].items():
        served = "  <- served" if name == r["policy"] else ""
        print(f"  {name:<24} accuracy {s['accuracy']:.3f} +- {s['accuracy_std']:.3f}, {s['calls']:.2f} calls, "
              f"{s['latency']:.3g} s, {s['flops']:.3g} FLOPs per query{served}")
    print(f"files: {', '.join(str(folder / f) for f in FILES + ROUTER_FILES)}; report: {folder / 'report.md'}")
    _write_json(r, args.json)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from lensray.stages.route.serve import serve_forever

    serve_forever(_load(args), args.host, args.port)
    return 0


def _select(args: argparse.Namespace) -> int:
    if not args.config:  # the first line, before anything else can print
        from lensray.config.load import DEMO_CONFIG

        print(f"no CONFIG given: running the demo config {DEMO_CONFIG} (copy it to start your own)", flush=True)
    from lensray.pipeline import run_select
    from lensray.report.rank import unreliable_finishers

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
    print(f"report: {cfg.storage().uri('report.md')} (selection.json, observations.parquet, curves.png)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
