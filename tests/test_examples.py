"""The example configs in configs/ load and resolve to what their comments say.

    python -m pytest tests/test_examples.py -q

Offline and fast: the config is only validated, no model is loaded and no Ray is started.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lensray.config.load import config_from_dict, load_config

REPO = Path(__file__).resolve().parents[1]

HUB_IDS = ["Qwen/Qwen2.5-0.5B", "HuggingFaceTB/SmolLM2-360M", "EleutherAI/pythia-410m"]


def test_hub_gpu_config_resolves(tmp_path: Path) -> None:
    """configs/hub-gpu.yaml, copied next to a small data file as a user would, with its s3 output
    replaced by a local folder: hub ids are accepted as model paths (they are not local folders
    and must not be resolved against the config's folder), the data path is resolved, and the GPU
    settings are as written."""
    config = tmp_path / "hub-gpu.yaml"
    shutil.copy(REPO / "configs" / "hub-gpu.yaml", config)
    rows = [{"prompt": f"question {i} ?", "response": f"answer {i} ."} for i in range(3)]
    (tmp_path / "my-data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = yaml.safe_load(config.read_text())
    assert raw["output"].startswith("s3://")
    raw["output"] = str(tmp_path / "out")

    cfg = config_from_dict(raw, tmp_path)

    assert cfg.backend == "hf"
    assert [m.path for m in cfg.pool.models] == HUB_IDS
    assert len({m.name for m in cfg.pool.models}) == len(HUB_IDS)
    assert cfg.probe.precision == "bf16"
    assert cfg.probe.zero_stage == 2
    assert cfg.probe.lr == 2e-5
    assert cfg.resources.gpus_per_worker == 1
    assert cfg.resources.workers in (1, 2)
    assert cfg.scheduler.synchronous is False
    assert cfg.fit.method == "local"
    assert cfg.data.path == str(tmp_path / "my-data.jsonl")
    assert (cfg.data.prompt_field, cfg.data.response_field) == ("prompt", "response")
    sizes = [256 * 2**k for k in range(6)]  # 256 ... 8192, doubling
    assert cfg.plan.resolved_sizes() == sizes
    assert list(cfg.data.sizes) == sizes
    assert (cfg.plan.budget, cfg.plan.target) == (8192, 262144)
    assert cfg.output == str(tmp_path / "out")


def readme_block(start: str) -> str:
    """The text of the README's heredoc that opens with `start` (up to its EOF line)."""
    text = (REPO / "README.md").read_text()
    body = text[text.index(start) + len(start):]
    return body[: body.index("\nEOF\n")].lstrip("\n")


@pytest.mark.slow
def test_the_readme_laptop_quickstart_config_resolves_on_a_users_jsonl(tmp_path: Path, zoo_dir: Path) -> None:
    """The README's laptop quickstart, as a user follows it: the zoo in ./zoo, the config it
    writes, a JSONL file of their own with budget + eval_size rows; every model path is found
    in the zoo, the data file is checked, and the probes are those of the README."""
    (tmp_path / "zoo").symlink_to(zoo_dir)
    (tmp_path / "laptop.yaml").write_text(readme_block("cat > laptop.yaml <<'EOF'"))
    rows = [{"prompt": f"translate : a b c d {chr(97 + i % 16)} ->", "response": "b c d e f"} for i in range(384)]
    (tmp_path / "my.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(tmp_path / "laptop.yaml")
    assert cfg.backend == "hf" and cfg.data.path == str(tmp_path / "my.jsonl")
    for m in cfg.pool.models:
        assert Path(m.path) == (tmp_path / "zoo" / "models" / m.name).resolve() and (Path(m.path) / "config.json").is_file()
    assert cfg.plan.resolved_sizes() == [32, 64, 128, 256] and cfg.resources.gpus_per_worker == 0
