"""The `hf` probe backend: each Candidate fine-tuned on the plan's sizes with DeepSpeed under Ray
Train (lensray.probe.hf.driver), one Observation per size reaching Tune as it is done.

A trial drives one TorchTrainer. With one CPU worker per probe it fine-tunes in the trial's own
process (Ray Train's local mode, `ProbeConfig.in_process`), so the trial reserves the whole probe,
no controller or worker process is started for it, and Tune hands the process, torch and
DeepSpeed imported, to the next candidate or to a paused probe resuming (`reuse_actors`, unless
`resources.reuse_processes` is false); Ray bounds such trials, so a paused one holds nothing and
synchronous rungs span the pool. Otherwise the TorchTrainer's workers reserve their own CPUs and
GPUs, the trial itself reserves a sliver of a CPU (Tune refuses a trial with no resources at
all), Tune must cap the live trials at what the workers have room for, and rungs must be
asynchronous (a resumed probe would start its worker group again).
"""

from __future__ import annotations

import os
from dataclasses import replace

from lensray.config.schema import SelectConfig
from lensray.core.errors import ConfigError
from lensray.core.types import Candidate, Pool
from lensray.probe.base import Footprint
from lensray.stages.aggregate.config import AGGREGATE_DESIGN

KEEPS_WEIGHTS = {"route", "aggregate"}
"""Post-sweep stages that run the finalists' fine-tuned models: with one configured, every probe
keeps its latest weights (ProbeConfig.weights_path)."""
TRIAL_CPU = 0.1
"""CPU an hf trial reserves for itself (its workers reserve their own)."""
THREAD_TIMEOUT_ENV = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
"""How long Tune waits for a trial's thread to end before it reuses the trial's process."""


class HFBackend:
    """The `hf` probe backend (see the module docstring)."""

    name = "hf"

    def check(self, cfg: SelectConfig) -> None:
        """Refuse, before Ray starts, GPUs asked of an embedded local Ray on a machine with none."""
        if cfg.resources.gpus_per_worker <= 0 or cfg.ray_address or os.environ.get("RAY_ADDRESS"):
            return
        import torch

        if torch.cuda.device_count() == 0:
            raise ConfigError(
                f"resources.gpus_per_worker is {cfg.resources.gpus_per_worker:g} but this machine has no GPU "
                "and no cluster is named (ray_address / $RAY_ADDRESS): set resources.gpus_per_worker: 0 to "
                "probe on CPUs, or set ray_address to a cluster with GPUs"
            )

    def pool(self, cfg: SelectConfig) -> Pool:
        return Pool(cfg.candidates())

    def footprint(self, cfg: SelectConfig) -> Footprint:
        r = cfg.resources
        cpus = r.workers * r.cpus_per_worker + TRIAL_CPU
        alone = r.one_cpu_worker
        return Footprint({"CPU": cpus if alone else TRIAL_CPU}, cpus, r.workers * r.gpus_per_worker,
                         cap_live_trials=not alone, reuse_actors=alone and r.reuse_processes)

    def spec(self, cfg: SelectConfig, candidate: Candidate, sizes: list[int], trial_id: str):
        """The ProbeSpec of `candidate`'s probe at `sizes` under `cfg` (what `run` fine-tunes)."""
        from lensray.probe.hf.recipe import ProbeSpec

        r = cfg.resources
        return ProbeSpec(
            candidate=candidate.name,
            model=candidate.model.path or candidate.model.name,
            data=replace(cfg.candidate_data(candidate), sizes=tuple(sizes), seed=cfg.seed),
            probe=replace(
                cfg.probe, num_workers=r.workers, cpus_per_worker=r.cpus_per_worker,
                device="cuda" if r.gpus_per_worker > 0 else "cpu", seed=cfg.seed,
                storage_path=cfg.storage().uri("train"),
                run_name=f"probe-{candidate.name}-{trial_id}", max_failures=r.max_failures,
                weights_path=cfg.storage().uri("weights", candidate.name) if KEEPS_WEIGHTS & set(cfg.stages.post) else "",
            ),
            trust_remote_code=candidate.model.trust_remote_code,
            aggregate=cfg.aggregate if candidate.design == AGGREGATE_DESIGN else None,
        )

    def run(self, cfg: SelectConfig, candidate: Candidate, sizes: list[int], trial_id: str) -> None:
        """Fine-tune the sizes in one TorchTrainer run; each size reaches Tune as it is done, so
        the scheduler can stop the probe between sizes. In process, the probe reports them with
        the trial's checkpoint, from which a retried trial resumes; a worker group's reach Tune
        through Ray's TuneReportCallback, and a retried trial's Ray Train run (named after the
        trial) resumes from its own checkpoint."""
        from lensray.probe.hf.driver import run_probe

        spec = self.spec(cfg, candidate, sizes, trial_id)
        if cfg.resources.one_cpu_worker:
            spec = replace(spec, probe=replace(spec.probe, in_process=True))
            # Tune hands this process to the next candidate once this trial's thread has ended;
            # one the scheduler stopped ends at its report, unwinding the fine-tune (2 s by default).
            os.environ.setdefault(THREAD_TIMEOUT_ENV, "60")
        run_probe(spec, tune_done=set(cfg.plan.resolved_sizes()) - set(sizes))


BACKEND = HFBackend()
