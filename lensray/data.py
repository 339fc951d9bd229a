"""Fine-tuning data: load, template, tokenise once (cached), hold out, and draw nested subsets.

A Probe fine-tunes a candidate on D_1 < D_2 < ... examples and measures the loss on one fixed
held-out set. This module turns a data set into exactly that:

1. load it with `datasets`: a local ``.json``/``.jsonl``/``.csv``/``.parquet`` file, or a hub
   name (only on a machine that can reach the hub);
2. render each example with the `plain` template (``prompt_format`` then ``response_format``
   then the end token) or the tokenizer's `chat` template (user turn, then assistant turn);
3. tokenise, with labels = -100 on every prompt token so the loss is on the response only;
   examples longer than ``max_length`` are truncated or dropped (``overflow``) and counted;
4. cache the tokenised rows as Arrow under ``cache_dir``, keyed by a hash of the data bytes,
   the tokenizer and every field that changes the tokens, so the next probe loads them;
5. hold out ``eval_size`` examples chosen by ``eval_seed`` (the same for every subset seed),
   and permute the rest by ``seed``: subset D_k is the first ``sizes[k]`` rows of that one
   permutation, so every smaller subset lies inside every larger one.

Use it::

    from lensray.data import DataConfig, prepare_data
    data = prepare_data(DataConfig(path="zoo/task.jsonl", sizes=(64, 128, 256)), tokenizer)
    data.subset(64)     # a datasets.Dataset with input_ids and labels
    data.eval           # the held-out rows

`datasets` is imported inside the functions; importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

IGNORE_INDEX = -100
"""Label value that token cross-entropy ignores (prompt and padding positions)."""
TEMPLATES = ("plain", "chat")
OVERFLOW = ("truncate", "drop")
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_CACHE_VERSION = 1


class DataError(ValueError):
    """The data set cannot be used as configured; the message names the field and the fix."""


def default_cache_dir() -> Path:
    """``$LENSRAY_CACHE/tokenized``, else ``~/.cache/lensray/tokenized``."""
    root = os.environ.get("LENSRAY_CACHE") or Path.home() / ".cache" / "lensray"
    return Path(root) / "tokenized"


@dataclass
class DataConfig:
    """Where the fine-tuning data is, how an example becomes tokens, and which subsets to draw."""

    path: str = ""
    """Local .json/.jsonl/.csv/.parquet file, or a hub data set name (needs network access)."""
    prompt_field: str = "prompt"
    """Column holding the prompt (the part the loss ignores)."""
    response_field: str = "response"
    """Column holding the response (the part the loss is computed on)."""
    template: str = "plain"
    """`plain`: prompt_format + response_format + end token; `chat`: the tokenizer's chat template."""
    prompt_format: str = "{prompt}"
    """Plain template for the prompt; must contain {prompt}."""
    response_format: str = " {response}"
    """Plain template for the response; must contain {response}. The end token is appended."""
    system_prompt: str = ""
    """Chat template only: a system turn placed before the user turn (empty = none)."""
    max_length: int = 64
    """Context length in tokens; longer examples are truncated or dropped (see overflow)."""
    overflow: str = "truncate"
    """`truncate`: keep the first max_length tokens; `drop`: leave the example out. Both counted."""
    eval_size: int = 128
    """Held-out examples for the test loss; the same rows for every subset seed."""
    eval_seed: int = 0
    """Seed choosing the held-out rows (keep it fixed to compare candidates and seeds)."""
    sizes: tuple[int, ...] = (64, 128, 256)
    """Nested training subset sizes D_1 < D_2 < ... (examples)."""
    seed: int = 0
    """Seed of the permutation whose prefixes are the nested subsets."""
    split: str = "train"
    """Split to load (hub data sets; local files load as one `train` split)."""
    cache_dir: str = ""
    """Where tokenised data is cached (empty = $LENSRAY_CACHE/tokenized or ~/.cache/lensray/tokenized)."""

    def __post_init__(self) -> None:
        self.sizes = tuple(int(s) for s in self.sizes)
        if not self.path:
            raise ValueError("DataConfig.path is empty: set it to a .jsonl/.json/.csv/.parquet file or a hub name")
        if self.template not in TEMPLATES:
            raise ValueError(f"DataConfig.template={self.template!r}: use one of {list(TEMPLATES)}")
        if self.overflow not in OVERFLOW:
            raise ValueError(f"DataConfig.overflow={self.overflow!r}: use one of {list(OVERFLOW)}")
        if "{prompt}" not in self.prompt_format:
            raise ValueError(f"DataConfig.prompt_format={self.prompt_format!r} must contain {{prompt}}")
        if "{response}" not in self.response_format:
            raise ValueError(f"DataConfig.response_format={self.response_format!r} must contain {{response}}")
        if self.max_length < 2:
            raise ValueError(f"DataConfig.max_length={self.max_length}: needs at least 2 tokens (a prompt and a response token)")
        if self.eval_size < 1:
            raise ValueError(f"DataConfig.eval_size={self.eval_size}: hold out at least 1 example")
        if not self.sizes or self.sizes[0] < 1 or any(a >= b for a, b in zip(self.sizes, self.sizes[1:])):
            raise ValueError(f"DataConfig.sizes={list(self.sizes)}: give positive, strictly increasing sizes, e.g. [64, 128, 256]")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        """Build from a plain dict (YAML, a Tune config); an unknown key is a ValueError listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DataConfig: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        return d


@dataclass
class PreparedData:
    """Tokenised rows split into the fixed held-out set and the permuted training pool."""

    train: Any
    """datasets.Dataset of the training pool, permuted by seed; subset D is its first D rows."""
    eval: Any
    """datasets.Dataset of the held-out rows."""
    n_examples: int
    """Rows in the source data."""
    n_truncated: int
    """Rows cut to max_length (overflow=truncate)."""
    n_dropped: int
    """Rows left out: longer than max_length with overflow=drop, or no response token fits."""
    cache_path: Path
    """Arrow directory the tokenised rows were loaded from."""
    sizes: tuple[int, ...] = field(default=())
    """The nested subset sizes, checked against the pool."""

    def subset(self, size: int) -> Any:
        """The nested training subset of `size` rows (a prefix of the seeded permutation)."""
        if size > len(self.train):
            raise DataError(f"subset size {size} exceeds the {len(self.train)} training rows")
        return self.train.select(range(size))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything in `tokenizer` that changes the ids it produces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, body, str(tokenizer.chat_template), str(tokenizer.eos_token_id)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def load_raw(cfg: DataConfig):
    """Load the data set named by cfg.path as a datasets.Dataset and check its fields."""
    import datasets

    datasets.disable_progress_bars()
    local = Path(cfg.path).expanduser()
    try:
        if local.exists():
            fmt = _LOCAL_FORMATS.get(local.suffix.lower())
            if fmt is None:
                raise DataError(
                    f"DataConfig.path={cfg.path!r}: unsupported file type {local.suffix!r}; "
                    f"use one of {sorted(_LOCAL_FORMATS)}"
                )
            ds = datasets.load_dataset(fmt, data_files=str(local), split="train")
        elif local.suffix.lower() in _LOCAL_FORMATS or local.is_absolute() or cfg.path.startswith("."):
            raise DataError(f"DataConfig.path={cfg.path!r}: no such file")
        else:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (offline, bad JSON, unknown name)
        raise DataError(f"DataConfig.path={cfg.path!r}: could not load the data set ({type(e).__name__}: {e})") from None
    for attr in ("prompt_field", "response_field"):
        name = getattr(cfg, attr)
        if name not in ds.column_names:
            raise DataError(
                f"DataConfig.{attr}={name!r}: no such field in {cfg.path}; "
                f"the data has fields {ds.column_names}"
            )
    if len(ds) == 0:
        raise DataError(f"DataConfig.path={cfg.path!r}: the data set is empty")
    return ds


def _data_fingerprint(cfg: DataConfig, ds) -> str:
    local = Path(cfg.path).expanduser()
    if local.is_file():
        return _sha256_file(local)
    return f"{cfg.path}:{cfg.split}:{ds._fingerprint}"


def _encode(cfg: DataConfig, tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids incl. the end token) for one example."""
    if cfg.template == "plain":
        p = tokenizer(cfg.prompt_format.format(prompt=prompt), add_special_tokens=True, verbose=False)["input_ids"]
        r = tokenizer(cfg.response_format.format(response=response), add_special_tokens=False, verbose=False)["input_ids"]
        return list(p), list(r) + [tokenizer.eos_token_id]
    messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
        {"role": "user", "content": prompt}
    ]
    head = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    p = tokenizer(head, add_special_tokens=False, verbose=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False, verbose=False)["input_ids"]
    # The prompt is the longest common prefix (templates may re-render the head slightly).
    n = 0
    while n < min(len(p), len(ids)) and p[n] == ids[n]:
        n += 1
    return list(ids[:n]), list(ids[n:])


def _tokenize_all(cfg: DataConfig, tokenizer, ds) -> tuple[dict[str, list], dict[str, int]]:
    rows: dict[str, list] = {"input_ids": [], "labels": [], "row": []}
    counts = {"n_examples": len(ds), "n_truncated": 0, "n_dropped": 0}
    prompts, responses = ds[cfg.prompt_field], ds[cfg.response_field]
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        if prompt is None or response is None:
            counts["n_dropped"] += 1
            continue
        p, r = _encode(cfg, tokenizer, str(prompt), str(response))
        ids, labels = p + r, [IGNORE_INDEX] * len(p) + r
        if len(ids) > cfg.max_length:
            if cfg.overflow == "drop" or len(p) >= cfg.max_length:
                counts["n_dropped"] += 1  # dropped by request, or no response token would fit
                continue
            ids, labels = ids[: cfg.max_length], labels[: cfg.max_length]
            counts["n_truncated"] += 1
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["row"].append(i)
    return rows, counts


def prepare_data(cfg: DataConfig, tokenizer) -> PreparedData:
    """Load, tokenise (or load the cache), hold out and permute; see the module docstring.

    Raises DataError naming the field and the fix when the data cannot serve the config.
    """
    import datasets

    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no end token (eos_token); the response needs one to end")
    if cfg.template == "chat" and not tokenizer.chat_template:
        raise DataError("DataConfig.template='chat' but the tokenizer has no chat template; use template='plain'")
    ds = load_raw(cfg)
    key_fields = {
        k: v for k, v in cfg.to_dict().items()
        if k in ("prompt_field", "response_field", "template", "prompt_format", "response_format",
                 "system_prompt", "max_length", "overflow")
    }
    key = hashlib.sha256(
        json.dumps(
            [_CACHE_VERSION, _data_fingerprint(cfg, ds), tokenizer_fingerprint(tokenizer), key_fields],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    cache_path = Path(cfg.cache_dir or default_cache_dir()) / key
    meta_path = cache_path / "lensray_meta.json"
    if meta_path.is_file():
        table = datasets.load_from_disk(str(cache_path / "rows"))
        counts = json.loads(meta_path.read_text())
    else:
        rows, counts = _tokenize_all(cfg, tokenizer, ds)
        if not rows["row"]:
            raise DataError(
                f"DataConfig.max_length={cfg.max_length}: none of the {counts['n_examples']} examples of "
                f"{cfg.path} fits ({counts['n_dropped']} dropped as too long or empty); "
                "raise max_length or use overflow='truncate'"
            )
        table = datasets.Dataset.from_dict(rows)
        tmp = cache_path.with_name(cache_path.name + f".tmp{os.getpid()}")
        table.save_to_disk(str(tmp / "rows"))
        (tmp / "lensray_meta.json").write_text(json.dumps(counts))
        try:
            tmp.rename(cache_path)  # atomic: a concurrent probe may have written it first
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        table = datasets.load_from_disk(str(cache_path / "rows"))

    n = len(table)
    need = cfg.eval_size + cfg.sizes[-1]
    if n < need:
        raise DataError(
            f"DataConfig.sizes: the largest subset ({cfg.sizes[-1]}) plus eval_size ({cfg.eval_size}) "
            f"needs {need} usable examples, but {cfg.path} has {n} "
            f"({counts['n_dropped']} dropped as too long or empty); lower sizes or eval_size"
        )
    held = np.random.default_rng([cfg.eval_seed, 11]).permutation(n)[: cfg.eval_size]
    is_held = np.zeros(n, dtype=bool)
    is_held[held] = True
    pool = np.flatnonzero(~is_held)
    pool = pool[np.random.default_rng([cfg.seed, 13]).permutation(len(pool))]
    return PreparedData(
        train=table.select(pool.tolist()),
        eval=table.select(np.sort(held).tolist()),
        n_examples=counts["n_examples"],
        n_truncated=counts["n_truncated"],
        n_dropped=counts["n_dropped"],
        cache_path=cache_path,
        sizes=cfg.sizes,
    )
