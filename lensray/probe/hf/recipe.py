"""The hf probe's recipe: how a Candidate is fine-tuned (ProbeConfig) and everything one probe
needs (ProbeSpec). Plain dataclasses; nothing heavy is imported.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lensray.data.dataset import DataConfig, check_fields
from lensray.probe.hf.deepspeed import builtin_deepspeed_template, fill_deepspeed_config
from lensray.stages.aggregate.config import AggregateConfig

PRECISIONS = ("fp32", "bf16")


METRICS = ("loss", "task")


DEVICES = ("auto", "cpu", "cuda")


ZERO_STAGES = (0, 1, 2)


@dataclass
class ProbeConfig:
    """How a Probe fine-tunes: DeepSpeed, optimisation, LoRA, workers and safety limits."""

    backend: str = "hf"
    """Probe backend; this module implements `hf` (the `replay` backend lives elsewhere)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0, 1 or 2 (ignored when deepspeed_config names a file)."""
    deepspeed_config: str = ""
    """Path to a DeepSpeed JSON template (e.g. cluster/deepspeed/zero2.json); "auto" values are filled from this config."""
    precision: str = "fp32"
    """fp32 or bf16 (bf16 needs hardware support; on CPU it is slow and for checking only)."""
    micro_batch: int = 8
    """Examples per worker per micro-step."""
    grad_accum: int = 1
    """Micro-steps per optimizer step; global batch = micro_batch x grad_accum x num_workers."""
    lr: float = 1e-3
    """AdamW learning rate (constant); also the eta of the NTK term."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Gradient norm clipping (0 = off)."""
    epochs: int = 2
    """Passes over each subset (when max_steps is 0): steps grow with the subset size."""
    max_steps: int = 0
    """If > 0, exactly this many optimizer steps per size instead of epochs."""
    lora: bool = False
    """Fine-tune LoRA adapters (peft) instead of all weights."""
    lora_r: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_targets: str = "all-linear"
    """peft target_modules: `all-linear` or a comma-separated list of module names."""
    num_workers: int = 1
    """Ray Train workers (data-parallel ranks) per probe."""
    cpus_per_worker: float = 1.0
    """CPUs Ray reserves per worker (also its torch threads)."""
    device: str = "auto"
    """auto (GPU when the Ray cluster has one), cpu (gloo) or cuda (NCCL, one GPU per worker)."""
    eval_batch: int = 32
    """Examples per evaluation batch (loss and generation)."""
    metric: str = "loss"
    """What a probe reports as its Observation's `loss`, the quantity fitted and ranked: `loss`
    (held-out response-token cross-entropy) or `task`: greedy responses to the held-out prompts,
    parsed and scored under the data's sample design (lensray.data.design), reporting the error
    1 - accuracy (smoothed, `TaskScore.smoothed_error`), with the accuracy, F1, format error
    rate and cross-entropy in `extra`. Loss is not comparable across sample designs (their
    targets differ); the task error is."""
    max_new_tokens: int = 64
    """metric=task: longest response generated (also capped by the model's context)."""
    ntk_examples: int = 8
    """Training examples the NTK term is measured on (0 = skip the NTK term)."""
    diverge_factor: float = 10.0
    """Stop as diverged when the training loss is non-finite or above this x its first value."""
    max_rss_gb: float = 0.0
    """Stop as out of memory when a worker's peak RSS exceeds this many GB (0 = no limit)."""
    seed: int = 0
    """Seed of the batch order and LoRA initialisation."""
    storage_path: str = ""
    """Where Ray Train writes run directories: a path every node sees, or a pyarrow URI such as
    s3://bucket/prefix (empty = Ray's default, ~/ray_results)."""
    run_name: str = ""
    """Ray Train run name (empty = probe-<candidate>-<random>). A run started again under the same
    name and storage resumes after the sizes it finished."""
    weights_path: str = ""
    """Where rank 0 keeps the fine-tuned weights after each size, replacing the last size's (a
    folder path or a pyarrow URI; empty = keep none). Set by lensray when the `route` stage will
    serve the finalists."""
    in_process: bool = False
    """Fine-tune in the calling process, through Ray Train's local mode (a TorchTrainer of
    `num_workers=0`), instead of in a worker group of its own: one CPU rank. Set by lensray for a
    one-worker CPU probe in a Tune trial, which is a Ray worker already: it saves starting Ray
    Train's controller, its worker and their helper actors, each a process importing Ray (and the
    worker torch), for every candidate. `max_failures` does not apply (Tune retries the trial)."""
    max_failures: int = 0
    """Restarts of the workers after they die (a lost node, a killed process); a restart resumes
    after the last finished size. Errors the probe itself reports (bad data, divergence, a model
    that cannot load) are never retried."""

    def __post_init__(self) -> None:
        if self.backend != "hf":
            raise ValueError(f"ProbeConfig.backend={self.backend!r}: this probe runs `hf`; use the replay probe for `replay`")
        if self.zero_stage not in ZERO_STAGES:
            raise ValueError(f"ProbeConfig.zero_stage={self.zero_stage}: use one of {list(ZERO_STAGES)} (ZeRO-3 is not supported)")
        if self.precision not in PRECISIONS:
            raise ValueError(f"ProbeConfig.precision={self.precision!r}: use one of {list(PRECISIONS)}")
        if self.device not in DEVICES:
            raise ValueError(f"ProbeConfig.device={self.device!r}: use one of {list(DEVICES)}")
        if self.metric not in METRICS:
            raise ValueError(f"ProbeConfig.metric={self.metric!r}: use one of {list(METRICS)}")
        for name in ("micro_batch", "grad_accum", "num_workers", "eval_batch", "lora_r", "epochs", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name}={getattr(self, name)}: must be at least 1")
        for name in ("max_steps", "ntk_examples", "weight_decay", "grad_clip", "max_rss_gb", "lora_dropout", "max_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"ProbeConfig.{name}={getattr(self, name)}: must be >= 0")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"ProbeConfig.lr={self.lr}: must be a positive number, e.g. 1e-3")
        if self.cpus_per_worker <= 0:
            raise ValueError(f"ProbeConfig.cpus_per_worker={self.cpus_per_worker}: must be > 0")
        if self.diverge_factor <= 1:
            raise ValueError(f"ProbeConfig.diverge_factor={self.diverge_factor}: must be > 1, e.g. 10")
        if self.in_process and (self.num_workers != 1 or self.device == "cuda"):
            raise ValueError(
                f"ProbeConfig.in_process needs one CPU worker, got num_workers={self.num_workers}, "
                f"device={self.device!r}: set in_process=False for a worker group"
            )
        if self.deepspeed_config and not Path(self.deepspeed_config).is_file():
            raise ValueError(f"ProbeConfig.deepspeed_config={self.deepspeed_config!r}: no such file")

    def deepspeed(self, world_size: int) -> dict[str, Any]:
        """The DeepSpeed config for `world_size` workers: the template with "auto" filled."""
        if self.deepspeed_config:
            template = json.loads(Path(self.deepspeed_config).read_text())
        else:
            template = builtin_deepspeed_template(self.zero_stage)
        return fill_deepspeed_config(template, self, world_size)


@dataclass
class ProbeSpec:
    """Everything one Probe (one Tune trial) needs: the Candidate's model, the data, the recipe."""

    candidate: str
    """Candidate name the Observations carry."""
    model: str
    """Local model directory (save_pretrained layout) or a hub id."""
    data: DataConfig
    """The data set, template and nested subset sizes."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """How to fine-tune."""
    trust_remote_code: bool = False
    """Let transformers run code shipped with the model (only for candidates that need it)."""
    aggregate: AggregateConfig | None = None
    """The `aggregate` design (Aggregation Fine-Tuning): each size fine-tunes plainly, then on
    aggregation samples of the model's own proposals, and answers by propose-and-aggregate
    (lensray.stages.aggregate.probe; needs metric task). None: a plain probe."""

    def __post_init__(self) -> None:
        if self.aggregate is not None and self.probe.metric != "task":
            raise ValueError(f"ProbeSpec.aggregate is set for {self.candidate!r} but ProbeConfig.metric is "
                             f"{self.probe.metric!r}: propose-and-aggregate is scored by its answers; set metric='task'")
        if not self.candidate:
            raise ValueError("ProbeSpec.candidate is empty: name the candidate")
        if not self.model:
            raise ValueError(f"ProbeSpec.model is empty for candidate {self.candidate!r}: give a model directory or hub id")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProbeSpec":
        """Build from plain dicts (a Tune config): {"candidate", "model", "data": {...}, "probe": {...}}."""
        check_fields("ProbeSpec", d, cls)
        probe = d.get("probe", {})
        if isinstance(probe, dict):
            check_fields("ProbeConfig", probe, ProbeConfig)
        return cls(
            candidate=d.get("candidate", ""),
            model=d.get("model", ""),
            data=d["data"] if isinstance(d.get("data"), DataConfig) else DataConfig.from_dict(d.get("data", {})),
            probe=probe if isinstance(probe, ProbeConfig) else ProbeConfig(**probe),
            trust_remote_code=bool(d.get("trust_remote_code", False)),
            aggregate=AggregateConfig(**d["aggregate"]) if isinstance(d.get("aggregate"), dict) else d.get("aggregate"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "model": self.model,
            "data": self.data.to_dict(),
            "probe": asdict(self.probe),
            "trust_remote_code": self.trust_remote_code,
            "aggregate": asdict(self.aggregate) if self.aggregate is not None else None,
        }
