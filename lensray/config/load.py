"""Loading a selection config: YAML to the typed dataclasses of lensray.config.schema, validated.

    from lensray.config.load import load_config
    cfg = load_config("configs/replay-flan.yaml", overrides=["fit.window=4", "probe.lr=1e-4"])

Every section is a dataclass whose fields carry a docstring (the reference for the YAML keys:
`lensray config --reference`, docs/config.md). Loading rejects unknown keys with the closest
valid name, wrong types with the expected type, and inconsistent values (budget > target, an
empty pool, duplicate names) with the field's dotted path and the fix. Numbers PyYAML reads as
strings (`1e-3`: YAML 1.1 wants a dot) are read as numbers. Overrides (`section.field=value`,
the value in YAML, as `--set` gives them) apply before validation.

Paths in the YAML are relative to the YAML file's folder; paths in overrides, `output` and `zoo`
to the working folder. A model `path` or `data.path` that is not a local file or folder (it does
not exist and starts with none of `/ . ~`) is a hub id such as `gpt2` or `Qwen/Qwen2.5-0.5B`.
With backend hf, local model folders and the data file (its fields, from its first records) are
checked here, before Ray starts; with backend replay a model's path is a row of the curves file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from lensray.cluster import storage
from lensray.cluster.storage import resolve_output
from lensray.config.schema import PlanConfig, SelectConfig
from lensray.core.errors import ConfigError, DataError
from lensray.data.design import design_from_config
from lensray.stages.aggregate.config import AGGREGATE_DESIGN

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "resources" / "configs" / "demo.yaml"
"""What `lensray select` runs with no CONFIG: the zoo demo."""

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
"""A decimal number as PyYAML may leave it a string: `1e-3`, `5E4`, `+2.`."""


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
    if tp in (int, float) and isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)  # `1e-3`, `1E4`: PyYAML follows YAML 1.1, whose floats need a dot
        if tp is float or number.is_integer():
            return tp(number)
        raise ConfigError(f"{where} must be int, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp in (int, float, str, bool) and type(value) is not tp:
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
    if not isinstance(pool, dict):
        raise ConfigError(
            f"pool must be a mapping with `models:` (and optionally `designs:`), got a {type(pool).__name__}: "
            "write `pool: {models: [...]}`"
        )
    if isinstance(pool.get("models"), list):
        pool["models"] = [{"name": m} if isinstance(m, str) else m for m in pool["models"]]
    if not isinstance(pool.get("designs"), list) or not pool["designs"]:
        return
    names = []
    for i, d in enumerate(pool["designs"]):
        if d == AGGREGATE_DESIGN:
            names.append(d)
            continue
        try:
            names.append(design_from_config(d).name)
        except ValueError as err:
            raise ConfigError(f"pool.designs[{i}]: {err}") from None
    pool["designs"] = names
    data = raw.get("data")
    if isinstance(data, dict):
        if data.get("design"):
            raise ConfigError("data.design and pool.designs are both set: list every design in pool.designs")
        data["design"] = names[0] if names[0] != AGGREGATE_DESIGN else ""  # the config's check says why not


def output_location(output: str) -> str:
    """A checked output (`check_output`): a URI as given, a path made absolute."""
    check_output(output)
    return resolve_output(output)


def check_output(output: str) -> None:
    """An output path, or a storage URI pyarrow can open (lensray.cluster.storage), else ConfigError."""
    try:
        storage.check_output(output)
    except storage.StorageError as err:
        raise ConfigError(str(err)) from None


ZOO_DATA = "zoo:"
"""Prefix of a data path naming a task of the zoo (with `zoo` set): `zoo:task` (the cipher task,
the default), `zoo:aspects` (the multi-aspect task of sample designs; its schema is filled in) or
`zoo:mixed` (half of each as plain prompt and response: the routing task)."""




FILE_FIELDS = (("replay", "curves"), ("data", "path"), ("probe", "deepspeed_config"))
"""Config fields that name files; relative ones resolve against the config's folder (data.path
only when it is local: `is_local_data`)."""


def _looks_local(path: str) -> bool:
    """A model path that names a local folder: it starts with `/`, `.` or `~` (it may not exist);
    otherwise it is a hub id (`gpt2`, `Qwen/Qwen2.5-0.5B`) unless it exists (`_resolve`)."""
    return path.startswith(("/", ".", "~"))


def _resolve(path: str, base: Path, local: bool) -> str:
    """`path` made absolute against `base` when it is `local` or exists under `base`; else as it
    is (a hub id). `~` is expanded."""
    if path.startswith("~"):
        return str(Path(path).expanduser())
    if Path(path).is_absolute() or not (local or (base / path).exists()):
        return path
    return str((base / path).resolve())


def _resolve_paths(raw: dict, base: Path, only: Iterable[tuple[str, str]] | None = None, models: bool = True) -> None:
    """Make the file fields (FILE_FIELDS, or `only` of them) and the models' paths in `raw`
    absolute against `base`, in place."""
    from lensray.data.dataset import is_local_data

    for section, key in FILE_FIELDS if only is None else only:
        sec = raw.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        if isinstance(value, str) and value and not value.startswith(ZOO_DATA):
            local = section != "data" or is_local_data(value) or (base / value).exists()
            sec[key] = _resolve(value, base, local)
    pool = raw.get("pool")
    if models and isinstance(pool, dict) and isinstance(pool.get("models"), list):
        for m in pool["models"]:
            if isinstance(m, dict) and isinstance(m.get("path"), str) and m["path"]:
                m["path"] = _resolve(m["path"], base, _looks_local(m["path"]))


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.field=value` as (["section", "field"], value), the value read as YAML
    (`fit.window=4`, `probe.lr=1e-4`, `pool.models=[a, b]`, `data.design=` for empty)."""
    key, sep, text = str(item).partition("=")
    keys = key.strip().split(".")
    if not sep or not all(keys):
        raise ConfigError(f"override {item!r}: write section.field=value, e.g. fit.window=4 or probe.lr=1e-4")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({first}); quote it") from None
    return keys, value


def _field_type(cls: type, keys: list[str], item: str) -> Any:
    """The type of the field `keys` names under `cls`, or the unknown-key ConfigError."""
    tp: Any = cls
    for depth, key in enumerate(keys):
        while typing.get_origin(tp) in (typing.Union, types.UnionType):  # DataConfig | None
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        where = ".".join(keys[:depth])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {item!r}: {where} is a {_type_name(tp)}, not a section with fields; set {where}=value")
        names = [f.name for f in dataclasses.fields(tp)]
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"override {item!r}: unknown key {where + '.' if where else ''}{key}.{hint} Valid keys: {', '.join(names)}"
            )
        tp = typing.get_type_hints(tp)[key]
    return tp


def apply_overrides(raw: dict, overrides: Iterable[str]) -> list[list[str]]:
    """Set each `section.field=value` of `overrides` in `raw`, in order (in place); the keys set.
    The keys are checked against the schema (an unknown one names the closest valid key)."""
    done = []
    for item in overrides:
        keys, value = parse_override(item)
        _field_type(SelectConfig, keys, item)
        node = raw
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[keys[-1]] = value
        done.append(keys)
    return done


def config_from_dict(raw: dict, base_dir: Path | None = None, overrides: Iterable[str] = ()) -> SelectConfig:
    """Build and validate a SelectConfig from a plain dict (paths resolved against base_dir),
    with `overrides` (`section.field=value`, see `apply_overrides`) applied first; the paths
    they give resolve against the working folder. `raw` itself is left as it is."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    done = apply_overrides(raw, overrides)
    _pool_entries(raw)
    models = raw.get("backend", SelectConfig.backend) != "replay"  # replay: a path is a row name
    given = [(s, k) for s, k in FILE_FIELDS if [s, k] in done]
    _resolve_paths(raw, Path.cwd(), only=given, models=models and ["pool", "models"] in done)
    if base_dir is not None:
        rest = [f for f in FILE_FIELDS if f not in given]
        _resolve_paths(raw, Path(base_dir), only=rest, models=models and ["pool", "models"] not in done)
    if isinstance(raw.get("output"), str) and raw["output"]:  # relative to where lensray runs
        raw["output"] = output_location(raw["output"])
    if isinstance(raw.get("zoo"), str) and raw["zoo"]:
        raw["zoo"] = str((Path.cwd() / raw["zoo"]).expanduser().resolve())
    if raw.get("zoo"):
        _zoo_defaults(raw, Path(raw["zoo"]))
    if isinstance(raw.get("data"), dict):
        if str(raw["data"].get("path", "")).startswith(ZOO_DATA):
            raise ConfigError(f"data.path={raw['data']['path']!r} is a task of the zoo: set `zoo` (the zoo's folder, e.g. zoo: zoo)")
        plan = _build(PlanConfig, raw.get("plan") or {}, "plan")
        if "sizes" in raw["data"] and raw["data"]["sizes"] != plan.resolved_sizes():  # as `lensray config` prints it
            raise ConfigError("data.sizes is set by lensray from the plan; use plan.sizes (or plan.start/budget)")
        raw["data"]["sizes"] = plan.resolved_sizes()
    cfg = _from_dict(SelectConfig, raw, "")
    if cfg.backend != "replay":  # replay: a model's path is a row of the curves file, and no data is read
        _check_local_files(cfg)
    return cfg


def _in_zoo(cfg: SelectConfig, path: str) -> bool:
    """A path inside the zoo's folder: lensray writes it when it builds the zoo (run_select)."""
    return bool(cfg.zoo) and Path(path).expanduser().resolve().is_relative_to(Path(cfg.zoo))


def _check_local_files(cfg: SelectConfig) -> None:
    """Refuse, before any cluster work, local model folders that do not exist and a data file
    that cannot be used as configured. Paths inside the zoo that are not there yet are left to
    the zoo's build, but a model of the zoo must be one it builds."""
    from lensray.data.dataset import check_data
    from lensray.zoo.build import ZOO

    zoo_names = [m.name for m in ZOO]
    for i, m in enumerate(cfg.pool.models):
        where = Path(m.path).expanduser()
        if not m.path or not (_looks_local(m.path) or where.exists()):
            continue  # a hub id (or the name as one)
        if _in_zoo(cfg, m.path) and not where.exists():
            if where.parent == Path(cfg.zoo) / "models" and where.name in zoo_names:
                continue
            if where.parent == Path(cfg.zoo) / "lineages" / "models":
                raise ConfigError(
                    f"pool.models[{i}].path {m.path!r} is a model of the zoo's lineages, not built yet: "
                    f"run `lensray zoo build --out {cfg.zoo}` first (it builds them after the zoo)"
                )
            close = difflib.get_close_matches(where.name, zoo_names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"pool.models[{i}] {m.name!r} is not a model of the zoo.{hint} The zoo has {', '.join(zoo_names)}; "
                "for another model give its path"
            )
        if not where.is_dir():
            what = "is a file, not a folder" if where.exists() else "does not exist"
            raise ConfigError(
                f"pool.models[{i}].path {m.path!r} {what}: give the folder of a saved transformers model "
                "(save_pretrained; a relative path is relative to the config's folder), or a hub id such as "
                "`gpt2` or `Qwen/Qwen2.5-0.5B`"
            )
    if cfg.data is not None and not (_in_zoo(cfg, cfg.data.path) and not Path(cfg.data.path).exists()):
        try:
            check_data(cfg.data, owner="data")
        except DataError as err:
            raise ConfigError(str(err)) from None


def _zoo_defaults(raw: dict, zoo: Path) -> None:
    """Fill the pool and the data from the offline zoo where the config leaves them out."""
    from lensray.zoo.build import TASK_FILES, ZOO

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
        if task not in TASK_FILES:
            raise ConfigError(f"data.path={path!r}: the zoo has {[ZOO_DATA + t for t in TASK_FILES]}")
        data["path"] = str(zoo / TASK_FILES[task])
        if task == "aspects" and "schema" not in data:
            from lensray.zoo.build import ASPECT_SCHEMA

            data["schema"] = dataclasses.asdict(ASPECT_SCHEMA)


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> SelectConfig:
    """Read a YAML config file, apply `overrides` (`section.field=value`) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:  # PyYAML's own message spans lines, with a snippet
        mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {problem or ' '.join(str(err).split())}") from None
    try:
        return config_from_dict(raw, path.parent, overrides)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """The config as plain data (for the report and for shipping to trials)."""
    return dataclasses.asdict(cfg)
