"""`lensray bench probe`: the hf probe's throughput (tokens/s), MFU and memory on this machine.

    lensray bench probe [--model NAME] [--size N] [--workers W] [--zero-stage S] [--lora]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lensray.data.dataset import DataConfig
from lensray.probe.hf.driver import run_probe
from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec
from lensray.probe.hf.worker import peak_rss_gb


def bench_probe(
    zoo_dir: Path = Path("zoo"),
    model: str = "llama-copy-96",
    size: int = 1024,
    num_workers: int = 1,
    zero_stage: int = 2,
    lora: bool = False,
    micro_batch: int = 8,
) -> dict[str, Any]:
    """Fine-tune one zoo model on one subset size and print throughput and peak memory.

    Returns {"model", "size", "num_workers", "zero_stage", "lora", "tokens", "train_s",
    "tokens_per_s", "wall_s", "worker_peak_rss_gb", "driver_peak_rss_gb", "loss"}. The zoo is
    built first when missing (lensray.zoo.build). Runs on this machine's CPUs (or GPUs if Ray sees any).
    """
    from lensray.zoo.build import build_zoo, load_manifest

    build_zoo(zoo_dir)
    manifest = load_manifest(zoo_dir)
    paths = {m["name"]: m["path"] for m in manifest["models"]}
    if model not in paths:
        raise ValueError(f"bench_probe: no zoo model {model!r}; the zoo has {sorted(paths)}")
    spec = ProbeSpec(
        candidate=model,
        model=paths[model],
        data=DataConfig(path=manifest["task"], sizes=(size,), eval_size=128),
        probe=ProbeConfig(num_workers=num_workers, zero_stage=zero_stage, lora=lora,
                          micro_batch=micro_batch, epochs=1, ntk_examples=0),
    )
    start = time.perf_counter()
    (obs,) = run_probe(spec)
    out = {
        "model": model, "size": size, "num_workers": num_workers, "zero_stage": zero_stage, "lora": lora,
        "tokens": obs.tokens, "train_s": round(obs.extra["train_s"], 3),
        "tokens_per_s": round(obs.extra["tokens_per_s"], 1), "wall_s": round(time.perf_counter() - start, 2),
        "worker_peak_rss_gb": round(obs.extra["peak_rss_gb"], 3), "driver_peak_rss_gb": round(peak_rss_gb(), 3),
        "loss": round(obs.loss, 4),
    }
    print(
        f"bench probe: {model} D={size} workers={num_workers} ZeRO-{zero_stage}{' LoRA' if lora else ''}: "
        f"{out['tokens_per_s']:.0f} tokens/s training ({obs.tokens} tokens in {out['train_s']}s), "
        f"probe wall {out['wall_s']}s, peak RSS worker {out['worker_peak_rss_gb']} GB / driver {out['driver_peak_rss_gb']} GB"
    )
    return out
