"""Fine-tuning data: load, template, tokenise once (cached), hold out, and draw nested subsets.

A Probe fine-tunes a candidate on D_1 < D_2 < ... examples and measures the loss on one fixed
held-out set. This module turns a data set into exactly that:

1. load it with `datasets`: a local ``.json``/``.jsonl``/``.csv``/``.parquet`` file, or a hub
   name (only on a machine that can reach the hub);
2. write each example as a sample under its sample design (``design``, lensray.data.design):
   structured records ``{"text", "targets", "evidence"}`` (``schema`` set) with `render`, plain
   prompt/response rows with `render_plain` (the instruction placed by the design); without a
   design the prompt and response are taken as they are;
3. render the sample with the `plain` template (``prompt_format`` then ``response_format``
   then the end token) or the tokenizer's `chat` template (user turn, then assistant turn);
4. tokenise, with labels = -100 on every prompt token so the loss is on the response only
   (designs with ``input_loss=on``: on every token but the first, which nothing predicts);
   examples longer than ``max_length`` are truncated or dropped (``overflow``) and counted;
5. cache the tokenised rows as Arrow under ``cache_dir``, keyed by a hash of the data bytes,
   the tokenizer and every field that changes the tokens, so the next probe loads them;
6. hold out ``eval_size`` examples chosen by ``eval_seed`` (the same for every subset seed),
   and permute the rest by ``seed``: subset D_k is the first ``sizes[k]`` rows of that one
   permutation, so every smaller subset lies inside every larger one. The held-out rows also
   carry what a task metric needs: ``prompt_ids`` (the prompt tokens, to generate from) and
   ``reference`` (JSON: the record's targets, or the response text, for `score_outputs`),
   rebuilt from the source rows on every call (cheap: eval_size rows), so they are there
   whatever the cache holds.

Use it::

    from lensray.data.dataset import DataConfig, prepare_data
    data = prepare_data(DataConfig(path="zoo/task.jsonl", sizes=(64, 128, 256)), tokenizer)
    data.subset(64)     # a datasets.Dataset with input_ids and labels
    data.eval           # the held-out rows, also with prompt_ids and reference

    # a structured task under a sample design; a task metric on generated responses
    from lensray.zoo.build import ASPECT_SCHEMA
    data = prepare_data(DataConfig(path="zoo/aspects.jsonl", design="es-sde", schema=ASPECT_SCHEMA), tokenizer)
    outputs = [tokenizer.decode(generate(ids), skip_special_tokens=True) for ids in data.eval["prompt_ids"]]
    data.score(outputs).error    # 1 - accuracy (lensray.design.score)

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

from lensray.core.errors import DataError
from lensray.data.design import (
    ParsedOutput,
    SampleDesign,
    TargetSchema,
    TaskScore,
    design_from_config,
    parse_output,
    render,
    render_plain,
    score,
    score_plain,
)

IGNORE_INDEX = -100
"""Label value that token cross-entropy ignores (prompt and padding positions)."""
TEMPLATES = ("plain", "chat")
OVERFLOW = ("truncate", "drop")
_LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_CACHE_VERSION = 1



def default_cache_dir() -> Path:
    """``$LENSRAY_CACHE/tokenized``, else ``~/.cache/lensray/tokenized``."""
    root = os.environ.get("LENSRAY_CACHE") or Path.home() / ".cache" / "lensray"
    return Path(root) / "tokenized"


def check_fields(owner: str, given: dict[str, Any], cls: type) -> None:
    """Refuse keys of `given` that are not fields of the dataclass `cls`: a ValueError naming
    them (as `owner`'s) and listing the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{owner}: unknown field(s) {unknown}; known fields are {sorted(known)}")


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
    design: str = ""
    """Sample design (lensray.data.design): a preset such as `es-sde` or a `SampleDesign.name` such as
    `inst-last.loss-on.json.omit.num.cot`; a dict of options is turned into its name. Empty = no
    design: the prompt and response are used exactly as they are."""
    schema: TargetSchema | None = None
    """Targets of a structured multi-target task (a TargetSchema or its dict): the data then holds
    records with fields `text`, `targets` and optionally `evidence`, rendered by the design
    (needs `design`); None = plain prompt_field/response_field data."""
    instruction: str = ""
    """Instruction for plain data under a design that places one (instruction=first/last); needs
    `design`. Ignored with a schema, which has its own instruction."""
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
        self._check_design()

    def _check_design(self) -> None:
        self.design = self.design or ""  # YAML `design:` reads as None
        if isinstance(self.design, (dict, SampleDesign)):
            try:
                self.design = design_from_config(self.design).name
            except ValueError as e:
                raise ValueError(f"DataConfig.{e}") from None
        if isinstance(self.schema, dict):
            check_fields("DataConfig.schema", self.schema, TargetSchema)
            try:
                self.schema = TargetSchema(**self.schema)
            except (TypeError, ValueError) as e:
                raise ValueError(f"DataConfig.schema: {e}") from None
        if self.schema is not None and not isinstance(self.schema, TargetSchema):
            raise ValueError(f"DataConfig.schema={self.schema!r}: give a TargetSchema or its dict (names, labels, ...)")
        if not self.design:
            if self.schema is not None:
                raise ValueError(
                    "DataConfig.schema is set but DataConfig.design is empty: set design (e.g. 'es-sde') "
                    "to say how a record becomes a sample"
                )
            if self.instruction:
                raise ValueError(
                    "DataConfig.instruction is set but DataConfig.design is empty: set design (e.g. "
                    "'es-sde' puts the instruction first), or put the text in prompt_format"
                )
            return
        try:
            design = design_from_config(self.design)
        except ValueError as e:  # the message starts with design=...
            raise ValueError(f"DataConfig.{e}") from None
        if self.schema is None:
            if design.instruction != "none" and not self.instruction.strip():
                raise ValueError(
                    f"DataConfig.instruction is empty but DataConfig.design={self.design!r} places an "
                    f"instruction (instruction={design.instruction}): set instruction, or use a design "
                    "with instruction=none (e.g. 'plain')"
                )
            try:
                render_plain("", "", design, self.instruction)
            except ValueError as e:
                raise ValueError(f"DataConfig.design={self.design!r} on plain data (no DataConfig.schema): {e}") from None

    @property
    def sample_design(self) -> SampleDesign | None:
        """The SampleDesign named by `design`, or None without one."""
        return design_from_config(self.design) if self.design else None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        """Build from a plain dict (YAML, a Tune config); an unknown key is a ValueError listing the known ones."""
        check_fields("DataConfig", d, cls)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (lists, dicts): what YAML, JSON and a Tune config carry; from_dict
        reads it back to an equal config."""
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        if self.schema is not None:
            d["schema"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["schema"].items()}
        return d


@dataclass
class PreparedData:
    """Tokenised rows split into the fixed held-out set and the permuted training pool."""

    train: Any
    """datasets.Dataset of the training pool, permuted by seed; subset D is its first D rows."""
    eval: Any
    """datasets.Dataset of the held-out rows: input_ids, labels and row like the training rows,
    plus `prompt_ids` (the prompt tokens, BOS or chat head included, to generate the response
    from), `reference` (a JSON string: the record's targets dict for structured data, the
    response text for plain data; see `references` and `score`) and `query` (the query as a
    user writes it: the record's text, or the prompt field, before any design or template)."""
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
    design: SampleDesign | None = None
    """The sample design the rows were written under (None: no design)."""
    schema: TargetSchema | None = None
    """The targets of structured data (None: plain prompt/response data)."""

    def score(self, outputs: list[str]) -> TaskScore:
        """Task metrics of generated responses, one per eval row in order (see `score_outputs`)."""
        return score_outputs(outputs, self.eval["reference"], self.design, self.schema)

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


def is_local_data(path: str) -> bool:
    """True when a data path names a local file (it exists, has a suffix of a format lensray
    reads, or starts with `/`, `.` or `~`), False for a hub data set name such as `tatsu-lab/alpaca`."""
    local = Path(path).expanduser()
    return local.exists() or local.suffix.lower() in _LOCAL_FORMATS or path.startswith(("/", ".", "~"))


def _local_file(cfg: DataConfig, owner: str) -> Path:
    """cfg.path as an existing local file of a format lensray reads, else DataError."""
    local = Path(cfg.path).expanduser()
    if not local.exists():
        raise DataError(
            f"{owner}.path={cfg.path!r}: no such file; give a .jsonl/.json/.csv/.parquet file (a relative "
            "path is relative to the config's folder) or a hub data set name"
        )
    if not local.is_file():
        raise DataError(f"{owner}.path={cfg.path!r} is a folder: give the data file in it (.jsonl/.json/.csv/.parquet)")
    if local.suffix.lower() not in _LOCAL_FORMATS:
        raise DataError(
            f"{owner}.path={cfg.path!r}: unsupported file type {local.suffix!r}; use one of {sorted(_LOCAL_FORMATS)}"
        )
    return local


def _check_columns(cfg: DataConfig, columns: list[str], owner: str) -> None:
    """The configured fields are among the data's `columns`, else DataError naming both."""
    if cfg.schema is not None:
        for name in ("text", "targets"):
            if name not in columns:
                raise DataError(
                    f"{owner}.schema is set, so {cfg.path} must hold structured records with fields "
                    f"'text', 'targets' (and optionally 'evidence'), but it has no field {name!r}; "
                    f"the data has fields {columns}"
                )
        return
    for attr in ("prompt_field", "response_field"):
        name = getattr(cfg, attr)
        if name not in columns:
            raise DataError(f"{owner}.{attr}={name!r}: no such field in {cfg.path}; the data has fields {columns}")


_PEEK_RECORDS = 100
"""Records `check_data` reads from a JSON file: the fields are those of the first ones."""


def _json_fields(path: Path) -> list[str] | None:
    """The fields of the first records of a JSON Lines file, or of a JSON file holding a list of
    records or a mapping of columns (the forms `datasets` reads); None when it holds none. Reads
    only as much of the file as those records need."""
    decoder = json.JSONDecoder()
    fields_: dict[str, None] = {}
    with open(path, encoding="utf-8") as f:
        buf, pos, eof, n, in_list = "", 0, False, 0, None

        def more() -> bool:
            nonlocal buf, eof
            chunk = f.read(1 << 16)
            eof = not chunk
            buf += chunk
            return not eof

        while n < _PEEK_RECORDS:
            while True:  # skip whitespace (and the commas of a list) up to the next value
                while pos < len(buf) and (buf[pos].isspace() or (in_list and buf[pos] == ",")):
                    pos += 1
                if pos < len(buf) or not more():
                    break
            if pos >= len(buf) or (in_list and buf[pos] == "]"):
                break
            if in_list is None:
                in_list = buf[pos] == "["
                pos += in_list
                continue
            while True:
                try:
                    value, pos = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if not more():
                        line = buf.count("\n", 0, pos) + 1  # where the record starts
                        raise DataError(f"not valid JSON or JSON Lines at line {line}: {e.msg}") from None
            if not isinstance(value, dict):
                raise DataError(
                    f"holds a {type(value).__name__} where a record should be: write one JSON object per line, "
                    'e.g. {"prompt": ..., "response": ...}'
                )
            fields_.update(dict.fromkeys(map(str, value)))
            n += 1
    return list(fields_) if n else None


def _csv_fields(path: Path) -> list[str] | None:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        return header if header is not None and next(rows, None) is not None else None


def _parquet_fields(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid (not Parquet) or OSError
        raise DataError(f"not a Parquet file ({type(e).__name__}: {e})") from None
    return meta.schema_arrow.names if meta.metadata.num_rows else None


def check_data(cfg: DataConfig, owner: str = "DataConfig") -> None:
    """Check, cheaply, that the data `cfg` names can be used as configured: a local file must
    exist, be a format `load_raw` reads and hold the configured fields (prompt_field and
    response_field, or `text` and `targets` with a schema) in its first records (the header of
    a CSV file, the schema of a Parquet file). A hub data set name is not checked (that needs
    the hub). Raises DataError naming `owner`'s field (e.g. `data.prompt_field`), the fix and
    the fields the data has."""
    if not is_local_data(cfg.path):
        return
    local = _local_file(cfg, owner)
    read = {".csv": _csv_fields, ".parquet": _parquet_fields}.get(local.suffix.lower(), _json_fields)
    try:
        columns = read(local)
    except DataError as e:
        raise DataError(f"{owner}.path={cfg.path!r}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{owner}.path={cfg.path!r}: cannot be read ({type(e).__name__}: {e})") from None
    if columns is None:
        raise DataError(f"{owner}.path={cfg.path!r}: the data set is empty")
    _check_columns(cfg, columns, owner)


def load_raw(cfg: DataConfig):
    """Load the data set named by cfg.path as a datasets.Dataset and check its fields."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if is_local_data(cfg.path):
            local = _local_file(cfg, "DataConfig")
            fmt = _LOCAL_FORMATS[local.suffix.lower()]
            ds = datasets.load_dataset(fmt, data_files=str(local), split="train")
        else:
            ds = datasets.load_dataset(cfg.path, split=cfg.split)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (offline, bad JSON, unknown name)
        raise DataError(f"DataConfig.path={cfg.path!r}: could not load the data set ({type(e).__name__}: {e})") from None
    _check_columns(cfg, ds.column_names, "DataConfig")
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


def _present(value: Any) -> dict[str, Any]:
    """A record's targets/evidence as a dict of the keys it has: Arrow stores the records'
    dicts as one struct, with None for the keys a record lacks; a JSON string is read too."""
    if isinstance(value, str):
        value = json.loads(value)
    return {k: v for k, v in (value or {}).items() if v is not None}


def _samples(cfg: DataConfig, ds):
    """(source row, prompt, response, loss on input, reference JSON) of every usable example of
    `ds` under cfg's design; None for a row without a prompt or response (or text)."""
    design = cfg.sample_design
    if cfg.schema is not None:
        evidence = ds["evidence"] if "evidence" in ds.column_names else [None] * len(ds)
        for i, (text, targets, ev) in enumerate(zip(ds["text"], ds["targets"], evidence)):
            if text is None:
                yield None
                continue
            record = {"text": str(text), "targets": _present(targets), "evidence": _present(ev)}
            try:
                sample = render(record, design, cfg.schema)
            except ValueError as e:
                raise DataError(f"{cfg.path} row {i}: {e}; fix the record or DataConfig.schema") from None
            targets = {name: record["targets"][name] for name in cfg.schema.names if name in record["targets"]}
            yield i, sample.prompt, sample.response, sample.loss_on_input, json.dumps(targets)
        return
    for i, (prompt, response) in enumerate(zip(ds[cfg.prompt_field], ds[cfg.response_field])):
        if prompt is None or response is None:
            yield None
            continue
        if design is None:
            yield i, str(prompt), str(response), False, json.dumps(str(response))
            continue
        sample = render_plain(str(prompt), str(response), design, cfg.instruction)
        yield i, sample.prompt, sample.response, sample.loss_on_input, json.dumps(str(response))


def encode_sample(cfg: DataConfig, tokenizer, prompt: str, response: str, loss_on_input: bool,
                  max_length: int | None = None) -> tuple[list[int], list[int], bool] | None:
    """(input ids, labels, truncated) of one rendered sample under cfg's template: labels are
    IGNORE_INDEX on the prompt (with `loss_on_input`: on the first token only, which nothing
    predicts). Longer than `max_length` (default cfg.max_length): cut to it, or None when
    cfg.overflow is `drop` or no response token would fit."""
    limit = cfg.max_length if max_length is None else max_length
    p, r = _encode(cfg, tokenizer, prompt, response)
    ids = p + r
    labels = [IGNORE_INDEX] + ids[1:] if loss_on_input else [IGNORE_INDEX] * len(p) + r
    if len(ids) <= limit:
        return ids, labels, False
    if cfg.overflow == "drop" or len(p) >= limit:
        return None
    return ids[:limit], labels[:limit], True


def _tokenize_all(cfg: DataConfig, tokenizer, ds) -> tuple[dict[str, list], dict[str, int]]:
    rows: dict[str, list] = {"input_ids": [], "labels": [], "row": []}
    counts = {"n_examples": len(ds), "n_truncated": 0, "n_dropped": 0}
    for sample in _samples(cfg, ds):
        encoded = None if sample is None else encode_sample(cfg, tokenizer, *sample[1:4])
        if encoded is None:  # no prompt or response, dropped by request, or no response token fits
            counts["n_dropped"] += 1
            continue
        ids, labels, truncated = encoded
        counts["n_truncated"] += truncated
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["row"].append(sample[0])
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
    if cfg.design:  # without a design the key is what it was before designs, so caches stay valid
        key_fields["design"] = cfg.sample_design.to_dict()  # a preset and its slug share a cache
        key_fields["schema"] = cfg.to_dict()["schema"]
        key_fields["instruction"] = cfg.instruction if cfg.schema is None else ""
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
        eval=_eval_rows(cfg, tokenizer, ds, table.select(np.sort(held).tolist())),
        n_examples=counts["n_examples"],
        n_truncated=counts["n_truncated"],
        n_dropped=counts["n_dropped"],
        cache_path=cache_path,
        sizes=cfg.sizes,
        design=cfg.sample_design,
        schema=cfg.schema,
    )


def score_outputs(
    outputs: list[str], references: list[str], design: SampleDesign | None, schema: TargetSchema | None
) -> TaskScore:
    """Task metrics (a lensray.design.TaskScore) of generated responses against the held-out
    `reference` column, one each, in order: an output is the decoded tokens generated after
    `prompt_ids`, up to the end token. Structured data (a schema) is parsed under the design
    (`design.score`); plain data is compared as text (`design.score_plain`), so a
    response_format with words around {response} must not wrap the outputs (the default
    ' {response}' adds none)."""
    refs = [json.loads(r) for r in references]
    if schema is not None:
        return score(list(outputs), [{"targets": t} for t in refs], design, schema)
    return score_plain(list(outputs), refs)


def canonical_answer(output: str, design: SampleDesign | None, schema: TargetSchema | None) -> str:
    """What a generated response answers, written one way whatever the design: equal strings are
    one answer (a vote between finalists of different designs). Structured data: the parsed
    label per target, as JSON in schema order (null: unmentioned), or the output itself when it
    breaks the design's format; plain data: the output with its whitespace normalised."""
    if schema is None:
        return " ".join(str(output).split())
    return _parsed_answer(parse_output(output, design, schema), output)


def _parsed_answer(parsed: ParsedOutput, output: str) -> str:
    return json.dumps(parsed.labels) if parsed.ok else str(output).strip()


def judge_outputs(
    outputs: list[str], references: list[str], design: SampleDesign | None, schema: TargetSchema | None
) -> list[tuple[bool, str]]:
    """Per output (one per held-out row, in order): whether it is right, and its
    `canonical_answer`. Right means every target right under the design (structured data; a
    malformed output is wrong) or an exact match after whitespace normalisation (plain data):
    the per-query view of `score_outputs`."""
    if len(outputs) != len(references):
        raise ValueError(f"judge_outputs: {len(outputs)} outputs for {len(references)} references; give one each")
    judged = []
    for output, ref in zip(outputs, (json.loads(r) for r in references)):
        if schema is None:
            answer = canonical_answer(output, design, schema)
            judged.append((answer.split() == str(ref).split(), answer))
            continue
        parsed = parse_output(output, design, schema)
        right = parsed.ok and all(parsed.labels[name] == ref.get(name) for name in schema.names)
        judged.append((right, _parsed_answer(parsed, output)))
    return judged


def rendered_prompt(cfg: DataConfig, query: str) -> str:
    """The prompt text of a query text (a record's `text`, or a plain prompt) under cfg's design,
    before the template: what `prompt_ids` encodes."""
    design = cfg.sample_design
    if cfg.schema is not None:
        return render({"text": query, "targets": {}, "evidence": {}}, design, cfg.schema).prompt
    if design is not None:
        return render_plain(query, "", design, cfg.instruction).prompt
    return query


def encode_prompt(cfg: DataConfig, tokenizer, prompt: str) -> list[int]:
    """The tokens of a prompt text under cfg's template (plain format or chat), as a training
    example's prompt is encoded."""
    return _encode(cfg, tokenizer, prompt, "")[0]


def prompt_ids(cfg: DataConfig, tokenizer, query: str) -> list[int]:
    """The prompt tokens of a query text under cfg's design and template: the held-out rows'
    `prompt_ids` for their `query`, and what a served finalist generates from."""
    return encode_prompt(cfg, tokenizer, rendered_prompt(cfg, query))


def _source_rows(cfg: DataConfig, ds, rows: list[int]) -> list[tuple[str, str, str, str]]:
    """(query, prompt, response, reference) of each source row under cfg's design: the query as a
    user writes it, the rendered prompt and response, the reference JSON (rows that were usable
    when tokenised)."""
    source = ds.select(rows)
    queries = [str(q) for q in source["text" if cfg.schema is not None else cfg.prompt_field]]
    return [(q, prompt, response, reference) for q, (_, prompt, response, _, reference) in zip(queries, _samples(cfg, source))]


def source_samples(cfg: DataConfig, rows: list[int]) -> list[tuple[str, str, str, str]]:
    """(query, prompt, response, reference) of the data's source rows `rows` (a PreparedData's
    `row` column) under cfg's design, as the probe rendered them before tokenising."""
    return _source_rows(cfg, load_raw(cfg), rows)


def _eval_rows(cfg: DataConfig, tokenizer, ds, held):
    """The held-out rows with `query`, `prompt_ids` and `reference` added, rebuilt from their source rows
    (the `row` column) rather than cached, so a cache written before these columns existed
    serves as well; an in-memory Dataset (eval_size rows)."""
    import datasets

    columns = held[:]
    rendered = _source_rows(cfg, ds, columns["row"])
    columns["query"] = [q for q, _, _, _ in rendered]
    columns["prompt_ids"] = [_encode(cfg, tokenizer, prompt, response)[0] for _, prompt, response, _ in rendered]
    columns["reference"] = [reference for _, _, _, reference in rendered]
    return datasets.Dataset.from_dict(columns)
