"""`lensray bench phylo`: what a PhyloLM fingerprint costs beside a probe, and for a pool of many.

    lensray bench phylo [CONFIG] [--model NAME] [--models 100] [--json OUT]

On the config's pool (default: the demo's, the offline zoo) and its `phylo` settings (default:
128 genes x 32 samples of 5 tokens):

1. one model's fingerprint, made twice on a fresh cache: `cold` (its Ray worker imports torch
   and transformers first) and `warm` (a worker that already has);
2. one probe of the same model: the sweep's trial of it (the hf backend's probe, fine-tuning at
   every planned size up to the budget, in one Ray Train run), in seconds and training tokens;
3. the shares: fingerprint seconds / probe seconds and fingerprint tokens / probe tokens;
4. `--models` fingerprints at once (the pool's models repeated under new names, each its own
   Ray task: a fresh cache makes each one run), spread over the local Ray's CPUs, wall time.

Everything it writes (cache, probe checkpoints) goes to a temporary folder that is removed after.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lensray.config.schema import SelectConfig
from lensray.core.errors import ConfigError


def bench_phylo(cfg: SelectConfig, model: str = "", n_models: int = 100) -> dict[str, Any]:
    """The figures of the module's docstring for `model` (default: the pool's first)."""
    import ray

    from lensray.pipeline import initial_pool
    from lensray.probe.hf.backend import BACKEND
    from lensray.probe.hf.driver import run_probe
    from lensray.stages.phylo.fingerprint import fingerprint_models
    from lensray.stages.phylo.stage import config_genes
    from lensray.sweep.run import init_ray

    if cfg.backend != "hf":
        raise ConfigError(f"backend={cfg.backend!r}: bench phylo fingerprints and probes real models; use a config with backend: hf")
    if n_models < 1:
        raise ConfigError(f"--models {n_models}: give at least 1")
    pool = initial_pool(cfg)
    models = list({c.model.name: c.model for c in pool.candidates}.values())
    chosen = next((m for m in models if m.name == (model or models[0].name)), None)
    if chosen is None:
        raise ConfigError(f"--model {model!r}: not in the pool; it has {[m.name for m in models]}")
    p = cfg.phylo
    genes = config_genes(cfg)
    init_ray(cfg)
    with tempfile.TemporaryDirectory(prefix="lensray-bench-phylo-") as tmp:
        fresh = lambda name: replace(p, cache_dir=str(Path(tmp) / name))  # noqa: E731
        cold = fingerprint_models([chosen], genes, fresh("cold"))[chosen.name]
        warm = fingerprint_models([chosen], genes, fresh("warm"))[chosen.name]
        for fp in (cold, warm):
            if not fp.ok:
                raise ConfigError(f"{chosen.name}: no fingerprint: {fp.error}")
        probe_cfg = replace(cfg, output=str(Path(tmp) / "probe"))
        candidate = next(c for c in pool.candidates if c.model.name == chosen.name)
        sizes = [d for d in cfg.plan.resolved_sizes() if d <= cfg.plan.budget]
        t0 = time.perf_counter()
        observations = run_probe(BACKEND.spec(probe_cfg, candidate, sizes, "bench"))
        probe_s = time.perf_counter() - t0
        many = [replace(models[i % len(models)], name=f"{models[i % len(models)].name}#{i}") for i in range(n_models)]
        t0 = time.perf_counter()
        prints = fingerprint_models(many, genes, fresh("many"))
        many_s = time.perf_counter() - t0
    probe_tokens = sum(o.tokens for o in observations)
    return {
        "model": chosen.name, "genes": len(genes), "samples": p.samples, "max_new_tokens": p.max_new_tokens,
        "fingerprint": {"tokens": warm.tokens, "cold_s": round(cold.seconds, 2), "warm_s": round(warm.seconds, 2)},
        "probe": {"sizes": sizes, "tokens": probe_tokens, "wall_s": round(probe_s, 2)},
        "share_of_probe": {"seconds_cold": round(cold.seconds / probe_s, 4), "seconds_warm": round(warm.seconds / probe_s, 4),
                           "tokens": round(warm.tokens / probe_tokens, 4) if probe_tokens else None},
        "many": {"models": n_models, "failed": sum(not fp.ok for fp in prints.values()), "wall_s": round(many_s, 1),
                 "cpus": int(ray.cluster_resources().get("CPU", 0)), "cpus_per_model": p.cpus_per_model},
    }


def format_phylo(result: dict[str, Any]) -> str:
    """The figures as the bench prints them."""
    fp, pr, share, many = result["fingerprint"], result["probe"], result["share_of_probe"], result["many"]
    tokens = "n/a" if share["tokens"] is None else f"{share['tokens']:.1%}"
    return "\n".join([
        f"bench phylo: {result['model']}, {result['genes']} genes x {result['samples']} samples of "
        f"{result['max_new_tokens']} tokens",
        f"  fingerprint: {fp['tokens']} tokens generated, {fp['warm_s']:.1f} s ({fp['cold_s']:.1f} s in a fresh worker)",
        f"  probe at {pr['sizes']}: {pr['tokens']} training tokens, {pr['wall_s']:.1f} s",
        f"  share of the probe: {share['seconds_warm']:.1%} of its seconds ({share['seconds_cold']:.1%} cold), "
        f"{tokens} of its tokens (target: at most 5%)",
        f"  {many['models']} fingerprints on {many['cpus']} CPUs ({many['cpus_per_model']:g} each): "
        f"{many['wall_s']:.0f} s wall, {many['failed']} failed",
    ])
