"""The Probe, backend `hf`: fine-tune one Candidate on nested subsets with DeepSpeed via Ray Train.

One Probe is one Ray Tune trial. For each subset size D_1 < D_2 < ... it fine-tunes the
candidate from its *pretrained* weights (reloaded for every size) inside a Ray Train V2
`TorchTrainer` running DeepSpeed (ZeRO 0-2, fp32 or bf16, full fine-tuning or LoRA), measures
the mean response-token cross-entropy on the fixed held-out set (with `metric="task"`: the error
of greedy responses to the held-out prompts, scored under the data's sample design), and
reports one Observation: candidate, size, loss (or error), training tokens, FLOPs
(6 x parameters x tokens) and wall seconds. The LensLLM NTK term (lensray.ntk) of the
pretrained model goes in `Observation.extra`, with the zero-shot loss, the optimizer steps, the
weight change, the throughput and, with `metric="task"`, the accuracy, F1 and format error rate.

Use it::

    from lensray.probe import ProbeSpec, ProbeConfig, run_probe
    from lensray.data import DataConfig
    spec = ProbeSpec(candidate="llama-copy-96", model="zoo/models/llama-copy-96",
                     data=DataConfig(path="zoo/task.jsonl", sizes=(64, 128, 256)),
                     probe=ProbeConfig(num_workers=2, zero_stage=2))
    observations = run_probe(spec)          # no Tune needed; starts a local Ray if none

In a selection sweep, `lensray.trial.probe_trial` calls `run_probe` inside each Tune trial.

How it is cut: the trial process (`run_probe`) loads the tokenizer, tokenises the data (cached,
lensray.data), and starts ONE `TorchTrainer` whose workers loop over the sizes (a Ray worker
group and DeepSpeed start once per probe, not once per size). Each worker calls
`ray.train.report` after each size; inside a Tune trial Ray's `TuneReportCallback` forwards
every report to Tune as it happens (so a scheduler can stop the probe between sizes), with the
keys "candidate", "size", "loss", "tokens", "flops", "wall_s" and "extra". Rank 0 also returns
all observations, which is what `run_probe` gives back.

Failures: a probe that cannot go on raises `ProbeError` with a one-line `reason` (and the
observations it did finish in `.observations`): a model path or hub id that cannot be loaded,
a tokenizer with neither pad nor end token, data fields that do not exist, a data set too small
for the sizes, a diverging run (non-finite loss, or loss above `diverge_factor` x its first
value), running out of memory (a real OOM, or the worker RSS above `max_rss_gb`), or a worker
that died (after `max_failures` restarts). Inside Tune the trial records the reason and ends;
`failure_reason(error)` recovers it from what Ray wrapped around it.

Restarts: after each size rank 0 reports a tiny checkpoint (the Observations finished so far,
PROGRESS_FILE). When Ray Train restarts a worker group that died (`max_failures`), or a run is
started again under the same `run_name` and storage, the workers resume after the last
finished size; `extra["restarts"]` counts the restarts a size's result came after.

Examples longer than the context never fail a probe: they are truncated or dropped by
lensray.data and counted in `extra`.

Distributed: gloo on CPU and NCCL on GPU, chosen from whether the Ray cluster has GPUs
(`device="auto"`); 1 or more workers per probe. torch, transformers, deepspeed, peft and ray
are imported inside the functions, so `import lensray.probe` stays light.
"""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lensray.data import IGNORE_INDEX, DataConfig, DataError, check_fields, prepare_data
from lensray.ntk import NTKStats, ntk_term
from lensray.observation import Observation

PRECISIONS = ("fp32", "bf16")
METRICS = ("loss", "task")
DEVICES = ("auto", "cpu", "cuda")
ZERO_STAGES = (0, 1, 2)

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


class ProbeError(RuntimeError):
    """A probe ended early; `reason` is one line fit for a report, `observations` what it finished."""

    def __init__(self, reason: str, candidate: str = "", observations: list[Observation] | tuple = ()):
        super().__init__(f"probe of {candidate!r} failed: {reason}" if candidate else reason)
        self.reason = reason
        self.candidate = candidate
        self.observations = list(observations)

    def __reduce__(self):
        return (ProbeError, (self.reason, self.candidate, self.observations))


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
    parsed and scored under the data's sample design (lensray.design), reporting the error
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
        if self.deepspeed_config and not Path(self.deepspeed_config).is_file():
            raise ValueError(f"ProbeConfig.deepspeed_config={self.deepspeed_config!r}: no such file")

    def deepspeed(self, world_size: int) -> dict[str, Any]:
        """The DeepSpeed config for `world_size` workers: the template with "auto" filled."""
        if self.deepspeed_config:
            template = json.loads(Path(self.deepspeed_config).read_text())
        else:
            template = builtin_deepspeed_template(self.zero_stage)
        return fill_deepspeed_config(template, self, world_size)


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

    def __post_init__(self) -> None:
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
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "model": self.model,
            "data": self.data.to_dict(),
            "probe": asdict(self.probe),
            "trust_remote_code": self.trust_remote_code,
        }


# --------------------------------------------------------------------------------------------
# Driver side (the Tune trial process)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def load_tokenizer(spec: ProbeSpec):
    """The candidate's tokenizer, with pad = eos when it has no pad token."""
    from transformers import AutoConfig, AutoTokenizer

    where = Path(spec.model).expanduser()
    looks_local = where.is_absolute() or spec.model.startswith((".", "~")) or where.exists()
    if looks_local and not where.is_dir():
        raise ProbeError(f"model path {spec.model!r} does not exist (build the zoo with `lensray zoo build`?)", spec.candidate)
    if looks_local and not any(where.glob("*.safetensors")):
        raise ProbeError(f"model directory {spec.model!r} has no .safetensors weights (save it with save_pretrained)", spec.candidate)
    try:
        config = AutoConfig.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
        tok = AutoTokenizer.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
    except Exception as e:  # OSError (missing/offline), ValueError (remote code), ...
        where_ = "local directory" if looks_local else "hub id (is the hub reachable from here?)"
        raise ProbeError(f"cannot load model {spec.model!r} as a {where_}: {_one_line(e)}", spec.candidate) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ProbeError(
                f"tokenizer of {spec.model!r} has neither a pad nor an end (eos) token; add a pad token to it",
                spec.candidate,
            )
        tok.pad_token = tok.eos_token
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context and spec.data.max_length > context:
        raise ProbeError(
            f"DataConfig.max_length={spec.data.max_length} exceeds the context of {spec.model!r} "
            f"({context} tokens); lower max_length",
            spec.candidate,
        )
    return tok


def _use_gpu(cfg: ProbeConfig) -> bool:
    import ray

    if cfg.device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.device == "cuda"


def failure_reason(error: BaseException | None) -> str:
    """The one-line reason inside `error` (a ProbeError, or what Tune/Ray wrapped around one)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, ProbeError):
            return error.reason
        cause = getattr(error, "cause", None) or error.__cause__
        error = cause if isinstance(cause, BaseException) else None
    return "" if error is None else _one_line(error)


def _reason_from_training_error(e: BaseException) -> str:
    """A one-line reason from Ray Train's TrainingFailedError (worker errors, OOM kills, deaths)."""
    failures = getattr(e, "worker_failures", None) or {}
    if not failures:
        return f"training failed: {_one_line(getattr(e, 'controller_failure', None) or e)}"
    rank, err = sorted(failures.items())[0]
    text = str(err)
    # Worker errors arrive with the remote traceback in their text; keep the innermost
    # "Type: message" line, which names what went wrong.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if ": " in ln and not ln.startswith("File ")), _one_line(err))
    lowered = text.lower()
    if any(s in lowered for s in ("out of memory", "outofmemory", "can't allocate memory", "memoryerror")):
        return f"out of memory on worker rank {rank}: {last}"
    return f"worker rank {rank} failed: {last}"


def run_probe(spec: ProbeSpec) -> list[Observation]:
    """Fine-tune spec's candidate on every subset size; one Observation per size, in order.

    Raises ProbeError (see the module docstring). Starts a local Ray when none is running.
    """
    import ray

    cfg = spec.probe
    tokenizer = load_tokenizer(spec)
    try:
        data = prepare_data(spec.data, tokenizer)
    except DataError as e:
        raise ProbeError(str(e), spec.candidate) from None
    largest = data.subset(spec.data.sizes[-1])
    train_rows = list(zip(largest["input_ids"], largest["labels"]))
    eval_rows = list(zip(data.eval["input_ids"], data.eval["labels"]))
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    use_gpu = _use_gpu(cfg)
    loop_config = {
        "spec": spec.to_dict(),
        "pad_id": tokenizer.pad_token_id,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "ds_config": cfg.deepspeed(cfg.num_workers),
        "use_gpu": use_gpu,
        "data_counts": {"n_truncated": data.n_truncated, "n_dropped": data.n_dropped},
    }
    if cfg.metric == "task":
        loop_config["eval_prompts"] = list(data.eval["prompt_ids"])
        loop_config["eval_references"] = list(data.eval["reference"])
    result = _fit(spec, loop_config, use_gpu)
    payload = result.return_value or {}
    observations = [_observation(d) for d in payload.get("observations", [])]
    if payload.get("error"):
        raise ProbeError(payload["error"], spec.candidate, observations)
    if len(observations) != len(spec.data.sizes):
        raise ProbeError(f"the workers returned {len(observations)} of {len(spec.data.sizes)} sizes", spec.candidate, observations)
    return observations


def _fit(spec: ProbeSpec, loop_config: dict[str, Any], use_gpu: bool):
    """Run the TorchTrainer; map its failures to ProbeError."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    cfg = spec.probe
    callbacks = []
    if _in_tune_session():
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.run_name or f"probe-{spec.candidate}-{uuid.uuid4().hex[:8]}",
            storage_path=cfg.storage_path or None,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
        ),
    )
    try:
        result = trainer.fit()
    except Exception as e:  # ray.train.TrainingFailedError and friends
        raise ProbeError(_reason_from_training_error(e), spec.candidate) from None
    if getattr(result, "error", None) is not None:
        raise ProbeError(_reason_from_training_error(result.error), spec.candidate)
    return result


def _observation(d: dict[str, Any]) -> Observation:
    return Observation(
        candidate=d["candidate"], size=int(d["size"]), loss=float(d["loss"]), tokens=int(d["tokens"]),
        flops=float(d["flops"]), wall_s=float(d["wall_s"]), extra=dict(d.get("extra", {})),
    )


# --------------------------------------------------------------------------------------------
# Worker side (one Ray Train worker process per rank)


def _pad(rows, pad_id: int, torch, device):
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _evaluate(model, rows, pad_id, batch, rank, world, torch, device) -> float:
    """Mean response-token cross-entropy over all `rows`, each rank taking rows[rank::world]."""
    import torch.distributed as dist

    total = torch.zeros(2, dtype=torch.float64, device=device)
    mine = rows[rank::world]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(mine), batch):
            ids, mask, labels = _pad(mine[i : i + batch], pad_id, torch, device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            total[0] += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
            ).double()
            total[1] += (target != IGNORE_INDEX).sum()
    model.train(was_training)
    if world > 1:
        dist.all_reduce(total)
    return float(total[0] / total[1].clamp(min=1))


def _generate(model, prompts, pad_id: int, eos_id: int, cfg: ProbeConfig, rank, world, torch, device) -> list[list[int]]:
    """Greedy responses (token ids up to the end token) to prompts[rank::world]. Prompts of one
    length are batched together, so no padding enters the model (left padding is handled
    differently, or not at all, by different architectures)."""
    mine = prompts[rank::world]
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(mine):
        by_length.setdefault(len(p), []).append(i)
    out: list[list[int]] = [[] for _ in mine]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for n, rows in by_length.items():
            new = min(cfg.max_new_tokens, context - n) if context else cfg.max_new_tokens
            for j in range(0, len(rows), cfg.eval_batch) if new > 0 else ():
                chunk = rows[j : j + cfg.eval_batch]
                ids = torch.tensor([mine[i] for i in chunk], dtype=torch.long, device=device)
                gen = model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False,
                    eos_token_id=eos_id, pad_token_id=pad_id,
                )
                for i, row in zip(chunk, gen[:, n:].tolist()):
                    out[i] = row[: row.index(eos_id)] if eos_id in row else row
    model.train(was_training)
    return out


def _task_metric(model, spec: ProbeSpec, config: dict[str, Any], tokenizer, rank, world, torch, device) -> dict[str, Any]:
    """metric=task: every rank generates for its share of the held-out prompts; the outputs are
    gathered and scored against the references under the data's design (lensray.data)."""
    import torch.distributed as dist

    from lensray.data import score_outputs

    prompts = config["eval_prompts"]
    mine = _generate(model, prompts, tokenizer.pad_token_id, tokenizer.eos_token_id, spec.probe, rank, world, torch, device)
    shares = [mine]
    if world > 1:
        shares = [None] * world
        dist.all_gather_object(shares, mine)
    outputs = [""] * len(prompts)
    for r, share in enumerate(shares):  # rank r generated prompts[r::world]
        for k, ids in enumerate(share):
            outputs[r + k * world] = tokenizer.decode(ids, skip_special_tokens=True)
    result = score_outputs(outputs, config["eval_references"], spec.data.sample_design, spec.data.schema)
    return {
        "metric": "task", "error": result.error, "error_smoothed": result.smoothed_error,
        "accuracy": result.accuracy, "f1": result.f1, "format_error_rate": result.format_error_rate,
        "scored": result.n, "sample_output": outputs[0],
    }


def _load_model(spec: ProbeSpec, torch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        spec.model, use_safetensors=True, trust_remote_code=spec.trust_remote_code, dtype=torch.float32
    )
    n_params = sum(p.numel() for p in model.parameters())
    if spec.probe.lora:
        from peft import LoraConfig, get_peft_model

        cfg = spec.probe
        targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
        model = get_peft_model(
            model,
            LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       target_modules=targets, task_type="CAUSAL_LM"),
        )
    return model, n_params


def _train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker loop: for each size, reload, fine-tune with DeepSpeed, evaluate, report."""
    import gc
    import logging

    import deepspeed
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist
    import transformers

    transformers.logging.set_verbosity_error()
    deepspeed.utils.logger.setLevel(logging.WARNING)
    spec = ProbeSpec.from_dict(config["spec"])
    cfg = spec.probe
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config["use_gpu"]:
        device = torch.device("cuda", ctx.get_local_rank())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    pad_id = config["pad_id"]
    tokenizer = load_tokenizer(spec) if cfg.metric == "task" else None
    train_rows = [tuple(r) for r in config["train_rows"]]
    eval_rows = [tuple(r) for r in config["eval_rows"]]
    global_batch = cfg.micro_batch * world
    per_step = global_batch * cfg.grad_accum
    ntk: NTKStats | None = None
    zero_shot: float | None = None
    observations, restarts = _resume_state(ray.train.get_checkpoint())
    finished = {o["size"] for o in observations}
    error = None

    def agree(value: float, op) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(t, op=op)
        return float(t)

    for size in [d for d in spec.data.sizes if d not in finished]:
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        try:
            model, n_params = _load_model(spec, torch)
            load_error = ""
        except Exception as e:  # corrupt or incompatible weights, peft target mismatch, ...
            load_error = f"cannot load {spec.model!r} for fine-tuning: {_one_line(e)}"
        if agree(float(bool(load_error)), dist.ReduceOp.MAX):  # every rank stops together
            error = load_error or f"cannot load {spec.model!r} on another worker"
            break
        model.to(device)
        if zero_shot is None:
            zero_shot = _evaluate(model, eval_rows, pad_id, cfg.eval_batch, rank, world, torch, device)
            if rank == 0 and cfg.ntk_examples:
                from lensray.ntk import diag_ntk

                ntk = diag_ntk(model, train_rows[: cfg.ntk_examples], device)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        before = {n: p.detach().clone() for n, p in trainable}
        engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=[p for _, p in trainable], config=config["ds_config"]
        )
        steps = cfg.max_steps or cfg.epochs * math.ceil(size / per_step)
        rng = np.random.default_rng([cfg.seed, size])
        order: list[int] = []
        tokens = 0.0
        first_loss = None
        train_start = time.perf_counter()
        engine.train()
        for step in range(steps):
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                if len(order) < global_batch:  # next epoch(s): a fresh permutation of the subset
                    order += [int(i) for i in rng.permutation(size)] * math.ceil(global_batch / size)
                batch_idx, order = order[:global_batch], order[global_batch:]
                mine = [train_rows[i] for i in batch_idx[rank * cfg.micro_batch : (rank + 1) * cfg.micro_batch]]
                ids, mask, labels = _pad(mine, pad_id, torch, device)
                loss = engine(input_ids=ids, attention_mask=mask, labels=labels).loss
                engine.backward(loss)
                engine.step()
                step_loss += float(loss.detach()) / cfg.grad_accum
                tokens += float(mask.sum())
            mean_loss = agree(step_loss, dist.ReduceOp.SUM) / world
            first_loss = mean_loss if first_loss is None else first_loss
            if not math.isfinite(mean_loss) or mean_loss > cfg.diverge_factor * first_loss:
                error = (f"diverged at size {size}, step {step + 1}/{steps}: training loss {mean_loss:.4g} "
                         f"(first {first_loss:.4g}); lower ProbeConfig.lr={cfg.lr:g}")
                break
            rss = agree(_peak_rss_gb(), dist.ReduceOp.MAX)
            if cfg.max_rss_gb and rss > cfg.max_rss_gb:
                error = (f"out of memory at size {size}: worker peak RSS {rss:.2f} GB exceeds "
                         f"ProbeConfig.max_rss_gb={cfg.max_rss_gb:g}; lower micro_batch or raise the limit")
                break
        train_s = time.perf_counter() - train_start
        if error:
            break
        loss = _evaluate(engine.module, eval_rows, pad_id, cfg.eval_batch, rank, world, torch, device)
        if not math.isfinite(loss):
            error = f"diverged at size {size}: held-out loss is {loss}; lower ProbeConfig.lr={cfg.lr:g}"
            break
        task: dict[str, Any] = {}
        if cfg.metric == "task":
            task = _task_metric(engine.module, spec, config, tokenizer, rank, world, torch, device)
        tokens = agree(tokens, dist.ReduceOp.SUM)
        delta = math.sqrt(sum(float((p.detach() - before[n]).float().pow(2).sum()) for n, p in trainable))
        extra: dict[str, Any] = {
            "steps": steps,
            "lr": cfg.lr,
            "zero_shot_loss": zero_shot,
            "eval_loss": loss,
            "train_loss_first": first_loss,
            "train_loss_last": mean_loss,
            "weight_delta": delta,
            "n_params": n_params,
            "trainable_params": sum(p.numel() for _, p in trainable),
            "train_s": train_s,
            "tokens_per_s": tokens / train_s if train_s > 0 else 0.0,
            "peak_rss_gb": agree(_peak_rss_gb(), dist.ReduceOp.MAX),
            "num_workers": world,
            "zero_stage": config["ds_config"]["zero_optimization"]["stage"],
            "lora": cfg.lora,
            "restarts": restarts,
            **config["data_counts"],
            **task,
        }
        if ntk is not None:
            f, log_f = ntk_term(ntk, cfg.lr, steps)
            extra |= {
                "ntk_F": f, "ntk_log_F": log_f,
                "ntk_theta_mean": float(np.mean(ntk.theta)), "ntk_residual_mean": float(np.mean(ntk.residual)),
                "ntk_t": steps, "ntk_eta": cfg.lr, "ntk_examples": len(ntk.theta),
            }
        obs = {
            "candidate": spec.candidate, "size": size, "loss": task.get("error_smoothed", loss), "tokens": int(tokens),
            "flops": 6.0 * n_params * tokens, "wall_s": time.perf_counter() - start, "extra": extra,
        }
        observations.append(obs)
        _report(obs, observations, restarts, rank)
        del engine, model, before  # the next size starts again from the pretrained weights
        gc.collect()
        if config["use_gpu"]:
            torch.cuda.empty_cache()
    return {"observations": observations, "error": error}


PROGRESS_FILE = "probe_progress.json"
"""A probe's checkpoint: the Observations it finished and how often its workers restarted. Every
size starts again from the pretrained weights, so this is all a restarted worker group needs."""


def _resume_state(checkpoint) -> tuple[list[dict[str, Any]], int]:
    """(finished observations, restarts so far) of a worker group restarted from `checkpoint`."""
    if checkpoint is None:
        return [], 0
    with checkpoint.as_directory() as folder:
        state = json.loads((Path(folder) / PROGRESS_FILE).read_text())
    return state["observations"], state["restarts"] + 1


def _report(obs: dict[str, Any], observations: list[dict[str, Any]], restarts: int, rank: int) -> None:
    """Report one size, with rank 0's checkpoint of everything finished so far."""
    import tempfile

    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:
            (Path(folder) / PROGRESS_FILE).write_text(json.dumps({"observations": observations, "restarts": restarts}))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(obs, checkpoint=checkpoint)


# --------------------------------------------------------------------------------------------
# Benchmark


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
    built first when missing (lensray.zoo). Runs on this machine's CPUs (or GPUs if Ray sees any).
    """
    from lensray.zoo import build_zoo, load_manifest

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
        "worker_peak_rss_gb": round(obs.extra["peak_rss_gb"], 3), "driver_peak_rss_gb": round(_peak_rss_gb(), 3),
        "loss": round(obs.loss, 4),
    }
    print(
        f"bench probe: {model} D={size} workers={num_workers} ZeRO-{zero_stage}{' LoRA' if lora else ''}: "
        f"{out['tokens_per_s']:.0f} tokens/s training ({obs.tokens} tokens in {out['train_s']}s), "
        f"probe wall {out['wall_s']}s, peak RSS worker {out['worker_peak_rss_gb']} GB / driver {out['driver_peak_rss_gb']} GB"
    )
    return out
