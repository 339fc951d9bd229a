"""The aggregation fine-tune: the selected model fine-tuned by the hf probe (transformers + DeepSpeed
through Ray Train, as every candidate was) on aggregation samples of training queries, so that it
learns to read numbered drafts and write the answer (AFT's training)::

    from lensray.stages.aggregate.tune import training_rows, tune_aggregator, write_samples
    rows = training_rows(data, tokenizer, 256 + EVAL_ROWS)      # (query, prompt, response, reference)
    write_samples(path, samples)                                 # prompt/response JSON lines
    observation = tune_aggregator(cfg, "llama-copy-96", weights, data, path, 256, 64, weights_out)

The samples are written as plain prompt/response data (the listing already rendered under the
candidate's design) and tuned under the candidate's template, so the aggregator reads a listing
as `lensray.stages.aggregate.propose.aggregate` encodes it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from lensray.data.dataset import DataConfig, prepare_data, source_samples
from lensray.data.design import RenderedSample

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig
    from lensray.core.types import Observation

EVAL_ROWS = 16
"""Samples the tuning probe holds out for its held-out loss (the file has n + EVAL_ROWS)."""


def training_rows(data: DataConfig, tokenizer, n: int) -> list[tuple[str, str, str, str]]:
    """(query, prompt, response, reference) of the first `n` rows of `data`'s training pool (its
    nested subsets' order; never a held-out row of the sweep)."""
    prepared = prepare_data(replace(data, sizes=(n,)), tokenizer)
    return source_samples(data, list(prepared.subset(n)["row"]))


def write_samples(path: Path, samples: list[RenderedSample]) -> Path:
    """The samples as {"prompt", "response"} JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": s.prompt, "response": s.response}) + "\n" for s in samples))
    return path


def tune_aggregator(cfg: SelectConfig, name: str, model: str, data: DataConfig, samples: Path, n: int,
                    max_length: int, weights: str) -> Observation:
    """Fine-tune candidate `name` (from `model`: its probe's weights, or the pretrained model) on the
    first `n` samples of the file `samples` with its probe's recipe and resources, keeping the
    tuned weights at `weights`; returns the probe's Observation (its loss on EVAL_ROWS samples of
    the file it held out, tokens and FLOPs)."""
    from lensray.probe.hf.backend import BACKEND
    from lensray.probe.hf.driver import run_probe

    spec = BACKEND.spec(cfg, cfg.candidate(name), [n], "aggregator")
    tuned_data = DataConfig(
        path=str(samples), template=data.template, prompt_format=data.prompt_format,
        response_format=data.response_format, system_prompt=data.system_prompt, max_length=max_length,
        overflow="truncate", eval_size=EVAL_ROWS, sizes=(n,), seed=cfg.seed, cache_dir=data.cache_dir,
    )
    # A run of its own per samples file and size: Ray Train resumes a run of the same name from its
    # checkpoint, which must not be another fine-tune's.
    digest = hashlib.sha256(samples.read_bytes() + str(n).encode()).hexdigest()[:12]
    probe = replace(spec.probe, metric="loss", ntk_examples=0, weights_path=weights, run_name=f"aggregator-{name}-{digest}")
    return run_probe(replace(spec, candidate=f"{name}.aggregator", model=model, data=tuned_data, probe=probe))[-1]
