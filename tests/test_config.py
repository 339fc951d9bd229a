"""lensray.config: loading YAML (numbers PyYAML leaves as strings, the shape of each section),
paths (relative to the config, hub ids left alone, local models and the data file checked before
Ray starts), `section.field=value` overrides, and the generated reference in docs/config.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lensray.config.load import config_from_dict, load_config
from lensray.config.reference import config_reference, field_docs
from lensray.config.schema import PlanConfig, SelectConfig
from lensray.core.curves import packaged_curves
from lensray.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FLAN = str(packaged_curves()[0])


def replay_raw(tmp_path: Path, **over) -> dict:
    return {"backend": "replay", "replay": {"curves": FLAN}, "output": str(tmp_path / "out"), **over}


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    """A config folder with a (fake) model folder and a prompt/response data file."""
    (tmp_path / "models" / "m").mkdir(parents=True)
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(4)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def hf_raw(folder: Path, **over) -> dict:
    raw = {
        "backend": "hf",
        "pool": {"models": [{"name": "m", "path": "models/m"}]},
        "plan": {"sizes": [8, 16, 32], "budget": 32, "target": 64},
        "data": {"path": "data.jsonl"},
        "scheduler": {"synchronous": False},
        "output": str(folder / "out"),
    }
    return {**raw, **over}


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# Numbers and shapes

def test_numbers_yaml_reads_as_strings_are_numbers(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", f"""
backend: replay
replay: {{curves: {FLAN}}}
output: {tmp_path / 'out'}
probe: {{lr: 5e-5, weight_decay: 1E-2}}
fit: {{noise_floor: 1e-3}}
plan: {{start: 2e2, budget: 3.2e3, target: 1638400}}
""")
    cfg = load_config(path)
    assert cfg.probe.lr == 5e-5 and cfg.probe.weight_decay == 0.01 and cfg.fit.noise_floor == 1e-3
    assert (cfg.plan.start, cfg.plan.budget) == (200, 3200) and isinstance(cfg.plan.budget, int)


@pytest.mark.parametrize(
    "over, message",
    [
        ({"plan": {"budget": "3.2e-1"}}, r"plan.budget must be int, got '3.2e-1'"),
        ({"fit": {"window": 2.5}}, r"fit.window must be int, got 2.5"),
        ({"scheduler": {"level": "high"}}, r"scheduler.level"),
        ({"scheduler": {"top_k": "1e0x"}}, r"scheduler.top_k must be int, got '1e0x'"),
    ],
)
def test_what_is_not_a_number_of_the_right_kind_is_refused(tmp_path, over, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(replay_raw(tmp_path, **over))


def test_a_pool_written_as_a_list_names_the_fix(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", f"backend: replay\nreplay: {{curves: {FLAN}}}\npool: [gpt2, t5-small]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "\n" not in msg and "pool must be a mapping" in msg and "write `pool: {models: [...]}`" in msg


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(ConfigError, match=r"output '.*taken' is a file: give a folder"):
        config_from_dict(replay_raw(tmp_path, output=str(tmp_path / "taken")))
    assert (tmp_path / "taken").read_text() == "mine"


def test_invalid_yaml_is_one_line_with_its_place(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", "backend: replay\nplan: {budget: 3200\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "\n" not in str(err.value) and "not valid YAML at line" in str(err.value)


# Paths

def test_model_and_data_paths_resolve_against_the_config_folder(hf_dir):
    cfg = load_config(write_yaml(hf_dir / "c.yaml", json.dumps(hf_raw(hf_dir))))
    assert cfg.pool.models[0].path == str(hf_dir / "models" / "m")
    assert cfg.data.path == str(hf_dir / "data.jsonl")


@pytest.mark.parametrize("hub_id", ["gpt2", "Qwen/Qwen2.5-0.5B"])
def test_hub_ids_are_kept_as_they_are(hf_dir, hub_id):
    raw = hf_raw(hf_dir, pool={"models": [{"name": "m", "path": hub_id}, hub_id]})
    cfg = config_from_dict(raw, hf_dir)
    assert cfg.pool.models[0].path == hub_id and cfg.pool.models[1].path == ""
    data = config_from_dict(hf_raw(hf_dir, data={"path": "tatsu-lab/alpaca"}), hf_dir).data
    assert data.path == "tatsu-lab/alpaca"  # a hub data set: not made a path, not checked here


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "~/no-such-lensray-model", "models/absent"])
def test_a_local_model_that_does_not_exist_is_refused_before_ray(hf_dir, path):
    raw = hf_raw(hf_dir, pool={"models": ["gpt2", {"name": "m", "path": path}]})
    if path == "models/absent":  # not there and not local-looking: a hub id
        assert config_from_dict(raw, hf_dir).pool.models[1].path == path
        return
    with pytest.raises(ConfigError) as err:
        config_from_dict(raw, hf_dir)
    msg = str(err.value)
    assert msg.startswith("pool.models[1].path ") and "does not exist" in msg and "hub id such as `gpt2`" in msg


def test_a_model_path_that_is_a_file_is_refused(hf_dir):
    (hf_dir / "model.bin").write_text("")
    with pytest.raises(ConfigError, match=r"pool.models\[0\].path '.*model.bin' is a file, not a folder"):
        config_from_dict(hf_raw(hf_dir, pool={"models": [{"name": "m", "path": "./model.bin"}]}), hf_dir)


def test_replay_model_paths_are_rows_of_the_curves_file(tmp_path):
    raw = replay_raw(tmp_path, pool={"models": [{"name": "a", "path": "./t5-base"}, {"name": "b", "path": "/opt"}]})
    cfg = config_from_dict(raw, tmp_path)
    assert [m.path for m in cfg.pool.models] == ["./t5-base", "/opt"]


def test_a_zoo_model_without_a_path_must_be_one_of_the_zoo(tmp_path):
    raw = {"backend": "hf", "zoo": str(tmp_path / "zoo"), "pool": {"models": ["llama-copy-69"]},
           "plan": {"sizes": [8, 16, 32], "budget": 32, "target": 64}, "scheduler": {"synchronous": False}}
    with pytest.raises(ConfigError, match=r"pool.models\[0\] 'llama-copy-69' is not a model of the zoo. Did you mean 'llama-copy-96'\?"):
        config_from_dict(raw)
    raw["pool"]["models"] = ["llama-copy-96"]  # the zoo is not built yet: run_select builds it
    assert config_from_dict(raw).pool.models[0].path == str(tmp_path / "zoo" / "models" / "llama-copy-96")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"path": "missing.jsonl"}, r"data.path='.*missing.jsonl': no such file"),
        ({"path": "data.jsonl", "prompt_field": "question"}, r"data.prompt_field='question': no such field .*\['prompt', 'response'\]"),
        ({"path": "data.jsonl", "response_field": "answer"}, r"data.response_field='answer': no such field"),
        ({"path": "data.txt"}, r"data.path='.*data.txt': unsupported file type '.txt'"),
    ],
)
def test_the_data_file_is_checked_on_loading(hf_dir, data, message):
    (hf_dir / "data.txt").write_text("hello\n")
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict(hf_raw(hf_dir, data=data), hf_dir)
    assert "\n" not in str(err.value)


# Overrides

def test_overrides_set_nested_fields_with_yaml_values(tmp_path):
    over = ["fit.window=4", "probe.lr=1e-4", "pool.models=[gpt2, t5-small]", "plan.budget=6400", "scheduler.enabled=false"]
    cfg = config_from_dict(replay_raw(tmp_path), overrides=over)
    assert cfg.fit.window == 4 and cfg.probe.lr == 1e-4 and cfg.plan.budget == 6400 and not cfg.scheduler.enabled
    assert [m.name for m in cfg.pool.models] == ["gpt2", "t5-small"]


def test_load_config_applies_overrides_after_the_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", f"backend: replay\nreplay: {{curves: {FLAN}}}\nfit: {{window: 3}}\n")
    assert load_config(path, ["fit.window=5"]).fit.window == 5
    assert load_config(path).fit.window == 3


def test_override_paths_resolve_against_the_working_folder(tmp_path, monkeypatch, hf_dir):
    cwd = tmp_path / "here"
    cwd.mkdir()
    (cwd / "mine.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    monkeypatch.chdir(cwd)
    cfg = config_from_dict(hf_raw(hf_dir), hf_dir, ["data.path=mine.jsonl"])
    assert cfg.data.path == str(cwd / "mine.jsonl") and cfg.pool.models[0].path == str(hf_dir / "models" / "m")


@pytest.mark.parametrize(
    "item, message",
    [
        ("fit.windw=4", r"override 'fit.windw=4': unknown key fit.windw. Did you mean 'window'\?"),
        ("colour=1", r"unknown key colour"),
        ("fit.window", r"write section.field=value"),
        ("plan.budget.x=1", r"plan.budget is a int, not a section"),
        ("fit.window=[1", r"not valid YAML"),
        ("fit.window=four", r"fit.window must be int, got 'four'"),
    ],
)
def test_bad_overrides_name_the_key_and_the_fix(tmp_path, item, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(replay_raw(tmp_path), overrides=[item])


def test_the_callers_dict_is_left_as_it_is(tmp_path):
    raw = replay_raw(tmp_path, pool={"models": ["gpt2"]})
    before = json.dumps(raw, sort_keys=True)
    config_from_dict(raw, tmp_path, ["fit.window=4", "pool.designs=[]"])
    assert json.dumps(raw, sort_keys=True) == before


# The reference

def test_docs_config_md_is_the_generated_reference():
    text = (REPO / "docs" / "config.md").read_text() if (REPO / "docs" / "config.md").is_file() else ""
    assert text == config_reference(), "docs/config.md is out of date: run `lensray config --reference > docs/config.md`"


def test_the_reference_has_every_section_and_field_with_its_docstring():
    import dataclasses

    ref = config_reference()
    for f in dataclasses.fields(SelectConfig):
        assert f"`{f.name}`" in ref
    assert "| `budget` | `int` | `3200` | Largest subset size a probe may fine-tune on (B). |" in ref
    assert "## `pool.models[]`" in ref and "## `data.schema`" in ref
    docs = field_docs(PlanConfig)
    assert docs["target"] == "Data size T whose fine-tuned loss is predicted and ranked."


def test_the_printed_config_of_an_hf_selection_loads_back_the_same(hf_dir, capsys):
    from lensray.cli import main

    config = write_yaml(hf_dir / "c.yaml", json.dumps(hf_raw(hf_dir)))
    assert main(["config", str(config), "--set", "probe.lr=1e-4"]) == 0
    resolved = write_yaml(hf_dir / "resolved.yaml", capsys.readouterr().out)
    assert load_config(resolved) == load_config(config, ["probe.lr=1e-4"])
    assert load_config(resolved).data.sizes == (8, 16, 32)
