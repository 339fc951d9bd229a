"""Sample designs in the selection: pools of models x designs, the task metric a probe scores by
generating and parsing, and a live sweep that ranks (model, design) pairs on it."""

from __future__ import annotations

import json

import pytest

from lensray.config.load import config_from_dict
from lensray.core.errors import ConfigError
from lensray.data.design import DESIGN_OPTIONS, PRESETS, SampleDesign
from lensray.zoo.build import ASPECT_SCHEMA

PLAN = {"sizes": [32, 64, 128], "budget": 128, "target": 512}


def sde_config(zoo_dir, tmp_path, **over) -> dict:
    raw = {
        "name": "sde",
        "backend": "hf",
        "zoo": str(zoo_dir),
        "pool": {"models": ["llama-text-32"], "designs": ["es-sde", {"output_format": "json", "labels": "numeric"}]},
        "data": {"path": "zoo:aspects", "max_length": 64, "eval_size": 32},
        "probe": {"metric": "task", "micro_batch": 8, "epochs": 2, "ntk_examples": 0},
        "plan": PLAN,
        "scheduler": {"synchronous": False},
        "resources": {"cpus_per_worker": 0.9},
        "output": str(tmp_path),
    }
    for key, value in over.items():
        raw[key] = value if not isinstance(value, dict) else {**raw.get(key, {}), **value}
    return raw


def test_a_pool_crosses_models_with_designs_under_clear_names(zoo_dir, tmp_path):
    cfg = config_from_dict(sde_config(zoo_dir, tmp_path, pool={"models": ["llama-text-32", "gpt2-mix-128"]}))
    json_num = SampleDesign(output_format="json", labels="numeric").name
    assert [(c.name, c.model.name, c.design) for c in cfg.candidates()] == [
        ("llama-text-32+es-sde", "llama-text-32", "es-sde"),
        (f"llama-text-32+{json_num}", "llama-text-32", json_num),
        ("gpt2-mix-128+es-sde", "gpt2-mix-128", "es-sde"),
        (f"gpt2-mix-128+{json_num}", "gpt2-mix-128", json_num),
    ]
    c = cfg.candidate(f"gpt2-mix-128+{json_num}")
    assert cfg.candidate_data(c).sample_design == SampleDesign(output_format="json", labels="numeric")
    assert cfg.candidate_data(c).path.endswith("aspects.jsonl") and cfg.data.schema == ASPECT_SCHEMA
    assert cfg.ranked_by() == "error"


def test_design_configs_are_checked_with_the_valid_choices(zoo_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"pool.designs\[1\]: design.output_format='yaml': use one of \['sentence', 'lines', 'json'\]"):
        config_from_dict(sde_config(zoo_dir, tmp_path, pool={"designs": ["es-sde", {"output_format": "yaml"}]}))
    with pytest.raises(ConfigError, match=r"pool.designs\[0\]: design: unknown option 'format'.*'output_format'"):
        config_from_dict(sde_config(zoo_dir, tmp_path, pool={"designs": [{"format": "json"}]}))
    with pytest.raises(ConfigError, match=r"use a preset \['es-sde', 'plain'\]"):
        config_from_dict(sde_config(zoo_dir, tmp_path, pool={"designs": ["es_sde"]}))
    # a preset and its options are one design: the pool would probe it twice
    es_sde = {option: getattr(PRESETS["es-sde"], option) for option in DESIGN_OPTIONS}
    with pytest.raises(ConfigError, match=r"designs must differ, repeated: \['es-sde'\]"):
        config_from_dict(sde_config(zoo_dir, tmp_path, pool={"designs": ["es-sde", es_sde]}))


def test_designs_need_a_comparable_metric_and_a_place_to_apply(zoo_dir, tmp_path):
    with pytest.raises(ConfigError, match="loss is not comparable across designs.*set probe.metric: task"):
        config_from_dict(sde_config(zoo_dir, tmp_path, probe={"metric": "loss"}))
    with pytest.raises(ConfigError, match="data.design and pool.designs are both set"):
        config_from_dict(sde_config(zoo_dir, tmp_path, data={"design": "es-sde"}))
    with pytest.raises(ConfigError, match="pool.designs needs backend hf"):
        config_from_dict({"backend": "replay", "replay": {"curves": "x.csv"}, "pool": {"designs": ["es-sde"]}})
    with pytest.raises(ConfigError, match=r"ProbeConfig.metric='bleu': use one of \['loss', 'task'\]"):
        config_from_dict(sde_config(zoo_dir, tmp_path, probe={"metric": "bleu"}))
    # plain prompt/response data (the cipher task) takes instruction and input_loss options only
    with pytest.raises(ConfigError, match=r"pool.designs\[1\].*output_format='json' does not apply to plain"):
        config_from_dict(sde_config(zoo_dir, tmp_path, data={"path": "zoo:task", "instruction": "translate :"}))
    with pytest.raises(ConfigError, match=r"data.path='zoo:aspects' is a task of the zoo: set `zoo`"):
        config_from_dict({**sde_config(zoo_dir, tmp_path), "zoo": ""})
    with pytest.raises(ConfigError, match=r"the zoo has \['zoo:task', 'zoo:aspects', 'zoo:mixed'\]"):
        config_from_dict(sde_config(zoo_dir, tmp_path, data={"path": "zoo:reviews"}))


def test_generation_batched_by_prompt_length_matches_one_prompt_at_a_time(zoo_manifest, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from lensray.data.dataset import DataConfig, prepare_data
    from lensray.probe.hf.loading import load_tokenizer
    from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec
    from lensray.probe.hf.worker import generate

    entry = zoo_manifest["by_name"]["mistral-text-96"]
    spec = ProbeSpec(candidate="m", model=entry["path"], data=DataConfig(
        path=zoo_manifest["aspects"], sizes=(32,), eval_size=24, max_length=64, design="es-sde",
        schema=ASPECT_SCHEMA, cache_dir=str(tmp_path)))
    tok = load_tokenizer(spec)
    prompts = list(prepare_data(spec.data, tok).eval["prompt_ids"])
    assert len({len(p) for p in prompts}) > 1 and len(prompts) > len({len(p) for p in prompts})
    model = AutoModelForCausalLM.from_pretrained(entry["path"])
    cpu = torch.device("cpu")
    batched = generate(model, prompts, tok.pad_token_id, tok.eos_token_id, ProbeConfig(eval_batch=32), 0, 1, torch, cpu)
    single = generate(model, prompts, tok.pad_token_id, tok.eos_token_id, ProbeConfig(eval_batch=1), 0, 1, torch, cpu)
    assert batched == single and all(tok.eos_token_id not in ids for ids in batched)
    # two ranks split the prompts between them and together generate the same
    halves = [generate(model, prompts, tok.pad_token_id, tok.eos_token_id, ProbeConfig(), r, 2, torch, cpu) for r in (0, 1)]
    assert halves[0] + halves[1] == batched[0::2] + batched[1::2]
    # a cap on the new tokens holds, and the context is never exceeded
    short = generate(model, prompts, tok.pad_token_id, tok.eos_token_id, ProbeConfig(max_new_tokens=3), 0, 1, torch, cpu)
    assert all(len(ids) <= 3 for ids in short)


@pytest.mark.slow
def test_a_task_metric_probe_reports_the_smoothed_error_of_its_generations(zoo_manifest, ray_local, tmp_path):
    from lensray.data.dataset import DataConfig
    from lensray.probe.hf.driver import run_probe
    from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec

    spec = ProbeSpec(
        candidate="mistral-text-96+es-sde", model=zoo_manifest["by_name"]["mistral-text-96"]["path"],
        data=DataConfig(path=zoo_manifest["aspects"], sizes=(32, 512), eval_size=32, max_length=64,
                        design="es-sde", schema=ASPECT_SCHEMA, cache_dir=str(tmp_path / "cache")),
        probe=ProbeConfig(metric="task", num_workers=2, cpus_per_worker=0.9, micro_batch=8, epochs=2,
                          lr=2e-3, ntk_examples=0, storage_path=str(tmp_path / "runs")),
    )
    observations = run_probe(spec)
    assert [o.size for o in observations] == [32, 512]
    for o in observations:
        x = o.extra
        assert x["metric"] == "task" and x["scored"] == 32  # both workers' shares were gathered
        assert o.loss == x["error_smoothed"] == pytest.approx((x["error"] * 96 + 0.5) / 97)
        assert x["error"] == pytest.approx(1 - x["accuracy"]) and 0 <= x["format_error_rate"] <= 1
        assert 0 <= x["f1"] <= 1 and x["eval_loss"] > 0 and isinstance(x["sample_output"], str)
    # more data: the model writes the design's format and gets more aspects right
    assert observations[1].loss < observations[0].loss, [o.extra for o in observations]


@pytest.fixture(scope="module")
def sde_sweep(zoo_dir, tmp_path_factory):
    from lensray.pipeline import run_select

    out = tmp_path_factory.mktemp("sde")
    cfg = config_from_dict(sde_config(zoo_dir, out, pool={"models": ["mistral-text-96"], "designs": [
        "es-sde", {"output_format": "json", "unmentioned": "omit"}, {"reasoning": "cot_first"}]}))
    return cfg, run_select(cfg, quiet=True), out / "sde"


@pytest.mark.slow
def test_a_sweep_ranks_model_and_design_pairs_on_the_task_error(sde_sweep):
    cfg, sel, folder = sde_sweep
    doc = json.loads((folder / "selection.json").read_text())
    assert doc["ranked_by"] == "error" and "Ranked by task error" in (folder / "report.md").read_text()
    designs = {c.name: c.design for c in cfg.candidates()}
    assert {e["candidate"] for e in doc["ranking"]} == set(designs) and doc["selected"] in designs
    for e in doc["ranking"]:
        assert e["model"] == "mistral-text-96" and e["design"] == designs[e["candidate"]]
        assert e["status"] in ("finished", "stopped early"), e
        assert all(0 < loss < 1 for loss in e["losses"])  # errors, not cross-entropies
        extra = sel.observations[e["candidate"]][-1].extra
        assert e["losses"][-1] == extra["error_smoothed"] and "accuracy" in extra


@pytest.mark.slow
def test_verify_scores_a_design_selection_on_the_error_at_the_target(sde_sweep):
    from lensray.verify import run_verify

    cfg, sel, _ = sde_sweep
    result = run_verify(cfg)
    assert set(result["loss_at_target"]) == {c.name for c in cfg.candidates()}
    assert all(0 < e < 1 for e in result["loss_at_target"].values())
    assert 0 <= result["relacc"] <= 100 and result["selected"] == sel.selected
