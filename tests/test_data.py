"""lensray.data.dataset: config validation, loading and field errors, templates and loss masking,
overflow handling, the tokenised cache, nested subsets and the fixed held-out split; sample
designs over structured and plain data, and the held-out prompts and references a task metric
scores."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from lensray.core.errors import DataError
from lensray.data.dataset import (
    IGNORE_INDEX,
    DataConfig,
    prepare_data,
    tokenizer_fingerprint,
)
from lensray.data.design import (
    TargetSchema,
    design_from_config,
    render,
    score,
    score_plain,
)
from lensray.zoo.build import ASPECT_SCHEMA, TASK_KINDS, aspect_examples, task_examples


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def task_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "task.jsonl", task_examples(300, seed=0))


def cfg(path: Path, tmp_path: Path, **kw) -> DataConfig:
    kw = {"sizes": (8, 16, 32), "eval_size": 40, "cache_dir": str(tmp_path / "cache"), **kw}
    return DataConfig(path=str(path), **kw)


@pytest.mark.parametrize(
    "field, value",
    [
        ("path", ""),
        ("template", "alpaca"),
        ("overflow", "wrap"),
        ("prompt_format", "no placeholder"),
        ("response_format", "{prompt}"),
        ("max_length", 1),
        ("eval_size", 0),
        ("sizes", (16, 8)),
        ("sizes", ()),
    ],
)
def test_config_rejects_bad_field_naming_it(field, value):
    kw = {"path": "x.jsonl", field: value}
    with pytest.raises(ValueError, match=f"DataConfig.{field}"):
        DataConfig(**kw)


def test_unknown_config_key_lists_known_fields():
    with pytest.raises(ValueError, match="unknown field.*'prompt_column'.*known fields"):
        DataConfig.from_dict({"path": "x.jsonl", "prompt_column": "q"})


def test_missing_field_names_it_and_the_columns(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "a", "answer": "b"}] * 10)
    with pytest.raises(DataError) as err:
        prepare_data(cfg(path, tmp_path), tokenizer)
    msg = str(err.value)
    assert "DataConfig.prompt_field='prompt'" in msg and "['question', 'answer']" in msg


def test_missing_file_and_bad_suffix(tmp_path, tokenizer):
    with pytest.raises(DataError, match="no such file"):
        prepare_data(cfg(tmp_path / "nope.jsonl", tmp_path), tokenizer)
    bad = tmp_path / "data.txt"
    bad.write_text("hello")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        prepare_data(cfg(bad, tmp_path), tokenizer)


def test_plain_template_masks_the_prompt(task_file, tmp_path, tokenizer):
    data = prepare_data(cfg(task_file, tmp_path), tokenizer)
    row = data.eval[0]
    ids, labels = row["input_ids"], row["labels"]
    n_prompt = sum(1 for y in labels if y == IGNORE_INDEX)
    prompt = tokenizer.decode(ids[:n_prompt])
    response = tokenizer.convert_ids_to_tokens(labels[n_prompt:])
    assert prompt.split()[0] == "<s>" and prompt.split()[1] in TASK_KINDS and prompt.endswith("->")
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert len(response) == 6 and response[-1] == "</s>"  # 5 symbols and the end token


def test_chat_template_masks_the_prompt(task_file, tmp_path, tokenizer):
    data = prepare_data(cfg(task_file, tmp_path, template="chat", system_prompt="translate"), tokenizer)
    ids, labels = data.eval[0]["input_ids"], data.eval[0]["labels"]
    n_prompt = sum(1 for y in labels if y == IGNORE_INDEX)
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["system", ":"]
    assert tokenizer.convert_ids_to_tokens(ids[n_prompt - 2 : n_prompt]) == ["assistant", ":"]
    assert tokenizer.convert_ids_to_tokens(labels[n_prompt:])[-1] == "</s>"


def test_nested_subsets_and_fixed_disjoint_eval(task_file, tmp_path, tokenizer):
    a = prepare_data(cfg(task_file, tmp_path, seed=1), tokenizer)
    rows = {s: a.subset(s)["row"] for s in (8, 16, 32)}
    assert rows[8] == rows[16][:8] and rows[16] == rows[32][:16]  # prefixes of one permutation
    assert set(rows[8]) < set(rows[16]) < set(rows[32])
    assert len(a.eval) == 40 and not set(a.eval["row"]) & set(a.train["row"])
    assert len(a.eval) + len(a.train) == 300
    b = prepare_data(cfg(task_file, tmp_path, seed=2), tokenizer)
    assert b.eval["row"] == a.eval["row"]  # the held-out set does not move with the subset seed
    assert b.subset(32)["row"] != a.subset(32)["row"]
    again = prepare_data(cfg(task_file, tmp_path, seed=1), tokenizer)
    assert again.subset(32)["row"] == rows[32]  # deterministic


def test_overflow_truncate_and_drop_are_counted(tmp_path, tokenizer):
    rows = task_examples(100, seed=0)
    rows[0] = {"prompt": "translate : " + " ".join("abcdefgh" * 10) + " ->", "response": "a"}  # prompt alone too long
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    # Task examples are 15 tokens: <s> translate (or reverse) : + 5 symbols + -> (9), 5 symbols + end token.
    t = prepare_data(cfg(path, tmp_path, max_length=12, sizes=(8,), eval_size=10), tokenizer)
    assert t.n_truncated == 99 and t.n_dropped == 1 and len(t.train) + len(t.eval) == 99
    assert max(len(x) for x in t.train["input_ids"]) == 12
    with pytest.raises(DataError, match="DataConfig.max_length=14: none of the 100 examples.*fits"):
        prepare_data(cfg(path, tmp_path, max_length=14, overflow="drop", sizes=(1,), eval_size=1), tokenizer)
    fits = prepare_data(cfg(path, tmp_path, max_length=15, overflow="drop", sizes=(8,), eval_size=10), tokenizer)
    assert fits.n_dropped == 1 and fits.n_truncated == 0 and len(fits.train) + len(fits.eval) == 99


def test_too_small_for_sizes_names_the_fix(task_file, tmp_path, tokenizer):
    with pytest.raises(DataError, match="DataConfig.sizes.*needs 340.*has 300.*lower sizes or eval_size"):
        prepare_data(cfg(task_file, tmp_path, sizes=(300,)), tokenizer)


def test_tokenised_rows_are_cached_by_content(task_file, tmp_path, tokenizer):
    first = prepare_data(cfg(task_file, tmp_path), tokenizer)
    assert (first.cache_path / "lensray_meta.json").is_file()
    stamp = (first.cache_path / "lensray_meta.json").stat().st_mtime_ns
    second = prepare_data(cfg(task_file, tmp_path, seed=5), tokenizer)  # seed is not part of the key
    assert second.cache_path == first.cache_path
    assert (second.cache_path / "lensray_meta.json").stat().st_mtime_ns == stamp
    other = prepare_data(cfg(task_file, tmp_path, response_format=" = {response}"), tokenizer)
    assert other.cache_path != first.cache_path
    write_jsonl(task_file, task_examples(300, seed=1))  # new content, same path
    assert prepare_data(cfg(task_file, tmp_path), tokenizer).cache_path != first.cache_path


@pytest.mark.parametrize("suffix", ["csv", "parquet", "json"])
def test_other_local_formats(suffix, tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rows = task_examples(80, seed=0)
    table = pa.Table.from_pylist(rows)
    path = tmp_path / f"task.{suffix}"
    if suffix == "csv":
        pcsv.write_csv(table, path)
    elif suffix == "parquet":
        pq.write_table(table, path)
    else:
        path.write_text(json.dumps(rows))
    data = prepare_data(cfg(path, tmp_path, sizes=(8, 16), eval_size=16), tokenizer)
    assert len(data.train) + len(data.eval) == 80


# Sample designs (lensray.data.design): structured records and plain data rendered under a design.

LOSS_ON_COT = "inst-last.loss-on.json.omit.num.cot"
DESIGNS = ("es-sde", LOSS_ON_COT, "inst-none.loss-off.sentence.ph.text.ans-cot", "inst-first.loss-on.lines.omit.num.direct")


@pytest.fixture
def aspect_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "aspects.jsonl", aspect_examples(200, seed=0))


def words(text: str) -> list[str]:
    return text.split(" ")  # rendered text: words joined by single spaces (newlines are words)


@pytest.mark.parametrize("design", DESIGNS)
def test_structured_rows_split_prompt_and_response_under_the_design(design, aspect_file, tmp_path, tokenizer):
    data = prepare_data(cfg(aspect_file, tmp_path, design=design, schema=ASPECT_SCHEMA), tokenizer)
    records = aspect_examples(200, seed=0)
    sample_design = design_from_config(design)
    assert data.design == sample_design and data.schema == ASPECT_SCHEMA
    for row in data.eval.select(range(5)):
        sample = render(records[row["row"]], sample_design, ASPECT_SCHEMA)
        ids, labels = row["input_ids"], row["labels"]
        assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", *words(sample.prompt), *words(sample.response), "</s>"]
        n_prompt = 1 + len(words(sample.prompt))
        assert row["prompt_ids"] == ids[:n_prompt]
        if sample_design.input_loss == "on":  # every token but the first, which nothing predicts
            assert labels == [IGNORE_INDEX] + ids[1:]
        else:
            assert labels == [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        assert json.loads(row["reference"]) == records[row["row"]]["targets"]
    assert data.n_truncated == data.n_dropped == 0


@pytest.mark.parametrize("design", DESIGNS)
def test_eval_references_score_perfectly_when_generated(design, aspect_file, tmp_path, tokenizer):
    data = prepare_data(cfg(aspect_file, tmp_path, design=design, schema=ASPECT_SCHEMA), tokenizer)
    # What a greedy generation from prompt_ids would decode to if it wrote the reference response.
    outputs = [
        tokenizer.decode(row["input_ids"][len(row["prompt_ids"]) :], skip_special_tokens=True) for row in data.eval
    ]
    records = [{"targets": json.loads(r)} for r in data.eval["reference"]]
    perfect = score(outputs, records, design_from_config(design), ASPECT_SCHEMA)
    assert (perfect.accuracy, perfect.f1, perfect.format_error_rate, perfect.n) == (1.0, 1.0, 0.0, 40)
    assert data.score(outputs) == perfect
    assert data.score(outputs[1:] + outputs[:1]).accuracy < 1.0  # outputs in the wrong rows


def test_plain_eval_references_score_perfectly(task_file, tmp_path, tokenizer):
    for design in ("", "es-sde"):
        data = prepare_data(cfg(task_file, tmp_path, design=design, instruction="translate" if design else ""), tokenizer)
        outputs = [
            tokenizer.decode(row["input_ids"][len(row["prompt_ids"]) :], skip_special_tokens=True) for row in data.eval
        ]
        references = [json.loads(r) for r in data.eval["reference"]]
        assert references[0] == task_examples(300, seed=0)[data.eval[0]["row"]]["response"]
        assert data.score(outputs) == score_plain(outputs, references)
        assert data.score(outputs).accuracy == 1.0


def test_plain_data_with_a_design_places_the_instruction(task_file, tmp_path, tokenizer):
    example = task_examples(300, seed=0)
    none = prepare_data(cfg(task_file, tmp_path), tokenizer)
    plain = prepare_data(cfg(task_file, tmp_path, design="plain"), tokenizer)  # instruction none, loss off
    assert plain.eval["input_ids"] == none.eval["input_ids"] and plain.eval["labels"] == none.eval["labels"]
    assert plain.cache_path != none.cache_path
    first = prepare_data(cfg(task_file, tmp_path, design="es-sde", instruction="the cat"), tokenizer)
    last_design = "inst-last.loss-on.lines.ph.text.direct"
    last = prepare_data(cfg(task_file, tmp_path, design=last_design, instruction="the cat"), tokenizer)
    for data, place in ((first, "first"), (last, "last")):
        row = data.eval[0]
        prompt = example[row["row"]]["prompt"]
        expected = f"<s> the cat {prompt}" if place == "first" else f"<s> {prompt} the cat"
        assert tokenizer.decode(row["prompt_ids"]) == expected
        assert tokenizer.decode(row["input_ids"]) == f"{expected} {example[row['row']]['response']} </s>"
    n_prompt = len(first.eval[0]["prompt_ids"])
    assert first.eval[0]["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt  # es-sde: no loss on the input
    assert last.eval[0]["labels"] == [IGNORE_INDEX] + last.eval[0]["input_ids"][1:]  # loss on the input
    assert len({none.cache_path, first.cache_path, last.cache_path}) == 3
    other = prepare_data(cfg(task_file, tmp_path, design="es-sde", instruction="the dog"), tokenizer)
    assert other.cache_path != first.cache_path  # the instruction is part of the key


def test_cache_keys_differ_between_designs(aspect_file, tmp_path, tokenizer):
    paths = {d: prepare_data(cfg(aspect_file, tmp_path, design=d, schema=ASPECT_SCHEMA), tokenizer).cache_path
             for d in DESIGNS}
    assert len(set(paths.values())) == len(DESIGNS)
    slug = "inst-first.loss-off.lines.ph.text.direct"  # es-sde by its option slug: same tokens, same cache
    assert prepare_data(cfg(aspect_file, tmp_path, design=slug, schema=ASPECT_SCHEMA), tokenizer).cache_path == paths["es-sde"]
    renamed = dataclasses.replace(ASPECT_SCHEMA, placeholder="nothing")
    assert prepare_data(cfg(aspect_file, tmp_path, design="es-sde", schema=renamed), tokenizer).cache_path != paths["es-sde"]


def test_no_design_keeps_the_cache_key_of_before(task_file, tmp_path, tokenizer):
    data = prepare_data(cfg(task_file, tmp_path), tokenizer)
    old_fields = {"prompt_field": "prompt", "response_field": "response", "template": "plain", "prompt_format": "{prompt}",
                  "response_format": " {response}", "system_prompt": "", "max_length": 64, "overflow": "truncate"}
    digest = hashlib.sha256(task_file.read_bytes()).hexdigest()
    blob = json.dumps([1, digest, tokenizer_fingerprint(tokenizer), old_fields], sort_keys=True)
    assert data.cache_path.name == hashlib.sha256(blob.encode()).hexdigest()[:20]


def test_config_round_trips_a_schema_through_plain_dicts(tmp_path):
    config = DataConfig(path="aspects.jsonl", design=LOSS_ON_COT, schema=ASPECT_SCHEMA, sizes=(8, 16))
    plain = json.loads(json.dumps(config.to_dict()))  # what YAML or a Tune config carries
    assert plain["schema"]["names"] == ["food", "service", "price"]
    again = DataConfig.from_dict(plain)
    assert again == config and isinstance(again.schema, TargetSchema)
    assert again.sample_design == design_from_config(LOSS_ON_COT)
    as_dict = DataConfig(path="x.jsonl", design={"preset": "es-sde", "output_format": "json"}, schema=plain["schema"])
    assert as_dict.design == "inst-first.loss-off.json.ph.text.direct" and as_dict.schema == ASPECT_SCHEMA
    assert DataConfig(path="x.jsonl").to_dict()["design"] == "" and DataConfig(path="x.jsonl").sample_design is None


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"design": "es_sde"}, r"DataConfig\.design='es_sde'.*\['es-sde', 'plain'\].*closest: 'es-sde'"),
        ({"design": "inst-up.loss-off.lines.ph.text.direct"},
         r"DataConfig\.design=.*'inst-up' names no instruction value.*'inst-first'"),
        ({"design": {"output": "json"}}, r"DataConfig\.design: unknown option 'output'.*output_format"),
        ({"schema": ASPECT_SCHEMA}, r"DataConfig\.schema is set but DataConfig\.design is empty"),
        ({"instruction": "translate"}, r"DataConfig\.instruction is set but DataConfig\.design is empty"),
        ({"design": "es-sde"}, r"DataConfig\.instruction is empty but DataConfig\.design='es-sde' places"),
        ({"design": LOSS_ON_COT, "instruction": "go"}, r"DataConfig\.design=.*plain data.*design\.output_format='json'"),
        ({"design": "es-sde", "schema": {"names": ["food"], "labels": ["good"]}}, r"DataConfig\.schema: .*numeric"),
        ({"design": "es-sde", "schema": {"names": ["food"], "colour": "red"}},
         r"DataConfig\.schema: unknown field\(s\) \['colour'\]"),
    ],
)
def test_bad_design_settings_name_the_field_and_the_fix(kw, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(path="x.jsonl", **kw)


def test_structured_data_errors_name_the_field(tmp_path, tokenizer, task_file):
    with pytest.raises(DataError) as err:
        prepare_data(cfg(task_file, tmp_path, design="es-sde", schema=ASPECT_SCHEMA), tokenizer)
    msg = str(err.value)
    assert "DataConfig.schema is set" in msg and "no field 'text'" in msg and "['prompt', 'response']" in msg
    no_targets = write_jsonl(tmp_path / "t.jsonl", [{"text": "the food was good ."}] * 10)
    with pytest.raises(DataError, match=r"no field 'targets'; the data has fields \['text'\]"):
        prepare_data(cfg(no_targets, tmp_path, design="es-sde", schema=ASPECT_SCHEMA), tokenizer)
    rows = aspect_examples(60, seed=0)
    rows[3] = {"text": "the food was good .", "targets": {"food": "great"}}
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"row 3: record target food='great': use one of TargetSchema.labels"):
        prepare_data(cfg(bad, tmp_path, design="es-sde", schema=ASPECT_SCHEMA), tokenizer)


def test_chat_template_with_a_design(aspect_file, tmp_path, tokenizer):
    data = prepare_data(cfg(aspect_file, tmp_path, template="chat", design=LOSS_ON_COT, schema=ASPECT_SCHEMA), tokenizer)
    row = data.eval[0]
    sample = render(aspect_examples(200, seed=0)[row["row"]], design_from_config(LOSS_ON_COT), ASPECT_SCHEMA)
    assert tokenizer.decode(row["prompt_ids"]) == f"user : {sample.prompt} assistant :"
    assert row["labels"] == [IGNORE_INDEX] + row["input_ids"][1:]  # loss on the input: all but the first
    outputs = [tokenizer.decode(r["input_ids"][len(r["prompt_ids"]) :], skip_special_tokens=True) for r in data.eval]
    assert outputs[0] == sample.response and data.score(outputs).accuracy == 1.0


# check_data: the cheap check config loading runs on the data file, before any cluster work.

def _pairs(n: int = 3) -> list[dict]:
    return [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(n)]


@pytest.mark.parametrize("form", ["jsonl", "json-list", "json-columns", "json-pretty", "csv", "parquet"])
def test_check_data_reads_the_fields_of_every_local_format(tmp_path, form):
    from lensray.data.dataset import check_data

    rows = _pairs()
    if form == "jsonl":
        path = write_jsonl(tmp_path / "d.jsonl", rows)
    elif form.startswith("json-"):
        doc = {"prompt": [r["prompt"] for r in rows], "response": [r["response"] for r in rows]} if form == "json-columns" else rows
        path = tmp_path / "d.json"
        path.write_text(json.dumps(doc, indent=2 if form == "json-pretty" else None))
    elif form == "csv":
        path = tmp_path / "d.csv"
        path.write_text("prompt,response\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    check_data(DataConfig(path=str(path)))
    with pytest.raises(DataError, match=r"data.prompt_field='question': no such field in .*; the data has fields \['prompt', 'response'\]"):
        check_data(DataConfig(path=str(path), prompt_field="question"), owner="data")


def test_check_data_reads_only_the_first_records(tmp_path):
    from lensray.data.dataset import check_data

    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pairs(500)) + "this line is not JSON\n")
    check_data(DataConfig(path=str(path)))  # the broken line lies past the records it reads


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("empty.jsonl", "", "the data set is empty"),
        ("bad.jsonl", '{"prompt": "a", "response": "b"}\n{"prompt": \n', "not valid JSON or JSON Lines at line 2"),
        ("strings.json", '["a", "b"]', "holds a str where a record should be"),
        ("header.csv", "prompt,response\n", "the data set is empty"),
        ("data.txt", "hello", "unsupported file type '.txt'"),
        ("fake.parquet", "not parquet", "not a Parquet file"),
    ],
)
def test_check_data_names_what_is_wrong_in_one_line(tmp_path, name, text, message):
    from lensray.data.dataset import check_data

    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message) as err:
        check_data(DataConfig(path=str(tmp_path / name)), owner="data")
    assert str(err.value).startswith("data.") and "\n" not in str(err.value)


def test_check_data_missing_files_folders_and_hub_names(tmp_path):
    from lensray.data.dataset import check_data

    for missing in (tmp_path / "nope.jsonl", "./nope.jsonl", "~/no-such-lensray-data.jsonl"):
        with pytest.raises(DataError, match=r"data.path=.*: no such file"):
            check_data(DataConfig(path=str(missing)), owner="data")
    with pytest.raises(DataError, match="is a folder: give the data file in it"):
        check_data(DataConfig(path=str(tmp_path)), owner="data")
    check_data(DataConfig(path="tatsu-lab/alpaca"))  # a hub name: checked where the hub is reachable


def test_check_data_with_a_schema_wants_structured_records(tmp_path):
    from lensray.data.dataset import check_data

    path = write_jsonl(tmp_path / "a.jsonl", _pairs())
    with pytest.raises(DataError, match=r"data.schema is set, so .* must hold structured records.*no field 'text'"):
        check_data(DataConfig(path=str(path), design="es-sde", schema=ASPECT_SCHEMA), owner="data")
    check_data(DataConfig(path=str(write_jsonl(tmp_path / "s.jsonl", aspect_examples(5, seed=0))), design="es-sde", schema=ASPECT_SCHEMA))
