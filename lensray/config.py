"""Selection-job configuration: typed dataclasses, loaded from YAML and validated on load.

    from lensray.config import load_config
    cfg = load_config("configs/replay-flan.yaml")

Every section is a dataclass whose fields carry a docstring (the reference for the YAML keys).
Loading rejects unknown keys with the closest valid name, wrong types with the expected type,
and inconsistent values (budget > target, an empty pool, duplicate names) with the field's
dotted path and the fix. Paths in the YAML are relative to the YAML file's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lensray.data import DataConfig
from lensray.design import design_from_config
from lensray.fit import FitConfig
from lensray.probe import ProbeConfig
from lensray import storage
from lensray.storage import resolve_output

DEMO_CONFIG = Path(__file__).parent / "resources" / "configs" / "demo.yaml"
"""What `lensray select` runs with no CONFIG: the zoo demo."""
NAME_RE = re.compile(r"^(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9._+=/-]*$")


class ConfigError(ValueError):
    """A config problem; the message names the field (dotted path) and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """One pretrained model of the pool."""

    name: str
    """Candidate name: letters, digits and . _ + = - / (e.g. a hub id); no `..`, no leading `/`."""
    path: str = ""
    """Local folder with a saved transformers model, or a hub id (e.g. `gpt2`) on a machine that
    can reach the hub. For the replay backend: the row name in the curves file (default: name)."""
    trust_remote_code: bool = False
    """Allow the model's own Python code to run when loading it (off unless you trust it)."""
    n_params: int = 0
    """Parameter count, when known in advance (the hf probe measures it)."""


@dataclass(frozen=True)
class PoolConfig:
    """The candidates: models (crossed with sample designs where given)."""

    models: list[ModelSpec] = field(default_factory=list)
    """Models to choose from. For the replay backend, empty means every row of the curves file."""
    designs: list[str] = field(default_factory=list)
    """Sample designs (lensray.design) to cross with the models: presets such as `es-sde`,
    design names such as `inst-last.loss-on.json.omit.num.cot`, or mappings of options (turned
    into their names). Each model x design is a Candidate named `<model>+<design>`. Empty = the
    models alone, each under `data.design`. More than one design needs `probe.metric: task`."""


@dataclass(frozen=True)
class Candidate:
    """What one probe fine-tunes and the selection ranks: a model under a sample design."""

    name: str
    """The model's name, or `<model>+<design>` when the pool crosses designs."""
    model: ModelSpec
    """The pretrained model."""
    design: str = ""
    """The sample design's name (empty: the data's own, `data.design`)."""


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
    """Pause each probe after every size until all live candidates have reached that size, then
    decide for all of them with complete information (synchronous successive halving). False
    decides on whatever the others have reported so far: more parallelism, more compute."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ConfigError(f"scheduler.top_k must be >= 1, got {self.top_k}")
        if not 0 < self.level < 1:
            raise ConfigError(f"scheduler.level must be in (0, 1), got {self.level}; e.g. 0.9")
        if self.min_points < 2:
            raise ConfigError(f"scheduler.min_points must be >= 2, got {self.min_points}")


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
    """Curve fitting."""
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
    a path every node mounts, or a storage URI such as s3://bucket/prefix (see lensray.storage)."""
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
        return dataclasses.replace(self.data, design=candidate.design)

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
        if self.data is not None:
            for i, d in enumerate(designs):
                try:
                    dataclasses.replace(self.data, design=d)
                except ValueError as err:
                    raise ConfigError(f"pool.designs[{i}]={d!r}: {err}") from None

    def __post_init__(self) -> None:
        backends = ("hf", "replay")
        if self.backend not in backends:
            raise ConfigError(f"backend must be one of {', '.join(backends)}, got {self.backend!r}")
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
            for key in ("num_workers", "cpus_per_worker", "device", "storage_path", "seed", "run_name", "max_failures"):
                if getattr(self.probe, key) != getattr(ProbeConfig(), key):
                    where = ("resources.workers / cpus_per_worker / gpus_per_worker / max_failures, output, seed "
                             "(the run name is the trial's)")
                    raise ConfigError(f"probe.{key} is set by lensray; use {where} instead")
            if self.scheduler.enabled and self.scheduler.synchronous:
                raise ConfigError(
                    "scheduler.synchronous is not supported with backend hf yet: each resume would restart "
                    "the probe's Ray Train workers and DeepSpeed (~40 s on CPU); set scheduler.synchronous: false"
                )
        sizes = self.plan.resolved_sizes()
        if self.scheduler.enabled and len(sizes) < self.fit.window:
            raise ConfigError(
                f"plan gives only {len(sizes)} size{'s' * (len(sizes) != 1)} {sizes}; the fit needs at least "
                f"fit.window={self.fit.window}: add sizes (lower plan.start or raise plan.budget)"
            )
        if self.backend == "replay" and not self.replay.curves:
            raise ConfigError("replay.curves is empty: the replay backend needs a curves CSV/Parquet")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to `tp`, raising ConfigError naming `where` on a mismatch."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of {tp.__name__} fields, got {value!r}")
        return _from_dict(tp, value, where)
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return origin(_build(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _build(args[0], value, where)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, str, bool) and type(value) is not tp:
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def _from_dict(cls: type, data: dict, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            prefix = f"{where}." if where else ""
            raise ConfigError(f"unknown key {prefix}{key}.{hint} Valid keys: {', '.join(fields)}")
    kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # __post_init__ of a section not defined here (e.g. FitConfig)
        raise ConfigError(str(err)) from None


def _pool_entries(raw: dict) -> None:
    """Allow `models: [name, ...]` as shorthand for `[{name: ..}, ...]`; write every design by
    its name, so a preset, its option mapping and its name are one design. With designs, the
    data's own design is the first one's (each candidate's probe sets its own)."""
    pool = raw.get("pool") or {}
    if isinstance(pool.get("models"), list):
        pool["models"] = [{"name": m} if isinstance(m, str) else m for m in pool["models"]]
    if not isinstance(pool.get("designs"), list) or not pool["designs"]:
        return
    names = []
    for i, d in enumerate(pool["designs"]):
        try:
            names.append(design_from_config(d).name)
        except ValueError as err:
            raise ConfigError(f"pool.designs[{i}]: {err}") from None
    pool["designs"] = names
    data = raw.get("data")
    if isinstance(data, dict):
        if data.get("design"):
            raise ConfigError("data.design and pool.designs are both set: list every design in pool.designs")
        data["design"] = names[0]


def output_location(output: str) -> str:
    """A checked output (`check_output`): a URI as given, a path made absolute."""
    check_output(output)
    return resolve_output(output)


def check_output(output: str) -> None:
    """An output path, or a storage URI pyarrow can open (lensray.storage), else ConfigError."""
    try:
        storage.check_output(output)
    except storage.StorageError as err:
        raise ConfigError(str(err)) from None


ZOO_DATA = "zoo:"
"""Prefix of a data path naming a task of the zoo (with `zoo` set): `zoo:task` (the cipher task,
the default) or `zoo:aspects` (the multi-aspect task of sample designs; its schema is filled in)."""
ZOO_TASKS = {"task": "task.jsonl", "aspects": "aspects.jsonl"}

FILE_FIELDS = (("replay", "curves"), ("data", "path"), ("probe", "deepspeed_config"))
"""Config fields that name files; relative ones resolve against the config's folder."""


def config_from_dict(raw: dict, base_dir: Path | None = None) -> SelectConfig:
    """Build and validate a SelectConfig from a plain dict (paths resolved against base_dir)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    _pool_entries(raw)
    if base_dir is not None:
        for section, key in FILE_FIELDS:
            sec = raw.get(section)
            if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key] and not sec[key].startswith(ZOO_DATA):
                sec[key] = str((base_dir / sec[key]).resolve()) if not Path(sec[key]).is_absolute() else sec[key]
    if isinstance(raw.get("output"), str) and raw["output"]:  # relative to where lensray runs
        raw["output"] = output_location(raw["output"])
    if isinstance(raw.get("zoo"), str) and raw["zoo"]:
        raw["zoo"] = str((Path.cwd() / raw["zoo"]).resolve())
    if raw.get("zoo"):
        _zoo_defaults(raw, Path(raw["zoo"]))
    if isinstance(raw.get("data"), dict):
        if str(raw["data"].get("path", "")).startswith(ZOO_DATA):
            raise ConfigError(f"data.path={raw['data']['path']!r} is a task of the zoo: set `zoo` (the zoo's folder, e.g. zoo: zoo)")
        plan = _from_dict(PlanConfig, raw.get("plan") or {}, "plan")
        if "sizes" in raw["data"]:
            raise ConfigError("data.sizes is set by lensray from the plan; use plan.sizes (or plan.start/budget)")
        raw["data"]["sizes"] = plan.resolved_sizes()
    return _from_dict(SelectConfig, raw, "")


def _zoo_defaults(raw: dict, zoo: Path) -> None:
    """Fill the pool and the data from the offline zoo where the config leaves them out."""
    from lensray.zoo import ZOO

    pool = raw.setdefault("pool", {})
    if not pool.get("models"):
        pool["models"] = [{"name": m.name} for m in ZOO]
    for m in pool["models"]:
        if isinstance(m, dict) and not m.get("path"):
            m["path"] = str(zoo / "models" / m.get("name", ""))
    data = raw.setdefault("data", {})
    if not isinstance(data, dict):
        return
    path = data.get("path") or f"{ZOO_DATA}task"
    if isinstance(path, str) and path.startswith(ZOO_DATA):
        task = path[len(ZOO_DATA):]
        if task not in ZOO_TASKS:
            raise ConfigError(f"data.path={path!r}: the zoo has {[ZOO_DATA + t for t in ZOO_TASKS]}")
        data["path"] = str(zoo / ZOO_TASKS[task])
        if task == "aspects" and "schema" not in data:
            from lensray.zoo import ASPECT_SCHEMA

            data["schema"] = dataclasses.asdict(ASPECT_SCHEMA)


def load_config(path: str | Path) -> SelectConfig:
    """Read a YAML config file and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return config_from_dict(raw, path.parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """The config as plain data (for the report and for shipping to trials)."""
    return dataclasses.asdict(cfg)
