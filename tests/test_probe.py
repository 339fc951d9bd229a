"""lensray.probe (hf backend) and lensray.probe.hf.ntk, end to end on the zoo with a local Ray.

Slow tests fine-tune zoo models through a Ray Train V2 TorchTrainer running DeepSpeed on CPU
(gloo), on nested subsets of 8/16/32 examples of the zoo's task with 16-token contexts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lensray.core.errors import ProbeError
from lensray.data.dataset import DataConfig, prepare_data
from lensray.probe.hf.deepspeed import builtin_deepspeed_template, fill_deepspeed_config
from lensray.probe.hf.driver import run_probe
from lensray.probe.hf.loading import load_tokenizer
from lensray.probe.hf.ntk import NTKStats, diag_ntk, ntk_term
from lensray.probe.hf.recipe import ProbeConfig, ProbeSpec

REPO = Path(__file__).resolve().parents[1]
SIZES = (8, 16, 32)
TASK_TOKENS = 15  # every zoo task example: 9 prompt tokens, 5 symbols, the end token


def make_spec(manifest: dict, tmp_path: Path, model: str = "llama-copy-96", data: dict | None = None, **probe) -> ProbeSpec:
    entry = manifest["by_name"].get(model)
    data_kw = {"path": manifest["task"], "sizes": SIZES, "eval_size": 32, "max_length": 16,
               "cache_dir": str(tmp_path / "cache"), **(data or {})}
    probe_kw = {"micro_batch": 4, "epochs": 3, "lr": 3e-3, "storage_path": str(tmp_path / "runs"), **probe}
    return ProbeSpec(
        candidate=model, model=entry["path"] if entry else model,
        data=DataConfig(**data_kw), probe=ProbeConfig(**probe_kw),
    )


def check_curve(observations, spec: ProbeSpec) -> None:
    assert [o.size for o in observations] == list(SIZES)
    losses = [o.loss for o in observations]
    assert losses[0] > losses[1] > losses[2], losses
    assert observations[0].extra["zero_shot_loss"] > losses[0]
    global_batch = spec.probe.micro_batch * spec.probe.num_workers
    for o in observations:
        assert o.candidate == spec.candidate
        assert o.extra["steps"] == spec.probe.epochs * o.size // global_batch
        assert o.tokens == spec.probe.epochs * o.size * min(TASK_TOKENS, spec.data.max_length)
        assert o.flops == pytest.approx(6 * o.extra["n_params"] * o.tokens)
        assert o.wall_s > 0 and o.extra["tokens_per_s"] > 0
        assert o.extra["weight_delta"] > 0  # the trainable weights really moved
        assert o.extra["num_workers"] == spec.probe.num_workers
        assert math.isfinite(o.extra["ntk_F"]) and math.isfinite(o.extra["ntk_log_F"])
    log_f = [o.extra["ntk_log_F"] for o in observations]
    assert log_f[0] > log_f[1] > log_f[2]  # F shrinks as the steps t grow
    check_phases(observations)


def check_phases(observations) -> None:
    """Each size's wall time by phase: the start-up once, at the first size; every size trains,
    evaluates, loads its weights and starts DeepSpeed; the phases of a size fit in its wall time."""
    from lensray.probe.hf.worker import PHASES

    once = {"tokenize", "ray_train_start", "worker_setup", "zero_shot", "ntk"}
    first, *rest = (o.extra["phase_s"] for o in observations)
    assert once | {"model_load", "deepspeed_init", "train", "eval"} <= set(first) <= set(PHASES)
    inside = {"model_load", "zero_shot", "ntk", "deepspeed_init", "train", "eval"}  # what a size's wall_s spans
    for o, phases in zip(observations, [first, *rest]):
        assert all(v >= 0 for v in phases.values()) and phases["train"] == pytest.approx(o.extra["train_s"])
        assert sum(phases.get(k, 0.0) for k in inside) <= o.wall_s
    for phases in rest:  # the previous size's report, then this size's own work
        assert {"checkpoint", "model_load", "deepspeed_init", "train", "eval"} <= set(phases) and not once & set(phases)


@pytest.mark.slow
def test_full_finetune_two_workers_zero2(zoo_manifest, ray_local, tmp_path):
    # Two workers of 2 examples: the global batch (and the steps per size) of one worker of 4. Five
    # epochs (10, 20, 40 steps): the copy model's first steps take it from confident copying (6.6
    # nats) past a bump near chance, where 3 epochs' 6 and 12 steps end (2.53 then 2.64 on one
    # worker and on two, at lr 3e-3 or 1e-3).
    spec = make_spec(zoo_manifest, tmp_path, num_workers=2, zero_stage=2, micro_batch=2, epochs=5)
    observations = run_probe(spec)
    check_curve(observations, spec)
    assert all(o.extra["zero_stage"] == 2 and not o.extra["lora"] for o in observations)
    assert observations[0].extra["trainable_params"] == observations[0].extra["n_params"]


@pytest.mark.slow
def test_lora_two_workers_with_truncated_examples(zoo_manifest, ray_local, tmp_path):
    # max_length 13 < 15 task tokens: every example is truncated (counted), none crashes the probe.
    # neox-copy-48: whether llama-copy-96's LoRA curve rises past its early bump at 16 examples
    # depends on the zoo's build (2.86, 3.07, 2.28 on one 2-core machine's).
    spec = make_spec(zoo_manifest, tmp_path, model="neox-copy-48", data={"max_length": 13}, num_workers=2, zero_stage=2,
                     lora=True, lr=2e-3, epochs=5, micro_batch=2)
    observations = run_probe(spec)
    check_curve(observations, spec)
    extra = observations[0].extra
    assert extra["lora"] and 0 < extra["trainable_params"] < extra["n_params"] / 4
    assert extra["n_truncated"] == 4096 and extra["n_dropped"] == 0


@pytest.mark.slow
def test_every_size_starts_from_the_pretrained_weights(zoo_manifest, ray_local, tmp_path):
    """The weights are read once per probe and copied for each size: a size fine-tuned after
    another in one probe (LoRA adapters included) matches the same size probed alone."""
    kw = {"lora": True, "lr": 1e-2, "ntk_examples": 0}
    after = run_probe(make_spec(zoo_manifest, tmp_path, data={"sizes": (8, 16)}, **kw))
    alone = run_probe(make_spec(zoo_manifest, tmp_path, data={"sizes": (16,)}, **kw))
    assert after[0].loss != after[1].loss
    assert after[1].loss == pytest.approx(alone[0].loss, rel=1e-6)
    assert after[1].extra["weight_delta"] == pytest.approx(alone[0].extra["weight_delta"], rel=1e-6)


@pytest.mark.slow
def test_an_in_process_probe_fine_tunes_as_its_worker_group_does(zoo_manifest, ray_local, tmp_path):
    """Ray Train's local mode runs the same loop in the calling process: the same losses, steps
    and weight changes as a worker group of one, with no worker to start; the process group it
    needed is gone afterwards, and a failing in-process probe fails as a worker group's does."""
    import torch.distributed as dist

    kw = {"epochs": 5}  # past the copy model's early bump (test_full_finetune_two_workers_zero2)
    group = run_probe(make_spec(zoo_manifest, tmp_path, **kw))
    alone = run_probe(make_spec(zoo_manifest, tmp_path, in_process=True, **kw))
    check_curve(alone, make_spec(zoo_manifest, tmp_path, in_process=True, **kw))
    for a, g in zip(alone, group):
        assert a.extra["in_process"] and not g.extra["in_process"]
        assert a.loss == pytest.approx(g.loss, rel=1e-6) and a.extra["steps"] == g.extra["steps"]
        assert a.extra["weight_delta"] == pytest.approx(g.extra["weight_delta"], rel=1e-6)
    assert alone[0].extra["phase_s"]["ray_train_start"] < group[0].extra["phase_s"]["ray_train_start"]
    assert not dist.is_initialized()
    spec = make_spec(zoo_manifest, tmp_path, data={"sizes": (16,)}, lr=50.0, zero_stage=0, ntk_examples=0, in_process=True)
    with pytest.raises(ProbeError) as err:
        run_probe(spec)
    assert err.value.reason.startswith("diverged at size 16")
    assert not dist.is_initialized()
    run_probe(make_spec(zoo_manifest, tmp_path, data={"sizes": (8,)}, ntk_examples=0, in_process=True))  # and runs again


@pytest.mark.slow
def test_diverging_run_stops_with_reason(zoo_manifest, ray_local, tmp_path):
    spec = make_spec(zoo_manifest, tmp_path, data={"sizes": (16,)}, lr=50.0, zero_stage=0, ntk_examples=0)
    with pytest.raises(ProbeError) as err:
        run_probe(spec)
    assert err.value.reason.startswith("diverged at size 16") and "lower ProbeConfig.lr" in err.value.reason
    assert err.value.observations == []


@pytest.mark.slow
def test_out_of_memory_stops_with_reason(zoo_manifest, ray_local, tmp_path):
    spec = make_spec(zoo_manifest, tmp_path, data={"sizes": (8,)}, max_rss_gb=0.01, ntk_examples=0)
    with pytest.raises(ProbeError, match=r"out of memory at size 8: worker peak RSS .* exceeds ProbeConfig.max_rss_gb=0.01"):
        run_probe(spec)


@pytest.mark.slow
def test_killed_worker_restarts_after_its_last_finished_size(zoo_manifest, ray_local, tmp_path):
    """A worker process killed mid-probe (what a lost node does to it): Ray Train restarts the
    worker group, which resumes after the last size it finished instead of fine-tuning it again."""
    from ray.util.state import list_actors

    spec = make_spec(zoo_manifest, tmp_path, max_steps=300, max_failures=1, run_name="probe-killed", ntk_examples=0)
    run_dir = tmp_path / "runs" / "probe-killed"
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_probe, spec)
        deadline = time.time() + 300
        # the first size is finished and its checkpoint registered (Ray Train then writes its snapshot)
        while not (run_dir / "checkpoint_manager_snapshot.json").exists():
            assert not future.done(), future.result()
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
        workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        assert len(workers) == 1, workers
        os.kill(workers[0].pid, signal.SIGKILL)
        observations = future.result(timeout=600)
    assert [o.size for o in observations] == list(SIZES)
    restarts = [o.extra["restarts"] for o in observations]
    assert restarts[0] == 0 and restarts[-1] == 1 and restarts == sorted(restarts), restarts
    assert all(o.extra["steps"] == 300 and math.isfinite(o.loss) for o in observations)


def test_missing_model_path(zoo_manifest, tmp_path):
    spec = make_spec(zoo_manifest, tmp_path, model=str(tmp_path / "nowhere" / "model"))
    with pytest.raises(ProbeError, match="model path .* does not exist") as err:
        run_probe(spec)
    assert err.value.candidate == spec.candidate and "Traceback" not in str(err.value)


def test_model_without_weights(zoo_manifest, tmp_path):
    path = _copy_model(zoo_manifest, tmp_path, drop=())
    (path / "model.safetensors").unlink()
    with pytest.raises(ProbeError, match="has no .safetensors weights"):
        run_probe(make_spec(zoo_manifest, tmp_path, model=str(path)))


@pytest.mark.slow
def test_corrupt_weights_fail_with_one_line(zoo_manifest, ray_local, tmp_path):
    path = _copy_model(zoo_manifest, tmp_path, drop=())
    (path / "model.safetensors").write_bytes(b"not a safetensors file")  # fails to load on the worker
    with pytest.raises(ProbeError) as err:
        run_probe(make_spec(zoo_manifest, tmp_path, model=str(path), data={"sizes": (8,)}))
    reason = err.value.reason
    assert reason.startswith(f"cannot load {str(path)!r} for fine-tuning: ") and "header" in reason
    assert "\n" not in reason and "Traceback" not in reason


def test_unreachable_hub_id(zoo_manifest, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine without the hub
    spec = make_spec(zoo_manifest, tmp_path, model="nobody-here/no-such-model")
    with pytest.raises(ProbeError, match="cannot load model 'nobody-here/no-such-model' as a hub id"):
        run_probe(spec)


def _copy_model(zoo_manifest, tmp_path: Path, drop: tuple[str, ...]) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(zoo_manifest["by_name"]["neox-copy-48"]["path"], dest)
    cfg_path = dest / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    for key in drop:
        tok_cfg.pop(key)
    cfg_path.write_text(json.dumps(tok_cfg))
    backend = json.loads((dest / "tokenizer.json").read_text())
    backend["padding"] = None  # the backend's padding block also names a pad token
    (dest / "tokenizer.json").write_text(json.dumps(backend))
    return dest


def test_remote_code_runs_only_for_a_candidate_that_opts_in(zoo_manifest, tmp_path, monkeypatch):
    """A model folder whose config names its own Python code (auto_map): without
    trust_remote_code the probe loads it with transformers' own classes and the code never
    runs; for a candidate that opts in, it runs."""
    import torch

    from lensray.probe.hf.loading import load_model

    path = _copy_model(zoo_manifest, tmp_path, drop=())
    marker = tmp_path / "remote-code-ran"
    monkeypatch.setenv("LENSRAY_TEST_MARKER", str(marker))
    (path / "custom_config.py").write_text(
        "import os\nfrom pathlib import Path\nfrom transformers import GPTNeoXConfig\n"
        "Path(os.environ['LENSRAY_TEST_MARKER']).write_text('ran')\n\n"
        "class CustomConfig(GPTNeoXConfig):\n    pass\n"
    )
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoConfig": "custom_config.CustomConfig"}}))
    spec = make_spec(zoo_manifest, tmp_path, model=str(path))
    assert spec.trust_remote_code is False  # the default
    load_tokenizer(spec)
    load_model(spec, torch)
    assert not marker.exists()
    load_tokenizer(ProbeSpec(candidate=spec.candidate, model=spec.model, data=spec.data, trust_remote_code=True))
    assert marker.read_text() == "ran"


def test_tokenizer_without_pad_uses_eos(zoo_manifest, tmp_path):
    path = _copy_model(zoo_manifest, tmp_path, drop=("pad_token",))
    tok = load_tokenizer(make_spec(zoo_manifest, tmp_path, model=str(path)))
    assert tok.pad_token == tok.eos_token == "</s>"


def test_every_zoo_model_gets_the_word_level_tokenizer_it_was_pretrained_with(zoo_manifest, tmp_path):
    from transformers import PreTrainedTokenizerFast

    zoo_tok = PreTrainedTokenizerFast.from_pretrained(zoo_manifest["tokenizer"])
    text = "translate : a b c"
    for m in zoo_manifest["models"]:  # qwen2's would otherwise be Qwen2Tokenizer, splitting into characters
        tok = load_tokenizer(make_spec(zoo_manifest, tmp_path, model=m["path"]))
        assert tok(text)["input_ids"] == zoo_tok(text)["input_ids"], m["name"]


def test_tokenizer_without_pad_or_eos_is_a_clear_error(zoo_manifest, tmp_path):
    path = _copy_model(zoo_manifest, tmp_path, drop=("pad_token", "eos_token"))
    with pytest.raises(ProbeError, match="has neither a pad nor an end .eos. token"):
        load_tokenizer(make_spec(zoo_manifest, tmp_path, model=str(path)))


def test_missing_data_field(zoo_manifest, tmp_path):
    spec = make_spec(zoo_manifest, tmp_path, data={"prompt_field": "question"})
    with pytest.raises(ProbeError, match=r"DataConfig.prompt_field='question'.*fields \['prompt', 'response'\]"):
        run_probe(spec)


def test_context_longer_than_the_model(zoo_manifest, tmp_path):
    spec = make_spec(zoo_manifest, tmp_path, data={"max_length": 512})
    with pytest.raises(ProbeError, match="max_length=512 exceeds the context .* \\(64 tokens\\)"):
        run_probe(spec)


def test_ntk_term_is_finite_and_model_specific(zoo_manifest, tmp_path):
    from transformers import AutoModelForCausalLM

    spec = make_spec(zoo_manifest, tmp_path)
    data = prepare_data(spec.data, load_tokenizer(spec))
    rows = list(zip(data.subset(8)["input_ids"], data.subset(8)["labels"]))
    stats = {}
    for name in ("llama-copy-96", "gpt2-format-48", "opt-text-160"):
        model = AutoModelForCausalLM.from_pretrained(zoo_manifest["by_name"][name]["path"])
        stats[name] = diag_ntk(model, rows)
        assert len(stats[name].theta) == 8 and all(t > 0 and math.isfinite(t) for t in stats[name].theta)
    terms = {name: ntk_term(s, eta=1e-3, t=10) for name, s in stats.items()}
    assert all(math.isfinite(f) and math.isfinite(log_f) for f, log_f in terms.values())
    assert len({round(log_f, 6) for _, log_f in terms.values()}) == 3
    s = stats["llama-copy-96"]
    assert ntk_term(s, eta=1e-3, t=0)[0] == pytest.approx(sum(r * r for r in s.residual) / len(s.residual))


def test_ntk_term_underflow_keeps_log_finite():
    stats = NTKStats(theta=(1e4, 2e4), residual=(3.0, 2.0))
    f, log_f = ntk_term(stats, eta=1.0, t=1e3)
    assert f == 0.0 and math.isfinite(log_f)
    assert log_f == pytest.approx(-2e7 + 2 * math.log(3.0) - math.log(2.0))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_cluster_deepspeed_templates_match_builtin(stage):
    cfg = ProbeConfig(micro_batch=4, grad_accum=2, lr=2e-4, precision="bf16", zero_stage=stage)
    path = REPO / "cluster" / "deepspeed" / f"zero{stage}.json"
    from_file = ProbeConfig(micro_batch=4, grad_accum=2, lr=2e-4, precision="bf16", deepspeed_config=str(path))
    assert from_file.deepspeed(2) == cfg.deepspeed(2)
    filled = cfg.deepspeed(2)
    assert filled["train_batch_size"] == 16 and filled["bf16"]["enabled"] is True
    assert filled["optimizer"]["params"]["lr"] == 2e-4 and filled["zero_optimization"]["stage"] == stage
    assert "auto" not in json.dumps(filled)


def test_offload_template_fills():
    template = json.loads((REPO / "cluster" / "deepspeed" / "zero2-offload.json").read_text())
    filled = fill_deepspeed_config(template, ProbeConfig(), 1)
    assert filled["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "auto" not in json.dumps(filled)
    with pytest.raises(ValueError, match="no value for \"auto\" at zero_optimization.stage"):
        fill_deepspeed_config({"zero_optimization": {"stage": "auto"}}, ProbeConfig(), 1)
    assert builtin_deepspeed_template(2)["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize(
    "field, value",
    [("backend", "vllm"), ("zero_stage", 3), ("precision", "fp16"), ("device", "tpu"), ("micro_batch", 0),
     ("lr", -1.0), ("diverge_factor", 1.0), ("max_rss_gb", -1.0), ("deepspeed_config", "/no/such.json")],
)
def test_probe_config_rejects_bad_field_naming_it(field, value):
    with pytest.raises(ValueError, match=f"ProbeConfig.{field}"):
        ProbeConfig(**{field: value})


@pytest.mark.parametrize("kw", [{"num_workers": 2}, {"device": "cuda"}])
def test_an_in_process_probe_is_one_cpu_rank(kw):
    with pytest.raises(ValueError, match="ProbeConfig.in_process needs one CPU worker"):
        ProbeConfig(in_process=True, **kw)


def test_spec_round_trips_through_a_tune_config(zoo_manifest, tmp_path):
    spec = make_spec(zoo_manifest, tmp_path, lora=True)
    assert ProbeSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="ProbeConfig: unknown field.*'learning_rate'"):
        ProbeSpec.from_dict({**spec.to_dict(), "probe": {"learning_rate": 1.0}})


@pytest.mark.slow
def test_bench_probe_breaks_a_probe_down_by_phase_on_a_hub_sized_model(zoo_dir, ray_local):
    """`lensray bench probe` on llama-tiny (the hub-sized code path, CPU-sized): every phase of the
    wall time is there and they add up to it; its long examples are `length` tokens each; no MFU
    without a GPU."""
    from lensray.bench.probe import bench_probe
    from lensray.probe.hf.worker import PHASES
    from lensray.zoo.hub_sized import HUB_SIZED

    out = bench_probe(zoo_dir, "llama-tiny", sizes=(16, 32), device="cpu", length=64, micro_batch=4)
    cfg = HUB_SIZED["llama-tiny"]
    layer = 4 * cfg["hidden_size"] ** 2 + 3 * cfg["hidden_size"] * cfg["intermediate_size"] + 2 * cfg["hidden_size"]
    assert out["n_params"] == 2 * cfg["vocab_size"] * cfg["hidden_size"] + cfg["num_hidden_layers"] * layer + cfg["hidden_size"]
    assert out["tokens"] == (16 + 32) * 64 and out["device"] == "cpu" and out["mfu"] is None and out["peak_gpu_gb"] is None
    assert set(out["phase_s"]) == {*PHASES, "other"} and out["phase_s"]["weights"] == out["phase_s"]["ntk"] == 0
    assert sum(out["phase_s"].values()) == pytest.approx(out["wall_s"], abs=0.05)
    assert 0 < out["fixed_share"] < 1 and out["phase_s"]["ray_train_start"] > 0
