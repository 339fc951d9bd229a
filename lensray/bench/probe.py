"""`lensray bench probe`: one hf probe's throughput (tokens/s), model FLOPs utilisation, memory,
and where its wall time goes, on this machine.

    lensray bench probe [--model NAME] [--size N [N ...]] [--workers W] [--zero-stage S] [--lora]
                        [--device auto|cpu|cuda] [--precision fp32|bf16] [--peak-tflops F] [--worker-group]
    lensray bench probe --device cuda --precision bf16 --model llama-1b --size 512   # a GPU

NAME is a zoo model (fine-tuned on the zoo's task) or a hub-sized model of
lensray.zoo.hub_sized (random weights, fine-tuned on long random sequences of `--length`
tokens). MFU is the training FLOPs (6 x parameters x tokens) per second per worker over the
device's dense bf16 peak (`PEAK_BF16_TFLOPS`, by the CUDA device's name, or `--peak-tflops`);
on a CPU it is not given. One CPU worker fine-tunes in process, as a sweep runs it
(`ProbeConfig.in_process`); `--worker-group` starts a Ray Train worker group for it instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from lensray.core.errors import ConfigError
from lensray.data.dataset import DataConfig
from lensray.probe.hf.driver import ensure_ray, run_probe
from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec
from lensray.probe.hf.worker import PHASES, peak_rss_gb

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
"""Dense bf16 tensor-core peak per GPU (NVIDIA's data sheets), matched as a substring of the CUDA
device name, first match wins."""


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU called `device_name`, or None when it is not in the table."""
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device_name), None)


def bench_probe(
    zoo_dir: Path = Path("zoo"),
    model: str = "llama-copy-96",
    sizes: tuple[int, ...] = (1024,),
    num_workers: int = 1,
    zero_stage: int = 2,
    lora: bool = False,
    micro_batch: int = 8,
    device: str = "auto",
    precision: str = "fp32",
    length: int = 512,
    peak: float | None = None,
    worker_group: bool = False,
) -> dict[str, Any]:
    """Fine-tune one model on each of `sizes` (one probe, as the sweep runs it) and print its
    throughput, MFU, peak memory and where its wall time went.

    Returns {"model", "sizes", "num_workers", "in_process", "zero_stage", "lora", "device", "precision",
    "n_params", "tokens", "train_s", "tokens_per_s", "mfu", "peak_tflops", "wall_s",
    "worker_peak_rss_gb", "peak_gpu_gb", "driver_peak_rss_gb", "loss", "fixed_share", "phase_s"}:
    `phase_s` holds rank 0's seconds per phase (lensray.probe.hf.worker.PHASES) summed over the
    sizes, with "other" the rest of the wall time (Ray Train's shut-down, the results back to the
    driver); `fixed_share` is the share of the wall time not spent training or evaluating. The
    zoo is built first when missing (lensray.zoo.build).
    """
    from lensray.zoo.build import build_zoo, load_manifest
    from lensray.zoo.hub_sized import HUB_SIZED, build_hub_sized, long_examples_file

    if device == "cuda" and not os.environ.get("RAY_ADDRESS"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: this machine has no CUDA GPU (torch sees none); use --device cpu, or "
                              "set RAY_ADDRESS to a cluster with GPUs")
    build_zoo(zoo_dir)
    manifest = load_manifest(zoo_dir)
    paths = {m["name"]: m["path"] for m in manifest["models"]}
    if model in HUB_SIZED:
        path = str(build_hub_sized(model, zoo_dir))
        data = DataConfig(path=str(long_examples_file(zoo_dir, length, max(2048, max(sizes) + 64))), sizes=tuple(sizes),
                          eval_size=16, max_length=length)
    elif model in paths:
        path, data = paths[model], DataConfig(path=manifest["task"], sizes=tuple(sizes), eval_size=128)
    else:
        raise ConfigError(f"--model {model!r}: not a zoo model; use one of {sorted(paths)} or a hub-sized "
                          f"model {sorted(HUB_SIZED)}")
    ensure_ray()  # as in a sweep, Ray is up before the probe starts (not timed)
    import ray

    # as in a sweep (lensray.probe.hf.backend.in_process), one CPU worker fine-tunes in process
    on_cpu = device == "cpu" or (device == "auto" and not ray.cluster_resources().get("GPU", 0))
    spec = ProbeSpec(
        candidate=model, model=path, data=data,
        probe=ProbeConfig(num_workers=num_workers, zero_stage=zero_stage, lora=lora, micro_batch=micro_batch,
                          epochs=1, ntk_examples=0, device=device, precision=precision,
                          in_process=num_workers == 1 and on_cpu and not worker_group),
    )
    start = time.perf_counter()
    observations = run_probe(spec)
    wall = time.perf_counter() - start
    phases = {p: sum(o.extra["phase_s"].get(p, 0.0) for o in observations) for p in PHASES}
    phases["other"] = max(0.0, wall - sum(phases.values()))
    tokens = sum(o.tokens for o in observations)
    train_s = sum(o.extra["train_s"] for o in observations)
    last = observations[-1].extra
    on_gpu = last.get("device_name") is not None
    peak = peak if peak is not None else peak_tflops(last["device_name"]) if on_gpu else None
    flops_per_s = 6.0 * last["trainable_params" if lora else "n_params"] * tokens / train_s / num_workers
    out = {
        "model": model, "sizes": list(sizes), "num_workers": num_workers, "in_process": spec.probe.in_process, "zero_stage": zero_stage, "lora": lora,
        "device": last.get("device_name") or "cpu", "precision": precision, "n_params": last["n_params"],
        "tokens": tokens, "train_s": round(train_s, 3), "tokens_per_s": round(tokens / train_s, 1),
        "mfu": round(flops_per_s / (peak * 1e12), 4) if on_gpu and peak else None, "peak_tflops": peak if on_gpu else None,
        "wall_s": round(wall, 2), "worker_peak_rss_gb": round(max(o.extra["peak_rss_gb"] for o in observations), 3),
        "peak_gpu_gb": round(max(o.extra["peak_gpu_gb"] for o in observations), 3) if on_gpu else None,
        "driver_peak_rss_gb": round(peak_rss_gb(), 3), "loss": round(observations[-1].loss, 4),
        "fixed_share": round(1.0 - (phases["train"] + phases["eval"]) / wall, 4),
        "phase_s": {p: round(v, 3) for p, v in phases.items()},
    }
    mfu = f", MFU {100 * out['mfu']:.1f}% of {peak:g} TFLOP/s bf16" if out["mfu"] is not None else ""
    gpu = f" / GPU {out['peak_gpu_gb']} GB" if on_gpu else ""
    print(
        f"bench probe: {model} ({out['n_params'] / 1e6:.1f}M parameters) D={','.join(map(str, sizes))} on {out['device']} "
        f"{precision} workers={num_workers}{' in process' if spec.probe.in_process else ''} ZeRO-{zero_stage}{' LoRA' if lora else ''}: {out['tokens_per_s']:.0f} tokens/s "
        f"training ({tokens} tokens in {out['train_s']}s){mfu}; probe wall {out['wall_s']}s, peak memory worker "
        f"{out['worker_peak_rss_gb']} GB{gpu} / driver {out['driver_peak_rss_gb']} GB"
    )
    print(f"bench probe: wall time by phase ({100 * out['fixed_share']:.1f}% neither training nor evaluating):")
    for phase, seconds in out["phase_s"].items():
        print(f"  {phase:16s} {seconds:8.2f} s  {100 * seconds / wall:5.1f}%")
    return out
