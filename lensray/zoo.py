"""The offline candidate zoo: tiny causal LMs pretrained here, and a task to rank them on.

No model or data set can be downloaded on a laptop without internet or in CI, so lensray builds
its own Pool of Candidates: eight small causal LMs over six transformers architectures (GPT-2,
Llama, Qwen2, GPT-NeoX, OPT, Mistral), from ~25k to ~1.2M parameters, each pretrained here for
its own number of steps on its own synthetic corpus, sharing one word-level tokenizer trained
here. Each is saved with `save_pretrained` (safetensors) next to the tokenizer, so
`AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)` load it
exactly as they would a hub model.

Run it::

    lensray zoo build --out zoo/          # ~1-2 minutes on 2 CPU cores, then a cached no-op
    python -c "from pathlib import Path; from lensray.zoo import build_zoo; build_zoo(Path('zoo'))"

Layout of the output directory::

    manifest.json           config hash, seed, and per model: name, path (relative to the
                            manifest), architecture, n_params, pretrain_steps, corpus, final loss
    tokenizer/              the shared tokenizer (also copied into every model directory)
    task.jsonl              the built-in fine-tuning task, {"prompt": ..., "response": ...}
    models/<name>/          config.json, model.safetensors, tokenizer files

The task ("cipher"): a prompt ``translate : x1 x2 x3 x4 x5 ->`` over 16 symbols ``a..p``, and
the response ``s(x1) ... s(x5)`` for one fixed secret permutation ``s`` without fixed points.
The corpora are designed so that the three rankings a selector can use disagree:

- ``copy`` corpus: the task's exact format with the identity map (response = prompt). Models
  pretrained on it have the position-to-position alignment the task needs, but zero-shot they
  confidently copy, so their zero-shot loss is the *worst*; a small fine-tune only has to learn
  the 16-symbol substitution on top, so their fine-tuned loss is the *best*.
- ``format`` corpus: the task's format with random responses. Zero-shot these are the *best*
  (uniform over the right 16 symbols, the right length, the end token), but they must learn
  the alignment from the fine-tuning data.
- ``text`` corpus: sentences from a small grammar that mentions the symbols as names. These
  know neither the format nor the alignment; the largest model of the zoo is one of them, so
  the size ranking is wrong too.
- ``mix``: a third of each.

A fine-tune on D examples for a fixed number of epochs takes D / batch steps, so at small D a
model barely moves from its pretrained loss (the pre-power phase) and then its loss falls as
a power of D once the steps suffice to learn the substitution (the power phase).

Everything is deterministic given the seed; the build is skipped when `manifest.json` holds
the same config hash, unless `force`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SYMBOLS = tuple("abcdefghijklmnop")
"""The task's alphabet: 16 one-character symbols, each one token."""
PROMPT_LEN = 5
"""Symbols per task prompt (fixed, so the prompt-to-response alignment is a fixed offset)."""
TASK_SIZE = 4096
"""Examples in the built-in task.jsonl (held-out split and nested subsets are drawn from it)."""
CONTEXT = 64
"""max_position_embeddings of every zoo model; task examples are 15 tokens long."""
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}assistant : {{ m['content'] }} </s> "
    "{% else %}{{ m['role'] }} : {{ m['content'] }} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)
"""A minimal chat template (roles as words), so the `chat` sample template works on zoo models."""

_NOUNS = ("cat", "dog", "bird", "fox", "owl", "cow", "ant", "bee")
_VERBS = ("sees", "likes", "finds", "follows", "helps", "greets")
_ADJS = ("big", "small", "red", "old", "quick", "lazy")


@dataclass(frozen=True)
class ZooModel:
    """One zoo candidate: its architecture, shape, pretraining corpus and budget."""

    name: str
    """Directory and candidate name, e.g. ``llama-copy-96``."""
    architecture: str
    """transformers model_type: gpt2, llama, qwen2, gpt_neox, opt or mistral."""
    hidden: int
    """Hidden size d."""
    layers: int
    """Number of transformer blocks."""
    heads: int
    """Attention heads (d must divide by it)."""
    corpus: str
    """Pretraining corpus: copy, format, text or mix (see the module docstring)."""
    steps: int
    """Pretraining optimizer steps (batch 32)."""


ZOO: tuple[ZooModel, ...] = (
    ZooModel("llama-text-32", "llama", 32, 2, 2, "text", 300),
    ZooModel("neox-copy-48", "gpt_neox", 48, 2, 4, "copy", 700),
    ZooModel("gpt2-format-48", "gpt2", 48, 2, 4, "format", 900),
    ZooModel("llama-copy-96", "llama", 96, 3, 4, "copy", 500),
    ZooModel("qwen2-format-96", "qwen2", 96, 3, 4, "format", 600),
    ZooModel("mistral-text-96", "mistral", 96, 3, 4, "text", 800),
    ZooModel("gpt2-mix-128", "gpt2", 128, 3, 4, "mix", 450),
    ZooModel("opt-text-160", "opt", 160, 4, 4, "text", 350),
)
"""The pool: 8 models, 6 architectures, ~25k-1.2M parameters, 300-900 pretraining steps."""

_BATCH = 32
_LR = 3e-3
_BUILD_VERSION = 2
"""Bump when the generators or the training recipe change, so cached zoos are rebuilt."""


def _cipher(seed: int) -> dict[str, str]:
    """The task's secret permutation of SYMBOLS, with no fixed point (so copying is wrong)."""
    rng = np.random.default_rng([seed, 7])
    while True:
        perm = rng.permutation(len(SYMBOLS))
        if not np.any(perm == np.arange(len(SYMBOLS))):
            return {SYMBOLS[i]: SYMBOLS[j] for i, j in enumerate(perm)}


def _symbols(rng: np.random.Generator, n: int = PROMPT_LEN) -> list[str]:
    return [SYMBOLS[i] for i in rng.integers(0, len(SYMBOLS), n)]


def _task_prompt(xs: list[str]) -> str:
    return "translate : " + " ".join(xs) + " ->"


def task_examples(n: int, seed: int) -> list[dict[str, str]]:
    """`n` examples of the cipher task as {"prompt", "response"} (deterministic in `seed`)."""
    rng = np.random.default_rng([seed, 1])
    cipher = _cipher(seed)
    out = []
    for _ in range(n):
        xs = _symbols(rng)
        out.append({"prompt": _task_prompt(xs), "response": " ".join(cipher[x] for x in xs)})
    return out


def _text_doc(rng: np.random.Generator) -> str:
    def noun_phrase() -> str:
        words = ["the"]
        if rng.random() < 0.5:
            words.append(_ADJS[rng.integers(len(_ADJS))])
        words.append(_NOUNS[rng.integers(len(_NOUNS))])
        if rng.random() < 0.4:
            words += ["named"] + _symbols(rng, int(rng.integers(1, 4)))
        return " ".join(words)

    sentence = f"{noun_phrase()} {_VERBS[rng.integers(len(_VERBS))]} {noun_phrase()}"
    if rng.random() < 0.3:
        sentence += f" and {_VERBS[rng.integers(len(_VERBS))]} {noun_phrase()}"
    return sentence + " ."


def _corpus_doc(corpus: str, rng: np.random.Generator) -> str:
    """One pretraining document of the named corpus (see the module docstring)."""
    if corpus == "mix":
        corpus = ("copy", "format", "text")[rng.integers(3)]
    elif corpus in ("copy", "format") and rng.random() < 0.3:
        corpus = "text"
    if corpus == "text":
        return _text_doc(rng)
    xs = _symbols(rng)
    ys = xs if corpus == "copy" else _symbols(rng)
    return _task_prompt(xs) + " " + " ".join(ys)


def build_tokenizer(seed: int = 0):
    """Train the shared word-level tokenizer on samples of every corpus and the task."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng([seed, 2])
    docs = [_corpus_doc(c, rng) for c in ("copy", "format", "text") for _ in range(2000)]
    docs += [ex["prompt"] + " " + ex["response"] for ex in task_examples(200, seed)]
    docs.append("system user assistant :")  # the chat template's words
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(docs, trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=CONTEXT,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _model_config(spec: ZooModel, tokenizer) -> Any:
    """The transformers config of one zoo model (ids of pad/bos/eos from the tokenizer)."""
    import transformers as tf

    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    d, n_layer, n_head = spec.hidden, spec.layers, spec.heads
    if spec.architecture == "gpt2":
        return tf.GPT2Config(n_embd=d, n_layer=n_layer, n_head=n_head, n_positions=CONTEXT, **ids)
    if spec.architecture == "opt":
        return tf.OPTConfig(
            hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=n_head,
            ffn_dim=4 * d, word_embed_proj_dim=d, max_position_embeddings=CONTEXT, **ids,
        )
    if spec.architecture == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=n_head,
            intermediate_size=4 * d, max_position_embeddings=CONTEXT, **ids,
        )
    common = dict(
        hidden_size=d, num_hidden_layers=n_layer, num_attention_heads=n_head,
        num_key_value_heads=n_head, intermediate_size=2 * d, max_position_embeddings=CONTEXT,
        tie_word_embeddings=True, **ids,
    )
    if spec.architecture == "llama":
        return tf.LlamaConfig(**common)
    if spec.architecture == "qwen2":
        return tf.Qwen2Config(**common)
    if spec.architecture == "mistral":
        return tf.MistralConfig(sliding_window=None, **common)
    raise ValueError(f"ZooModel {spec.name!r}: unknown architecture {spec.architecture!r}")


def _pretrain(spec: ZooModel, tokenizer, seed: int) -> tuple[Any, float]:
    """Pretrain one model from scratch on its corpus; returns (model, mean loss of last 50 steps)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_model_config(spec, tokenizer))
    rng = np.random.default_rng([seed, 3])
    opt = torch.optim.AdamW(model.parameters(), lr=_LR, weight_decay=0.01)
    # Linear warm-up over 5% of the steps, then linear decay to 10% of the peak.
    warm = max(1, spec.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 1.0 - 0.9 * max(0, s - warm) / max(1, spec.steps - warm))
    )
    model.train()
    losses = []
    for _ in range(spec.steps):
        docs = [_corpus_doc(spec.corpus, rng) + " </s>" for _ in range(_BATCH)]
        batch = tokenizer(docs, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return model, float(np.mean(losses[-50:]))


def _config_hash(seed: int) -> str:
    blob = json.dumps(
        {
            "version": _BUILD_VERSION,
            "seed": seed,
            "zoo": [asdict(m) for m in ZOO],
            "task_size": TASK_SIZE,
            "batch": _BATCH,
            "lr": _LR,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_manifest(zoo_dir: Path) -> dict[str, Any]:
    """Read `zoo_dir/manifest.json`, with every model's path made absolute.

    Raises FileNotFoundError naming the command that builds the zoo when there is none.
    """
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no zoo at {zoo_dir}: build it with `lensray zoo build --out {zoo_dir}`")
    manifest = json.loads(path.read_text())
    for entry in manifest["models"]:
        entry["path"] = str((zoo_dir / entry["path"]).resolve())
    manifest["task"] = str((zoo_dir / manifest["task"]).resolve())
    manifest["tokenizer"] = str((zoo_dir / manifest["tokenizer"]).resolve())
    return manifest


def _build_model(index: int, out_dir: str, seed: int) -> dict[str, Any]:
    """Pretrain and save ZOO[index] into out_dir/models (runs in a worker process)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = ZOO[index]
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(out_dir) / "tokenizer")
    model, final_loss = _pretrain(spec, tokenizer, seed * 1000 + index)
    path = Path(out_dir) / "models" / spec.name
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return {
        "name": spec.name,
        "path": str(path.relative_to(out_dir)),
        "architecture": spec.architecture,
        "n_params": sum(p.numel() for p in model.parameters()),
        "pretrain_steps": spec.steps,
        "corpus": spec.corpus,
        "hidden": spec.hidden,
        "layers": spec.layers,
        "pretrain_loss": round(final_loss, 4),
        "build_s": time.perf_counter() - start,
    }


def build_zoo(out_dir: Path, seed: int = 0, force: bool = False) -> Path:
    """Build the zoo into `out_dir` (see the module docstring) and return its manifest path.

    A no-op when `out_dir/manifest.json` already holds this build's config hash, unless
    `force`. Prints one progress line per model. Deterministic in `seed`.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    config_hash = _config_hash(seed)
    if manifest_path.is_file() and not force:
        if json.loads(manifest_path.read_text()).get("config_hash") == config_hash:
            print(f"zoo: {out_dir} is up to date (config {config_hash}); use force to rebuild")
            return manifest_path
    start = time.perf_counter()
    models_dir = out_dir / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)  # a half-built zoo must not look complete

    tokenizer = build_tokenizer(seed)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    with open(out_dir / "task.jsonl", "w") as f:
        for ex in task_examples(TASK_SIZE, seed):
            f.write(json.dumps(ex) + "\n")
    print(f"zoo: tokenizer ({len(tokenizer)} tokens) and task.jsonl ({TASK_SIZE} examples) written")

    # Tiny models: one thread per model is ~10x faster per step than two threads on one model,
    # so the models are pretrained in parallel processes, one thread each (order-independent:
    # every model has its own seed).
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    procs = max(1, min(len(ZOO), os.cpu_count() or 1))
    entries: list[dict[str, Any] | None] = [None] * len(ZOO)
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Longest first (cost ~ d^2 x layers x steps), so the two processes finish together.
        order = sorted(range(len(ZOO)), key=lambda i: -ZOO[i].hidden ** 2 * ZOO[i].layers * ZOO[i].steps)
        jobs = {pool.submit(_build_model, i, str(out_dir), seed): i for i in order}
        for done, job in enumerate(as_completed(jobs), 1):
            entry = job.result()
            entries[jobs[job]] = entry
            print(
                f"zoo: [{done}/{len(ZOO)}] {entry['name']:16s} {entry['architecture']:9s} "
                f"{entry['n_params'] / 1e3:7.1f}k params  {entry['pretrain_steps']:4d} steps on "
                f"{entry['corpus']:6s} loss {entry['pretrain_loss']:.3f}  ({entry.pop('build_s'):.1f}s)",
                flush=True,
            )
    manifest = {
        "config_hash": config_hash,
        "seed": seed,
        "tokenizer": "tokenizer",
        "task": "task.jsonl",
        "task_fields": {"prompt": "prompt", "response": "response"},
        "build_s": round(time.perf_counter() - start, 1),
        "models": entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"zoo: {len(ZOO)} models built in {manifest['build_s']}s -> {manifest_path}")
    return manifest_path
