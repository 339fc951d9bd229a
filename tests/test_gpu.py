"""The GPU path, for a machine with CUDA GPUs (marked `gpu`; skipped where torch sees none):
a bf16 ZeRO-2 probe over NCCL on one GPU and on two when there are two, and `lensray bench
probe`'s throughput, MFU and memory on the hub-sized model. `cluster/gpu-check.sh` runs them
with the GPU benchmark in one go."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]


def gpu_spec(zoo_manifest, tmp_path, workers: int):
    from lensray.data.dataset import DataConfig
    from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec

    return ProbeSpec(
        candidate="llama-copy-96", model=zoo_manifest["by_name"]["llama-copy-96"]["path"],
        data=DataConfig(path=zoo_manifest["task"], sizes=(64, 128, 256), eval_size=32, max_length=16,
                        cache_dir=str(tmp_path / "cache")),
        probe=ProbeConfig(num_workers=workers, zero_stage=2, precision="bf16", device="cuda", micro_batch=8,
                          epochs=3, lr=3e-3, ntk_examples=0, storage_path=str(tmp_path / "runs")),
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bf16_zero2_probe_trains_over_nccl(zoo_manifest, ray_local, tmp_path, workers):
    from lensray.probe.hf.driver import run_probe

    if torch.cuda.device_count() < workers:
        pytest.skip(f"needs {workers} GPUs")
    observations = run_probe(gpu_spec(zoo_manifest, tmp_path, workers))
    losses = [o.loss for o in observations]
    assert all(math.isfinite(v) for v in losses) and losses[0] > losses[-1], losses
    for o in observations:
        assert o.extra["dist_backend"] == "nccl" and o.extra["num_workers"] == workers
        assert o.extra["zero_stage"] == 2 and o.extra["device_name"] and o.extra["peak_gpu_gb"] > 0


def test_bench_probe_gives_mfu_and_memory_on_the_hub_sized_model(zoo_dir, ray_local):
    from lensray.bench.probe import bench_probe

    out = bench_probe(zoo_dir, "llama-1b", sizes=(256,), device="cuda", precision="bf16", length=512, micro_batch=8)
    print(out)
    assert 0.9e9 < out["n_params"] < 1.0e9 and out["precision"] == "bf16"
    assert out["peak_gpu_gb"] > 2 and out["tokens_per_s"] > 0
    assert out["peak_tflops"] is None or 0 < out["mfu"] < 1
