"""The selection job's configuration: typed dataclasses, one per YAML section.

Every field carries a docstring: it is the reference of the YAML key (`lensray config`, docs/config.md).
`__post_init__` refuses inconsistent values naming the field's dotted path and the fix.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from lensray.cluster.storage import Storage
from lensray.core.errors import ConfigError
from lensray.core.types import Candidate, ModelSpec
from lensray.data.dataset import DataConfig
from lensray.predict.fit import FitConfig
from lensray.predict.methods import get_predictor
from lensray.probe.base import get_backend
from lensray.probe.hf.recipe import ProbeConfig
from lensray.stages.base import get_stage
from lensray.stages.phylo.fingerprint import PhyloConfig
from lensray.stages.aggregate.config import AGGREGATE_DESIGN, AggregateConfig
from lensray.stages.route.config import RouteConfig

NAME_RE = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._+=/-]*$")


@dataclass(frozen=True)
class PoolConfig:
    """The candidates: models (crossed with sample designs where given)."""

    models: list[ModelSpec] = field(default_factory=list)
    """Models to choose from. For the replay backend, empty means every row of the curves file."""
    designs: list[str] = field(default_factory=list)
    """Sample designs (lensray.data.design) to cross with the models: presets such as `es-sde`,
    design names such as `inst-last.loss-on.json.omit.num.cot`, or mappings of options (turned
    into their names). Each model x design is a Candidate named `<model>+<design>`. Empty = the
    models alone, each under `data.design`. More than one design needs `probe.metric: task`.
    `aggregate` (after another design) is Aggregation Fine-Tuning on the first design's samples,
    answered by propose-and-aggregate under the `aggregate` section's K, R and sampling."""


@dataclass(frozen=True)
class PlanConfig:
    """The probe plan: nested subset sizes D_1 < D_2 < ... <= budget, predicting at target."""

    sizes: list[int] = field(default_factory=list)
    """Subset sizes to fine-tune on; empty means doubling from `start` up to `budget`."""
    start: int = 200
    """Smallest subset size when `sizes` is empty."""
    budget: int = 3200
    """Largest subset size a probe may fine-tune on (B)."""
    target: int = 1638400
    """Data size T whose fine-tuned loss is predicted and ranked."""

    def __post_init__(self) -> None:
        if self.start <= 0:
            raise ConfigError(f"plan.start must be > 0, got {self.start}")
        if self.budget > self.target:
            raise ConfigError(
                f"plan.budget ({self.budget}) is larger than plan.target ({self.target}); "
                "the budget is what probes may spend, the target what is predicted: budget <= target"
            )
        if self.sizes and (sorted(set(self.sizes)) != list(self.sizes) or self.sizes[0] <= 0):
            raise ConfigError(f"plan.sizes must be positive and strictly increasing, got {self.sizes}")
        if self.sizes and self.sizes[-1] > self.budget:
            raise ConfigError(f"plan.sizes go up to {self.sizes[-1]} > plan.budget {self.budget}; drop them or raise the budget")
        if not self.resolved_sizes():
            raise ConfigError(f"plan gives no size up to the budget {self.budget}; lower plan.start or raise plan.budget")

    def resolved_sizes(self) -> list[int]:
        """The subset sizes, in order."""
        if self.sizes:
            return list(self.sizes)
        out, d = [], self.start
        while d <= self.budget:
            out.append(d)
            d *= 2
        return out


@dataclass(frozen=True)
class ResourcesConfig:
    """What one probe (one Tune trial) needs; sets trial resources and concurrency."""

    workers: int = 1
    """Ray Train workers per probe (data-parallel DeepSpeed ranks)."""
    cpus_per_worker: float = 1.0
    """CPUs per worker."""
    gpus_per_worker: float = 0.0
    """GPUs per worker (0 on a CPU machine; NCCL is used when > 0)."""
    max_concurrent: int = 0
    """Upper bound on probes running at once; 0 = as many as the cluster's resources allow."""
    max_failures: int = 2
    """Retries of a probe whose trial or workers die (a lost node, a killed process); it resumes
    after its last finished size. A probe's own errors (bad data, divergence, a model that cannot
    load) are recorded as failed, not retried."""
    reuse_processes: bool = True
    """Let Tune hand a finished trial's process to the next candidate (replay probes, and hf
    probes of one CPU worker): no process to start per candidate. Set false on an autoscaling
    cluster: when Tune swaps a trial's just-started process for a reused one, Ray 2.60's raylet
    can keep that process's CPUs reserved, and the node they are on never scales down."""

    @property
    def one_cpu_worker(self) -> bool:
        """Whether a probe is one worker without a GPU: an hf probe then fine-tunes in its Tune
        trial's own process (lensray.probe.hf.backend)."""
        return self.workers == 1 and self.gpus_per_worker == 0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"resources.workers must be >= 1, got {self.workers}")
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"resources.cpus_per_worker must be > 0, got {self.cpus_per_worker}")
        for name in ("gpus_per_worker", "max_concurrent", "max_failures"):
            if getattr(self, name) < 0:
                raise ConfigError(f"resources.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Curve-fit early stopping (scheduler.py)."""

    top_k: int = 1
    """Keep at least this many candidates running to the budget; stop one only when, with the
    fits' confidence, it cannot reach the top k at the target."""
    level: float = 0.9
    """Confidence of the stopping rule (higher = stops later, safer): a candidate that would beat
    a rival at T is stopped by it with probability at most (1 - level) / 2 over the whole sweep,
    if the fits' s.d. are right (`lensray bench curves` measures how far they are; scheduler.py)."""
    min_points: int = 3
    """Never decide on fewer observed sizes than this."""
    enabled: bool = True
    """False runs every probe to the budget (the AtS-style reference cost)."""
    synchronous: bool = True
    """Pause each probe at every size it can be decided at until all live candidates have reached
    that size, then decide for all of them with complete information (synchronous successive
    halving). False decides on whatever the others have reported so far: more parallelism, more
    compute. hf probes with GPUs or several workers need false (a pause restarts the worker group)."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"scheduler.top_k must be >= 1, got {self.top_k}")
        if not 0 < self.level < 1:
            raise ConfigError(f"scheduler.level must be in (0, 1), got {self.level}; e.g. 0.9")
        if self.min_points < 2:
            raise ConfigError(f"scheduler.min_points must be >= 2, got {self.min_points}")


@dataclass(frozen=True)
class StagesConfig:
    """Stages run before and after the sweep, by name, in order (lensray.stages.base)."""

    pre: list[str] = field(default_factory=list)
    """Pre-sweep stages: each maps the Pool to a Pool (it may drop Candidates, with the reason,
    and attach a prior to each). Empty: the sweep probes the whole pool."""
    post: list[str] = field(default_factory=list)
    """Post-sweep stages: each maps the Selection to a Selection and writes files of its own."""


@dataclass(frozen=True)
class ReplayConfig:
    """The replay backend: probes replay recorded curves instead of fine-tuning."""

    curves: str = ""
    """CSV or Parquet of recorded curves (schema in lensray/curves.py)."""
    sleep_s_per_pflop: float = 0.0
    """Seconds to sleep per PFLOP a replayed size would cost, to mimic real probe durations."""
    tokens_per_example: int = 128
    """Tokens per example used for the FLOPs of a replayed size (6 x params x tokens)."""


@dataclass(frozen=True)
class SelectConfig:
    """A selection job: `lensray select CONFIG`."""

    name: str = "lensray"
    """Experiment name (a folder under `output`)."""
    backend: str = "replay"
    """How probes are run: `hf` (real fine-tuning) or `replay` (recorded curves)."""
    pool: PoolConfig = field(default_factory=PoolConfig)
    """The candidates."""
    plan: PlanConfig = field(default_factory=PlanConfig)
    """Subset sizes, budget and target."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    """Resources per probe."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """Early stopping."""
    fit: FitConfig = field(default_factory=FitConfig)
    """Curve fitting, and the predictor (`fit.method`)."""
    stages: StagesConfig = field(default_factory=StagesConfig)
    """Pre- and post-sweep stages."""
    phylo: PhyloConfig = field(default_factory=PhyloConfig)
    """The `phylo` pre-sweep stage: PhyloLM fingerprints, tree, near-duplicates, priors."""
    route: RouteConfig = field(default_factory=RouteConfig)
    """The `route` post-sweep stage (and `lensray route` / `lensray serve`): SelectLLM routing of
    each query to the finalists most likely to answer it, from the probes' per-query results."""
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    """The `aggregate` post-sweep stage: the finalists propose K drafts a held-out query and the
    selected model aggregates them (Aggregation Fine-Tuning's propose-and-aggregate)."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Replay backend settings."""
    data: DataConfig | None = None
    """The fine-tuning data set (hf backend); its `sizes` come from `plan`."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """How probes fine-tune (hf backend): DeepSpeed, precision, batch, learning rate, LoRA.
    Workers, CPUs and GPUs are set in `resources`."""
    zoo: str = ""
    """Folder of the offline tiny zoo (built there if missing, see `lensray zoo build`). With it,
    a model named without a path is the zoo's, an empty pool is the whole zoo, and a data
    section without a path uses the zoo's task."""
    output: str = "out"
    """Where the experiment state and the report files go: a folder (relative to the working folder),
    a path every node mounts, or a storage URI such as s3://bucket/prefix (see lensray.cluster.storage)."""
    ray_address: str = ""
    """Ray cluster to join (`auto`, `ray://host:10001`, ...); empty = $RAY_ADDRESS, else a local Ray."""
    seed: int = 0
    """Seed for subsets and training."""

    def candidates(self) -> list[Candidate]:
        """The pool's Candidates: every model, crossed with every design when designs are given."""
        if not self.pool.designs:
            return [Candidate(m.name, m) for m in self.pool.models]
        return [Candidate(f"{m.name}+{d}", m, d) for m in self.pool.models for d in self.pool.designs]

    def candidate(self, name: str) -> Candidate:
        """The Candidate called `name` (KeyError when the pool has none)."""
        found = next((c for c in self.candidates() if c.name == name), None)
        if found is None:
            raise KeyError(f"no candidate {name!r} in the pool")
        return found

    def candidate_data(self, candidate: Candidate) -> DataConfig:
        """The data config a candidate's probe fine-tunes on: `data` under its design."""
        if self.data is None or not candidate.design:
            return self.data
        design = self.pool.designs[0] if candidate.design == AGGREGATE_DESIGN else candidate.design
        return dataclasses.replace(self.data, design=design)

    def storage(self) -> Storage:
        """Where this experiment's state and files live: `<output>/<name>/`, a folder or a URI."""
        return Storage(self.output, self.name)

    def exhaustive(self, suffix: str, sizes: list[int]) -> "SelectConfig":
        """This config probing every candidate of the pool (no stages) at `sizes`, none stopped
        early, as the experiment `<name>-<suffix>` (what `lensray verify` and `lensray record` run)."""
        t = self.plan.target
        return dataclasses.replace(
            self,
            name=f"{self.name}-{suffix}",
            plan=PlanConfig(sizes=list(sizes), start=sizes[0], budget=t, target=t),
            data=dataclasses.replace(self.data, sizes=tuple(sizes)) if self.data is not None else None,
            scheduler=dataclasses.replace(self.scheduler, enabled=False),
            stages=StagesConfig(),
        )

    def ranked_by(self) -> str:
        """The quantity fitted and ranked: `loss`, or `error` (1 - accuracy) with probe.metric task."""
        return "error" if self.backend == "hf" and self.probe.metric == "task" else "loss"

    def _check_designs(self) -> None:
        designs = self.pool.designs
        if not designs:
            return
        if self.backend != "hf":
            raise ConfigError("pool.designs needs backend hf: recorded curves are of models alone")
        repeated = sorted({d for d in designs if designs.count(d) > 1})
        if repeated:
            raise ConfigError(f"pool.designs: designs must differ, repeated: {repeated}")
        if len(designs) > 1 and self.probe.metric != "task":
            raise ConfigError(
                f"pool.designs has {len(designs)} designs but probe.metric is {self.probe.metric!r}: held-out "
                "loss is not comparable across designs (they write different targets); set probe.metric: task"
            )
        if designs[0] == AGGREGATE_DESIGN:
            raise ConfigError(
                f"pool.designs[0]={AGGREGATE_DESIGN!r}: the aggregate design fine-tunes on another design's "
                f"samples; list that design first, e.g. [es-sde, {AGGREGATE_DESIGN}] (or [plain, "
                f"{AGGREGATE_DESIGN}] for prompt/response data)"
            )
        if self.data is not None:
            for i, d in enumerate(designs):
                if d == AGGREGATE_DESIGN:
                    continue
                try:
                    dataclasses.replace(self.data, design=d)
                except ValueError as err:
                    raise ConfigError(f"pool.designs[{i}]={d!r}: {err}") from None

    def __post_init__(self) -> None:
        get_backend(self.backend)
        get_predictor(self.fit.method)
        for kind in ("pre", "post"):
            for name in getattr(self.stages, kind):
                get_stage(kind, name)
        if "route" in self.stages.post:
            from lensray.stages.route.stage import check_route

            check_route(self)
        if "aggregate" in self.stages.post:
            from lensray.stages.aggregate.stage import check_aggregate

            check_aggregate(self)
        if not NAME_RE.match(self.name):
            raise ConfigError(f"name {self.name!r} must match {NAME_RE.pattern} (it names a folder)")
        names = [m.name for m in self.pool.models]
        for i, n in enumerate(names):
            if not NAME_RE.match(n):
                raise ConfigError(
                    f"pool.models[{i}].name {n!r} must match {NAME_RE.pattern}: it appears in output "
                    "file names, so no spaces, no `..` and no leading `/` or dot"
                )
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise ConfigError(f"pool.models: candidate names must be unique, repeated: {dups}")
        self._check_designs()
        if self.backend == "hf":
            if not names:
                raise ConfigError("pool.models is empty: list at least one model (name and path), or set `zoo`")
            if self.data is None:
                raise ConfigError("data is missing: the hf backend needs a data section (at least data.path)")
            for key in ("num_workers", "cpus_per_worker", "device", "storage_path", "seed", "run_name", "weights_path", "in_process", "max_failures"):
                if getattr(self.probe, key) != getattr(ProbeConfig(), key):
                    where = ("resources.workers / cpus_per_worker / gpus_per_worker / max_failures, output, seed "
                             "(the run name is the trial's)")
                    raise ConfigError(f"probe.{key} is set by lensray; use {where} instead")
            if self.scheduler.enabled and self.scheduler.synchronous and not self.resources.one_cpu_worker:
                raise ConfigError(
                    "scheduler.synchronous is supported with backend hf only for probes of one CPU worker "
                    f"(resources.workers: 1, gpus_per_worker: 0; here {self.resources.workers} and "
                    f"{self.resources.gpus_per_worker:g}): each resume would restart the probe's Ray Train "
                    "worker group; set scheduler.synchronous: false"
                )
        sizes = self.plan.resolved_sizes()
        if self.scheduler.enabled and len(sizes) < self.fit.window:
            raise ConfigError(
                f"plan gives only {len(sizes)} size{'s' * (len(sizes) != 1)} {sizes}; the fit needs at least "
                f"fit.window={self.fit.window}: add sizes (lower plan.start or raise plan.budget)"
            )
        if self.backend == "replay" and not self.replay.curves:
            raise ConfigError("replay.curves is empty: the replay backend needs a curves CSV/Parquet")
