"""`lensray record`: fine-tune every candidate at every planned size up to T and write the curves.

    lensray record [CONFIG] --out curves.csv [--resume] [--set section.field=value ...]

The recording is the sweep of `lensray select` (run_select, so Ray Tune, the probe backend and
the side file are the same) with the scheduler switched off and the plan stretched to T: the
plan's sizes, then doubling from the last one while below T, then T itself (the demo's 32 ... 256
with T = 3,840 records 32, 64, ..., 2048 and 3840). Its state lives in `<output>/<name>-record/`,
so `--resume` continues a recording that stopped, and the finished table is written to --out in
the schema of lensray.core.curves, where `read_curves` and `lensray bench curves --data` read it:

    config name     the candidate
    0               the zero-shot loss, where the sizes hold the loss (not with probe.metric task,
                    whose sizes hold the task error)
    <D> ...         the ranked quantity after fine-tuning on D examples (Observation.loss)
    size            the parameter count
    family          the zoo corpus of a zoo model (copy, format, text, mix), else the model_type
                    of a local model's config.json, else empty
    ntk_*           the LensLLM NTK term as the probe measured it (lensray.probe.hf.ntk), when it
                    did (probe.ntk_examples > 0): ntk_theta_mean, ntk_residual_mean, ntk_eta and
                    ntk_examples of the pretrained model, and ntk_log_F_<D>, log F(Theta, t) at the
                    optimizer steps t of size D

--out is checked before anything runs and never overwritten: a file that exists is refused.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lensray.config.schema import PlanConfig, SelectConfig
from lensray.core.errors import ConfigError, ProbeError
from lensray.core.types import Candidate, Observation
from lensray.pipeline import run_select

NTK_MODEL_KEYS = ("ntk_theta_mean", "ntk_residual_mean", "ntk_eta", "ntk_examples")
"""The NTK quantities of the pretrained model (the same at every size), as the probe names them."""


def record_sizes(plan: PlanConfig) -> list[int]:
    """The plan's sizes, then doubling from the last one while below T, then T."""
    sizes = [d for d in plan.resolved_sizes() if d < plan.target]
    while sizes and 2 * sizes[-1] < plan.target:
        sizes.append(2 * sizes[-1])
    return sizes + [plan.target]


def record_config(cfg: SelectConfig) -> SelectConfig:
    """The select config turned into its recording: every candidate of the pool (no stages) at
    every `record_sizes`, none stopped early."""
    return cfg.exhaustive("record", record_sizes(cfg.plan))


def check_out(out: Path) -> None:
    """Refuse an --out that exists, is not a .csv, or lies under a file (ConfigError)."""
    if out.exists() or out.is_symlink():
        raise ConfigError(f"--out {out} exists: choose another --out (nothing was overwritten)")
    if out.suffix.lower() != ".csv":
        raise ConfigError(f"--out {out}: the recorded curves are written as CSV; give a file ending in .csv")
    blocked = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        raise ConfigError(f"--out {out}: {blocked} is a file, not a folder; choose another --out")


def _family(cfg: SelectConfig, candidate: Candidate) -> str:
    """The zoo corpus of a zoo model, else the model_type of a local model, else ''."""
    from lensray.zoo.build import ZOO

    path = Path(candidate.model.path or candidate.model.name).expanduser()
    corpus = {m.name: m.corpus for m in ZOO}
    if cfg.zoo and path.parent.resolve() == (Path(cfg.zoo) / "models").resolve() and path.name in corpus:
        return corpus[path.name]
    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def curves_table(cfg: SelectConfig, observations: dict[str, list[Observation]]) -> tuple[list[str], list[list]]:
    """(header, rows) of the curves table of a finished recording of `cfg` (record_config's)."""
    sizes = cfg.plan.resolved_sizes()
    with_zero = cfg.ranked_by() == "loss"
    with_ntk = all(all(k in o.extra for k in NTK_MODEL_KEYS) for obs in observations.values() for o in obs)
    header = ["config name", *(["0"] if with_zero else []), *map(str, sizes), "size", "family"]
    if with_ntk:
        header += [*NTK_MODEL_KEYS, *(f"ntk_log_F_{d}" for d in sizes)]
    rows = []
    for candidate in cfg.candidates():
        obs = observations[candidate.name]
        first = obs[0].extra
        row = [candidate.name, *([first["zero_shot_loss"]] if with_zero else []), *(o.loss for o in obs),
               first["n_params"], _family(cfg, candidate)]
        if with_ntk:
            row += [*(first[k] for k in NTK_MODEL_KEYS), *(o.extra["ntk_log_F"] for o in obs)]
        rows.append(row)
    return header, rows


def run_record(cfg: SelectConfig, out: Path, resume: bool = False, quiet: bool = False) -> Path:
    """Record `cfg`'s pool (see the module docstring) and write the curves table to `out`.

    Raises ConfigError for an `out` that exists (before any work) and ProbeError naming the
    candidates whose probes did not reach T (nothing is written; `resume` retries them)."""
    out = Path(out)
    check_out(out)
    rec = record_config(cfg)
    selection = run_select(rec, resume=resume, quiet=quiet)
    sizes = rec.plan.resolved_sizes()
    missing = {
        e["candidate"]: e["reason"] or e["status"] for e in selection.doc["ranking"] if e["sizes"] != sizes
    }
    if missing:
        listed = "; ".join(f"{c}: {r}" for c, r in missing.items())
        raise ProbeError(
            f"{len(missing)} candidate(s) did not reach T={rec.plan.target}, so --out {out} was not written "
            f"({listed}); rerun with --resume to retry them (finished probes are kept), or leave them out with "
            "--set pool.models=[...]"
        )
    header, rows = curves_table(rec, selection.observations)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "x", newline="", encoding="utf-8") as fh:  # "x": never over a file made meanwhile
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return out
