"""Hub-sized models with random weights, built here from a transformers config (nothing is
downloaded), and long sequences to fine-tune them on: what `lensray bench probe --model
llama-1b` measures throughput and model FLOPs utilisation with at a realistic size.

    from lensray.zoo.hub_sized import build_hub_sized, long_examples_file
    model = build_hub_sized("llama-1b", Path("zoo"))         # zoo/hub-sized/llama-1b, built once
    data = long_examples_file(Path("zoo"), length=512)       # zoo/hub-sized/long-512.jsonl

`HUB_SIZED` holds the configs: `llama-1b` is a Llama of 0.95B parameters (the shape of
TinyLlama-1.1B with 16 layers), `llama-tiny` the same architecture and vocabulary small enough to
run the same code on a CPU. The tokenizer is the zoo's (lensray.zoo.build), saved beside each
model so it loads like a hub model; its ids are a small part of the 32,000-entry vocabulary,
which does not change the cost of a step. The weights are random: the figures are about speed
and memory, never about what a model learns. Folders are written beside their final name and
renamed into place, so an interrupted build leaves nothing half made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lensray.core.errors import ConfigError

HUB_SIZED: dict[str, dict[str, Any]] = {
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 16,
                 "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000,
                 "max_position_embeddings": 2048, "tie_word_embeddings": False},
    "llama-tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 32000,
                   "max_position_embeddings": 2048, "tie_word_embeddings": False},
}
"""LlamaConfig fields of each hub-sized model, by name."""

FOLDER = "hub-sized"
"""The folder under the zoo that holds them."""


def _tokenizer(zoo_dir: Path):
    from transformers import AutoTokenizer

    from lensray.zoo.build import build_zoo, load_manifest

    build_zoo(zoo_dir)
    return AutoTokenizer.from_pretrained(load_manifest(zoo_dir)["tokenizer"])


def build_hub_sized(name: str, zoo_dir: Path, seed: int = 0) -> Path:
    """The folder of hub-sized model `name` under `zoo_dir`, built (random weights, the zoo's
    tokenizer) on first use. A ConfigError names the known models for an unknown name."""
    if name not in HUB_SIZED:
        raise ConfigError(f"hub-sized model {name!r}: unknown; use one of {sorted(HUB_SIZED)}")
    out = zoo_dir / FOLDER / name
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer(zoo_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(**HUB_SIZED[name], pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    staging = out.with_name(out.name + ".partial")
    LlamaForCausalLM(config).save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    staging.rename(out)
    return out


def long_examples_file(zoo_dir: Path, length: int = 512, n: int = 2048, seed: int = 0) -> Path:
    """A JSONL file of `n` prompt/response rows of `length` tokens in all (half each), random
    words of the zoo's vocabulary, under `zoo_dir`/hub-sized (written once per length and n)."""
    path = zoo_dir / FOLDER / f"long-{length}-{n}.jsonl"
    if path.is_file():
        return path
    tokenizer = _tokenizer(zoo_dir)
    specials = set(tokenizer.all_special_tokens)
    words = sorted(w for w in tokenizer.get_vocab() if w not in specials and w.strip() == w and w)
    rng = np.random.default_rng(seed)
    half = max(1, (length - 2) // 2)  # room for the start and end tokens
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    with open(staging, "w", encoding="utf-8") as f:
        for _ in range(n):
            prompt, response = (" ".join(rng.choice(words, half)) for _ in range(2))
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    staging.rename(path)
    return path
