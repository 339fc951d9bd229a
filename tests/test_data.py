"""lensray.data: config validation, loading and field errors, templates and loss masking,
overflow handling, the tokenised cache, nested subsets and the fixed held-out split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensray.data import IGNORE_INDEX, DataConfig, DataError, prepare_data
from lensray.zoo import task_examples


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
    assert prompt.startswith("<s> translate :") and prompt.endswith("->")
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
    # Task examples are 15 tokens: <s> translate : + 5 symbols + -> (9), 5 symbols + end token.
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
