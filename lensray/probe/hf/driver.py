"""The Probe, backend `hf`: fine-tune one Candidate on nested subsets with DeepSpeed via Ray Train.

One Probe is one Ray Tune trial. For each subset size D_1 < D_2 < ... it fine-tunes the
candidate from its *pretrained* weights (read once, copied in memory for every size) inside a
Ray Train V2 `TorchTrainer` running DeepSpeed (ZeRO 0-2, fp32 or bf16, full fine-tuning or
LoRA), measures the mean response-token cross-entropy on the fixed held-out set (with
`metric="task"`: the error of greedy responses to the held-out prompts, scored under the data's
sample design), and reports one Observation: candidate, size, loss (or error), training tokens,
FLOPs (6 x parameters x tokens) and wall seconds. The LensLLM NTK term (lensray.probe.hf.ntk) of
the pretrained model goes in `Observation.extra`, with the zero-shot loss, the optimizer steps,
the weight change, the throughput, the wall time by phase (lensray.probe.hf.worker.PHASES; on a
GPU also the device and its peak memory) and, with `metric="task"`, the accuracy, F1 and format
error rate and one record per held-out query (lensray.probe.hf.worker.QUERY_FIELDS). Under the
`aggregate` design (`ProbeSpec.aggregate`) each size also tunes on aggregation samples of the
model's own proposals and is scored by propose-and-aggregate (lensray.stages.aggregate.probe).

Use it::

    from lensray.probe.hf.recipe import ProbeSpec, ProbeConfig
    from lensray.probe.hf.driver import run_probe
    from lensray.data.dataset import DataConfig
    spec = ProbeSpec(candidate="llama-copy-96", model="zoo/models/llama-copy-96",
                     data=DataConfig(path="zoo/task.jsonl", sizes=(64, 128, 256)),
                     probe=ProbeConfig(num_workers=2, zero_stage=2))
    observations = run_probe(spec)          # no Tune needed; starts a local Ray if none

In a selection sweep, `lensray.trial.probe_trial` calls `run_probe` inside each Tune trial.

How it is cut: the trial process (`run_probe`) loads the tokenizer, tokenises the data (cached,
lensray.data.dataset), and starts ONE `TorchTrainer` whose workers loop over the sizes (a Ray worker
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
lensray.data.dataset and counted in `extra`.

Distributed: gloo on CPU and NCCL on GPU, chosen from whether the Ray cluster has GPUs
(`device="auto"`); 1 or more workers per probe. torch, transformers, deepspeed, peft and ray
are imported inside the functions, so `import lensray.probe.hf.driver` stays light.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from lensray.core.errors import DataError, ProbeError, one_line
from lensray.core.types import Observation
from lensray.data.dataset import prepare_data, source_samples
from lensray.probe.hf.loading import load_tokenizer
from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec
from lensray.probe.hf.worker import _train_worker

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
"""Ray Train's poll interval of its workers (seconds); set to 0.2 unless the user set it."""


def ensure_ray() -> None:
    """Start a quiet local Ray unless this process is already connected to one."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def _use_gpu(cfg: ProbeConfig) -> bool:
    import ray

    if cfg.device == "auto":
        return ray.cluster_resources().get("GPU", 0) > 0
    return cfg.device == "cuda"


def _reason_from_training_error(e: BaseException) -> str:
    """A one-line reason from Ray Train's TrainingFailedError (worker errors, OOM kills, deaths)."""
    failures = getattr(e, "worker_failures", None) or {}
    if not failures:
        return f"training failed: {one_line(getattr(e, 'controller_failure', None) or e)}"
    rank, err = sorted(failures.items())[0]
    text = str(err)
    # Worker errors arrive with the remote traceback in their text; keep the innermost
    # "Type: message" line, which names what went wrong.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    last = next((ln for ln in reversed(lines) if ": " in ln and not ln.startswith("File ")), one_line(err))
    lowered = text.lower()
    if any(s in lowered for s in ("out of memory", "outofmemory", "can't allocate memory", "memoryerror")):
        return f"out of memory on worker rank {rank}: {last}"
    return f"worker rank {rank} failed: {last}"


def run_probe(spec: ProbeSpec, tune_done: set[int] | None = None) -> list[Observation]:
    """Fine-tune spec's candidate on every subset size; one Observation per size, in order.

    `tune_done`: inside a Tune trial, the planned sizes already done before this run; an
    `in_process` probe then reports each size to Tune itself, with a checkpoint of those and
    the sizes it finished (lensray.sweep.trial.report_with_progress). A worker group's sizes
    reach Tune through Ray's TuneReportCallback instead.

    Raises ProbeError (see the module docstring). Starts a local Ray when none is running.
    """
    cfg = spec.probe
    started = time.perf_counter()
    tokenizer = load_tokenizer(spec)
    try:
        data = prepare_data(spec.data, tokenizer)
    except DataError as e:
        raise ProbeError(str(e), spec.candidate) from None
    tokenize_s = time.perf_counter() - started
    largest = data.subset(spec.data.sizes[-1])
    train_rows = list(zip(largest["input_ids"], largest["labels"]))
    eval_rows = list(zip(data.eval["input_ids"], data.eval["labels"]))
    ensure_ray()
    use_gpu = not cfg.in_process and _use_gpu(cfg)
    loop_config = {
        "spec": spec.to_dict(),
        "pad_id": tokenizer.pad_token_id,
        "train_rows": train_rows,
        "eval_rows": eval_rows,
        "ds_config": cfg.deepspeed(cfg.num_workers),
        "use_gpu": use_gpu,
        "data_counts": {"n_truncated": data.n_truncated, "n_dropped": data.n_dropped},
        "tokenize_s": tokenize_s,
        "in_process": cfg.in_process,
        "tune_done": sorted(tune_done) if tune_done is not None and cfg.in_process else None,
    }
    if cfg.metric == "task":
        loop_config["eval_prompts"] = list(data.eval["prompt_ids"])
        loop_config["eval_references"] = list(data.eval["reference"])
        loop_config["eval_queries"] = [[int(i), q] for i, q in zip(data.eval["row"], data.eval["query"])]
    if spec.aggregate is not None:  # the `aggregate` design samples drafts for its training samples
        rendered = source_samples(spec.data, list(largest["row"]))
        loop_config["train_samples"] = [(prompt, response) for _, prompt, response, _ in rendered]
    result = _fit(spec, loop_config, use_gpu)
    payload = result.return_value or {}
    observations = [Observation.from_dict(d) for d in payload.get("observations", [])]
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
    if _in_tune_session() and not cfg.in_process:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    resources = {"CPU": cfg.cpus_per_worker} | ({"GPU": 1} if use_gpu else {})
    # Ray Train's controller polls its workers every 2 s, and a worker's report waits for the
    # next poll: a probe of n sizes idled up to 2(n + 1) s. Polled every 0.2 s it does not
    # (Ray Train passes the variable on to the controller it starts).
    os.environ.setdefault(POLL_ENV, "0.2")
    loop_config["fit_started"] = time.time()  # the workers time Ray Train's start from it (lensray.probe.hf.worker.PHASES)
    # num_workers=0 is Ray Train's local mode: the loop runs here, as rank 0 of a world of one.
    scaling = (ScalingConfig(num_workers=0) if cfg.in_process else
               ScalingConfig(num_workers=cfg.num_workers, use_gpu=use_gpu, resources_per_worker=resources))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=loop_config,
        scaling_config=scaling,
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
    except Exception as e:  # ray.train.TrainingFailedError and friends; in process, the loop's own
        raise ProbeError(_reason_from_training_error(e), spec.candidate) from None
    if getattr(result, "error", None) is not None:
        raise ProbeError(_reason_from_training_error(result.error), spec.candidate)
    return result
