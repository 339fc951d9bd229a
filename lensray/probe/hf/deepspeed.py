"""DeepSpeed configs of the hf probe: the built-in ZeRO 0-2 templates and how their "auto" values
are filled from a ProbeConfig.

The templates equal cluster/deepspeed/zero{0,1,2}.json; a user's own template (probe.deepspeed_config)
is filled the same way. DeepSpeed runs on CPU here (gloo, `torch_adam: true`) and on GPUs with NCCL.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lensray.probe.hf.recipe import ProbeConfig


_OPTIMIZER = {
    "type": "AdamW",
    # torch_adam: torch's AdamW, no compiled op (DeepSpeed's fused/CPU Adam need a toolchain).
    "params": {"lr": "auto", "weight_decay": "auto", "betas": [0.9, 0.999], "eps": 1e-8, "torch_adam": True},
}


def builtin_deepspeed_template(stage: int) -> dict[str, Any]:
    """The DeepSpeed JSON template for ZeRO `stage` (identical to cluster/deepspeed/zero{stage}.json).

    Values "auto" are filled from the ProbeConfig by `fill_deepspeed_config`.
    """
    zero: dict[str, Any] = {"stage": stage}
    if stage == 2:
        zero.update(
            allgather_partitions=True, reduce_scatter=True, overlap_comm=False,
            contiguous_gradients=True, allgather_bucket_size=50_000_000, reduce_bucket_size=50_000_000,
        )
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "optimizer": copy.deepcopy(_OPTIMIZER),
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


def fill_deepspeed_config(template: dict[str, Any], cfg: ProbeConfig, world_size: int) -> dict[str, Any]:
    """Replace every "auto" in `template` with its value from `cfg` (a copy is returned)."""
    values = {
        ("train_micro_batch_size_per_gpu",): cfg.micro_batch,
        ("gradient_accumulation_steps",): cfg.grad_accum,
        ("train_batch_size",): cfg.micro_batch * cfg.grad_accum * world_size,
        ("gradient_clipping",): cfg.grad_clip,
        ("optimizer", "params", "lr"): cfg.lr,
        ("optimizer", "params", "weight_decay"): cfg.weight_decay,
        ("bf16", "enabled"): cfg.precision == "bf16",
        ("fp16", "enabled"): False,
    }

    def fill(node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, dict):
            return {k: fill(v, path + (k,)) for k, v in node.items()}
        if node == "auto":
            if path not in values:
                raise ValueError(f"DeepSpeed template: no value for \"auto\" at {'.'.join(path)}")
            return values[path]
        return node

    return fill(copy.deepcopy(template), ())
