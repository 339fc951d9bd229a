"""The offline candidate zoo: tiny causal LMs pretrained here, and a task to rank them on.

No model or data set can be downloaded on a laptop without internet or in CI, so lensray builds
its own Pool of Candidates: eight small causal LMs over six transformers architectures (GPT-2,
Llama, Qwen2, GPT-NeoX, OPT, Mistral), from ~25k to ~1.2M parameters, each pretrained here for
its own number of steps on its own synthetic corpus, sharing one word-level tokenizer trained
here. Each is saved with `save_pretrained` (safetensors) next to the tokenizer, so
`AutoModelForCausalLM.from_pretrained(path)` loads it exactly as it would a hub model, and the
tokenizer with `PreTrainedTokenizerFast.from_pretrained(path)` (lensray's probes do: transformers'
AutoTokenizer gives the qwen2 model Qwen2Tokenizer, which splits the word-level vocabulary into
characters).

Run it::

    lensray zoo build --out zoo/          # ~1-2 minutes on 2 CPU cores, then a cached no-op
    python -c "from pathlib import Path; from lensray.zoo.build import build_zoo; build_zoo(Path('zoo'))"

Layout of the output directory (a new or empty folder, or a zoo: nothing else is written over)::

    .lensray                what made the folder (`lensray zoo build`): the zoo may be rebuilt there
    manifest.json           config hash, seed, the task and aspect files and the aspect
                            schema, and per model: name, path (relative to the manifest),
                            architecture, n_params, pretrain_steps, corpus, final loss, and
                            aspect_loss (text and mix models; null for the others)
    tokenizer/              the shared tokenizer (also copied into every model directory)
    task.jsonl              the built-in fine-tuning task, {"prompt": ..., "response": ...}
    aspects.jsonl           the built-in multi-aspect task, {"text", "targets", "evidence"}
                            records (lensray.data.design), with ``aspect_schema`` in the manifest
    mixed.jsonl             the built-in mixed task (cipher and aspects), {"prompt", "response"}
    models/<name>/          config.json, model.safetensors, tokenizer files
    lineages/               models derived from these, with a known family tree
                            (lensray.zoo.lineages; `lensray zoo build` builds them after the zoo)

The task ("cipher"): a prompt ``<kind> : x1 x2 x3 x4 x5 ->`` over 16 symbols ``a..p`` and one
fixed secret permutation ``s`` without fixed points, in two sub-tasks (`TASK_KINDS`):
``translate`` (2/3 of the examples) is answered by ``s(x1) ... s(x5)`` and ``reverse`` (1/3) by
``s(x5) ... s(x1)``. Curves flatten at different floors, as real ones do:

- an entropy floor for every model: each response symbol is drawn at random instead with
  probability `NOISE` = 0.1, so no held-out loss goes below `entropy_floor()` = 0.471 nats a
  response token (the probe's loss: 5 symbols and the end token);
- a floor that depends on the model: `reverse` is the same substitution behind the mirrored
  alignment, which the fine-tuning data teach slowly, so a model that brings no mirrored
  alignment from pretraining (or does not find it) stays near chance on a third of the
  examples and its curve flattens near 1.1 instead (2/3 x ~0.5 + 1/3 x ~2; in the recording
  below, the `llama-copy-96` of an earlier build, which learned `translate` only, went from 1.14
  at 512 examples to 1.07 at T, while `neox-copy-48` learns both and ends at 0.49).

The corpora are designed so that the three rankings a selector can use disagree:

- ``copy`` corpus: the task's exact format with the identity map (response = the prompt's
  symbols, mirrored under ``reverse``). Models pretrained on it have the alignments the task
  needs, but zero-shot they confidently copy, so their zero-shot loss is more than twice the
  best; a fine-tune only has to learn the 16-symbol substitution on top, so they learn first
  and the best model at T is one of them.
- ``format`` corpus: the task's format with random responses. Zero-shot these are the *best*
  (uniform over the right 16 symbols, the right length, the end token), but they must learn
  the alignment from the fine-tuning data and do not by T: they stay at 5/6 ln 16 = 2.31.
- ``text`` corpus: sentences from a small grammar that mentions the symbols as names. These
  know neither the format nor the alignments and learn them late; the largest model of the zoo
  is one of them, so the size ranking is wrong too.
- ``mix``: a third of each (`gpt2-mix-128` learns neither sub-task by T on seed 0).

A fine-tune on D examples for a fixed number of epochs takes D / batch steps, so at small D a
model barely moves from its pretrained loss (the pre-power phase), then its loss falls as a
power of D once the steps suffice to learn the substitution (the power phase), and flattens at
its floor. Each model's curve, recorded with `lensray record` (every size from 32 to T =
3,840), is in lensray/resources/curves/recorded/zoo-cipher.csv; its README.md gives the
command, the machine, the build it was recorded on and the losses at T (0.49 to 2.32, the
figures above).

The aspect task (`aspect_examples`, `ASPECT_SCHEMA`) serves sample-design selection: short
restaurant reviews whose food / service / price sentiment is written as a fine-tuning sample
under a `lensray.design.SampleDesign` (``DataConfig(path=manifest["aspects"], design=...,
schema=...)``). The tokenizer covers every word of every design's rendering (one token each,
``\\n`` included, at most 61 tokens a sample with <s> and </s>, so all fit CONTEXT), and the
``text`` and ``mix`` models see it in pretraining: every `_ASPECT_EVERY`-th step of theirs is
a batch of `_ASPECT_BATCH` aspect samples, each rendered under a random design, drawn from a
stream of reviews apart from aspects.jsonl's. The ``copy`` and ``format`` models never see it
(their aspect embeddings stay untrained), so the model that is best on the cipher need not be
best on the aspects.

The mixed task (`mixed_examples`, `zoo:mixed`) serves routing (lensray.stages.route): half
cipher examples, half aspect reviews written as plain prompt and response under the ``es-sde``
design, shuffled. The ``copy`` models learn the cipher from a few hundred examples; the base
models' head start on the reviews is too small to make them right on the other half at those
sizes, so the routing demo's reviews finalist is a specialist of lensray.zoo.lineages
(``mistral-text-96.reviews``, whose pretraining is continued on reviews alone), which answers
reviews and learns the cipher late. A router that tells the halves apart then beats every single
finalist. The task is derived from the two other tasks' generators and no model is trained on
it, so it is not part of the config hash: a zoo built before it gains the file on its next build
call.

Everything is deterministic given the seed on one machine and software stack (two builds here
give the same weights); another machine or library version can train slightly different models,
as CPU kernels' floating-point results differ, so figures measured on the zoo move a little
between machines. The build is skipped when `manifest.json` holds the same config hash, unless
`force`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lensray.data.design import DESIGN_OPTIONS, PRESETS, SampleDesign, TargetSchema, render

SYMBOLS = tuple("abcdefghijklmnop")
"""The task's alphabet: 16 one-character symbols, each one token."""
PROMPT_LEN = 5
"""Symbols per task prompt (fixed, so the prompt-to-response alignment is a fixed offset)."""
TASK_KINDS = {"translate": 2 / 3, "reverse": 1 / 3}
"""The cipher task's two sub-tasks, named by the prompt's first word, and their shares of the
examples: `translate` writes the cipher of each symbol in order, `reverse` in reverse order."""
NOISE = 0.1
"""Share of the task's response symbols drawn uniformly at random instead of by the cipher: the
irreducible part of the loss (`entropy_floor`)."""
TASK_SIZE = 4096
"""Examples in the built-in task.jsonl (held-out split and nested subsets are drawn from it)."""
CONTEXT = 64
"""max_position_embeddings of every zoo model; task examples are 15 tokens long, aspect samples
at most 61 (the longest design: instruction first, sentence answer after the reasoning)."""
ASPECT_SIZE = 4096
"""Records in the built-in aspects.jsonl."""
MIXED_SIZE = 4096
"""Examples in the built-in mixed.jsonl (half of each task)."""
TASK_FILES = {"task": "task.jsonl", "aspects": "aspects.jsonl", "mixed": "mixed.jsonl"}
"""The zoo's tasks (a config's ``data.path: zoo:<name>``) and their files in the zoo's folder."""
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
    lr: float = 3e-3
    """Peak pretraining learning rate (`_pretrain`'s schedule)."""


ZOO: tuple[ZooModel, ...] = (
    ZooModel("llama-text-32", "llama", 32, 2, 2, "text", 300),
    ZooModel("neox-copy-48", "gpt_neox", 48, 2, 4, "copy", 700),
    ZooModel("gpt2-format-48", "gpt2", 48, 2, 4, "format", 900),
    ZooModel("llama-copy-96", "llama", 96, 3, 4, "copy", 850, lr=1e-3),
    ZooModel("qwen2-format-96", "qwen2", 96, 3, 4, "format", 600),
    ZooModel("mistral-text-96", "mistral", 96, 3, 4, "text", 800),
    ZooModel("gpt2-mix-128", "gpt2", 128, 3, 4, "mix", 450),
    ZooModel("opt-text-160", "opt", 160, 4, 4, "text", 350),
)
"""The pool: 8 models, 6 architectures, ~25k-1.2M parameters, 300-900 pretraining steps.

llama-copy-96 trains at a third of the others' rate. At theirs, whether it learns to copy at all
depends on the draw, and so on the CPU the zoo is built on: of four seeds, two stayed at 1.95
nats on the copy corpus after 500, 1,000 and 1,500 steps. At 1e-3 for 850 steps, all of eight
seeds learn it (1.23-1.29 nats), and test_zoo's fine-tune on 256 examples takes them to 0.57-1.20,
below that test's bound of 1.73."""

_BATCH = 32
_ASPECT_EVERY = 4
"""Every 4th pretraining step of a text or mix model is a batch of aspect samples instead ..."""
_ASPECT_BATCH = 8
"""... of 8 of them: ~50 tokens wide vs ~20 for the 32 documents of a normal step, so an aspect
step costs less than a normal one (measured: 0.05 s vs 0.09 s for opt-text-160 on one thread)
and the build time does not grow."""
_BUILD_VERSION = 4
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


def _task_prompt(kind: str, xs: list[str]) -> str:
    return f"{kind} : " + " ".join(xs) + " ->"


def _kind(rng: np.random.Generator) -> str:
    """A sub-task of TASK_KINDS, drawn by its share."""
    kinds = list(TASK_KINDS)
    return kinds[rng.choice(len(kinds), p=list(TASK_KINDS.values()))]


def _answer(kind: str, xs: list[str], cipher: dict[str, str]) -> list[str]:
    """The response symbols of sub-task `kind` for prompt symbols `xs` under `cipher` (noise-free)."""
    return [cipher[x] for x in (xs if kind == "translate" else xs[::-1])]


def task_examples(n: int, seed: int) -> list[dict[str, str]]:
    """`n` examples of the cipher task as {"prompt", "response"} (deterministic in `seed`): the
    sub-task drawn by its share (TASK_KINDS), then each response symbol replaced by a uniformly
    random one with probability NOISE."""
    rng = np.random.default_rng([seed, 1])
    cipher = _cipher(seed)
    out = []
    for _ in range(n):
        kind = _kind(rng)
        xs = _symbols(rng)
        noisy, random = rng.random(PROMPT_LEN) < NOISE, _symbols(rng)
        ys = [r if z else y for y, z, r in zip(_answer(kind, xs, cipher), noisy, random)]
        out.append({"prompt": _task_prompt(kind, xs), "response": " ".join(ys)})
    return out


def mixed_examples(n: int, seed: int) -> list[dict[str, str]]:
    """`n` examples of the mixed task as {"prompt", "response"} (deterministic in `seed`): the
    first n - n // 2 examples of `task_examples` and the first n // 2 reviews of
    `aspect_examples`, each rendered under the ``es-sde`` design (its prompt and response as
    plain text), in a seeded random order."""
    reviews = [render(r, PRESETS["es-sde"], ASPECT_SCHEMA) for r in aspect_examples(n // 2, seed)]
    rows = task_examples(n - n // 2, seed) + [{"prompt": r.prompt, "response": r.response} for r in reviews]
    order = np.random.default_rng([seed, 31]).permutation(len(rows))
    return [rows[i] for i in order]


def _write_records(path: Path, records: list[dict]) -> None:
    """One JSON record per line."""
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def entropy_floor(noise: float = NOISE) -> float:
    """The lowest held-out loss any model can reach on the cipher task: the mean cross-entropy
    (nats) over the response tokens the probe scores (PROMPT_LEN symbols and the end token) of
    the best possible predictor, which gives the cipher's symbol 1 - noise + noise/16 and every
    other symbol noise/16 (and the end token 1)."""
    right, other = 1 - noise + noise / len(SYMBOLS), noise / len(SYMBOLS)
    per_symbol = -(right * np.log(right) + (len(SYMBOLS) - 1) * (other * np.log(other) if other else 0.0))
    return max(0.0, float(PROMPT_LEN * per_symbol / (PROMPT_LEN + 1)))


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
    """One pretraining document of the named corpus (see the module docstring; ``reviews``, which
    no base zoo model is pretrained on, is one aspect review written under the ``es-sde`` design:
    the corpus of lensray.zoo.lineages' specialists)."""
    if corpus == "reviews":
        return _aspect_doc(aspect_examples(1, int(rng.integers(2**32)))[0], PRESETS["es-sde"])
    if corpus == "mix":
        corpus = ("copy", "format", "text")[rng.integers(3)]
    elif corpus in ("copy", "format") and rng.random() < 0.3:
        corpus = "text"
    if corpus == "text":
        return _text_doc(rng)
    kind = _kind(rng)
    xs = _symbols(rng)
    ys = _answer(kind, xs, {x: x for x in SYMBOLS}) if corpus == "copy" else _symbols(rng)
    return _task_prompt(kind, xs) + " " + " ".join(ys)


def all_designs() -> list[SampleDesign]:
    """Every sample design: the product of `lensray.design.DESIGN_OPTIONS` (216 designs)."""
    return [SampleDesign(**dict(zip(DESIGN_OPTIONS, values))) for values in itertools.product(*DESIGN_OPTIONS.values())]


def _aspect_words() -> str:
    """Every word `aspect_examples` can write, so the tokenizer covers reviews it never saw."""
    phrases = [*(n for nouns in _ASPECT_NOUNS.values() for n in nouns), *(w for ws in _ASPECT_WORDS.values() for w in ws),
               *(w for ws in _ASPECT_OWN_WORDS.values() for w in ws), *_ASPECT_TEMPLATES, "the and but , . were"]
    return " ".join(phrases).replace("{noun}", "").replace("{word}", "")


def _aspect_doc(record: dict, design: SampleDesign) -> str:
    """An aspect record written as one document: its prompt, then its response, under `design`."""
    sample = render(record, design, ASPECT_SCHEMA)
    return f"{sample.prompt} {sample.response}"


def _pre_tokenizer():
    """Words are split on spaces and tabs (removed) and on newlines, each newline one token (the
    line separator of the `lines` designs)."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r"[^\S\n]+"), "removed"), pre_tokenizers.Split("\n", "isolated")]
    )


def build_tokenizer(seed: int = 0):
    """Train the shared word-level tokenizer on samples of every corpus, the cipher task and the
    aspect task rendered under every design.

    The words of the corpora and the cipher task get the ids they had before the aspect task
    existed (trained alone, most frequent first); the aspect words, the newline among them,
    follow, most frequent first. `decode` joins tokens with single spaces.
    """
    return _build_tokenizer(seed)[0]


def _build_tokenizer(seed: int) -> tuple[Any, int]:
    """(the tokenizer of `build_tokenizer`, the number of ids before the aspect words)."""
    from collections import Counter

    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = np.random.default_rng([seed, 2])
    docs = [_corpus_doc(c, rng) for c in ("copy", "format", "text") for _ in range(2000)]
    docs += [ex["prompt"] + " " + ex["response"] for ex in task_examples(200, seed)]
    docs.append("system user assistant :")  # the chat template's words
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.train_from_iterator(docs, trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    records = aspect_examples(64, seed)
    aspect_docs = [_aspect_words()] + [
        _aspect_doc(r, d) for d in all_designs() if d.input_loss == "off" for r in records  # same text either way
    ]
    vocab = tok.get_vocab()
    n_base = len(vocab)
    new = Counter(w for doc in aspect_docs for w, _ in tok.pre_tokenizer.pre_tokenize_str(doc) if w not in vocab)
    for word, _ in sorted(new.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab[word] = len(vocab)
    tok.model = models.WordLevel(vocab, unk_token="<unk>")
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
        clean_up_tokenization_spaces=False,  # keep `good ,` as two words: parsers read words
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast, n_base


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


def _pretrain(
    spec: ZooModel, tokenizer, seed: int, n_base: int | None = None, init: Any = None, lr: float | None = None
) -> tuple[Any, float, float | None]:
    """Pretrain one model from scratch on its corpus (or continue pretraining `init`, a model of
    `spec`'s shape, on it: lensray.zoo.lineages), at peak learning rate `lr` (`spec.lr` when
    None); returns (model, mean loss of its last 50 corpus steps, mean loss of its last 10
    aspect steps or None for copy/format models).

    The model is initialised with the first `n_base` ids only (the words before the aspect
    task), then its embeddings are grown to the whole vocabulary, so adding words leaves every
    initial weight as it was: the copy and format models start where they did before the aspect
    task (their fine-tuning curves on the cipher depend on that draw). Text and mix models spend
    every `_ASPECT_EVERY`-th step on `_ASPECT_BATCH` aspect samples (reviews of seed
    10**6 + `seed`, never aspects.jsonl's stream, each under a random design).
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if init is None:
        config = _model_config(spec, tokenizer)
        config.vocab_size = n_base or len(tokenizer)
        model = AutoModelForCausalLM.from_config(config)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # new rows: the model's own init
    else:
        model = init
    rng = np.random.default_rng([seed, 3])
    aspect_rng = np.random.default_rng([seed, 4])
    n_aspect_steps = spec.steps // _ASPECT_EVERY if spec.corpus in ("text", "mix") else 0
    records = aspect_examples(n_aspect_steps * _ASPECT_BATCH, 10**6 + seed)
    designs = all_designs()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr if lr is None else lr, weight_decay=0.01)
    # Linear warm-up over 5% of the steps, then linear decay to 10% of the peak.
    warm = max(1, spec.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 1.0 - 0.9 * max(0, s - warm) / max(1, spec.steps - warm))
    )
    model.train()
    losses, aspect_losses = [], []
    for step in range(spec.steps):
        aspect_step = step % _ASPECT_EVERY == _ASPECT_EVERY - 1 and len(aspect_losses) < n_aspect_steps
        if aspect_step:
            batch_records = records[len(aspect_losses) * _ASPECT_BATCH : (len(aspect_losses) + 1) * _ASPECT_BATCH]
            docs = [_aspect_doc(r, designs[aspect_rng.integers(len(designs))]) + " </s>" for r in batch_records]
        else:
            docs = [_corpus_doc(spec.corpus, rng) + " </s>" for _ in range(_BATCH)]
        batch = tokenizer(docs, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        (aspect_losses if aspect_step else losses).append(loss.item())
    model.eval()
    return model, float(np.mean(losses[-50:])), float(np.mean(aspect_losses[-10:])) if aspect_losses else None


def _config_hash(seed: int) -> str:
    blob = json.dumps(
        {
            "version": _BUILD_VERSION,
            "seed": seed,
            "zoo": [asdict(m) for m in ZOO],
            "task_size": TASK_SIZE,
            "task_kinds": TASK_KINDS,
            "noise": NOISE,
            "aspect_size": ASPECT_SIZE,
            "aspect_every": _ASPECT_EVERY,
            "aspect_batch": _ASPECT_BATCH,
            "batch": _BATCH,
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
    if "aspects" in manifest:  # zoos built before the aspect task have none
        manifest["aspects"] = str((zoo_dir / manifest["aspects"]).resolve())
    manifest["tokenizer"] = str((zoo_dir / manifest["tokenizer"]).resolve())
    return manifest


def _build_model(index: int, out_dir: str, seed: int, n_base: int | None = None) -> dict[str, Any]:
    """Pretrain and save ZOO[index] into out_dir/models (runs in a worker process)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = ZOO[index]
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(out_dir) / "tokenizer")
    model, final_loss, aspect_loss = _pretrain(spec, tokenizer, seed * 1000 + index, n_base)
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
        "aspect_loss": None if aspect_loss is None else round(aspect_loss, 4),
        "build_s": time.perf_counter() - start,
    }


ZOO_OWNER = "lensray zoo build"
"""What the marker of a zoo's folder holds (lensray.cluster.storage.claim_folder)."""


def _is_zoo_manifest(path: Path) -> bool:
    """True when `path` is a manifest.json `build_zoo` wrote (a zoo from before the marker)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(doc, dict) and {"config_hash", "tokenizer", "task", "models"} <= set(doc)
        and isinstance(doc["models"], list) and all(isinstance(m, dict) and "name" in m and "path" in m for m in doc["models"])
    )


def _claim_zoo(out_dir: Path, what: str = ZOO_OWNER) -> None:
    """Make `out_dir` a folder the zoo may be (re)built in, or raise StorageError: a new or empty
    folder, or a zoo (marked, or with a manifest.json of `build_zoo`'s from before the marker).
    Its `models` folder is deleted on a rebuild, so a folder another lensray command made (a
    bench's) is refused when it has one. `what` is the owner claiming it: the zoo, or its
    lineages (lensray.zoo.lineages.LINEAGES_OWNER, which claim their own folder in the zoo)."""
    from lensray.cluster.storage import MARKER, claim_folder
    from lensray.core.errors import StorageError

    marker = out_dir / MARKER
    if what == ZOO_OWNER and not marker.exists() and _is_zoo_manifest(out_dir / "manifest.json"):
        marker.write_text(ZOO_OWNER + "\n")
    claim_folder(out_dir, what)
    owner = marker.read_text().strip()
    if owner != what and (out_dir / "models").exists():
        raise StorageError(
            f"{out_dir / 'models'} was not written by `{what}` ({out_dir} holds the files of `{owner}`): "
            "choose another --out for the zoo"
        )


def build_zoo(out_dir: Path, seed: int = 0, force: bool = False) -> Path:
    """Build the zoo into `out_dir` (see the module docstring) and return its manifest path.

    A no-op when `out_dir/manifest.json` already holds this build's config hash, unless
    `force`. Prints one progress line per model. Deterministic in `seed` on one machine.
    `out_dir` must be new, empty, or a zoo (lensray.cluster.storage.claim_folder): a rebuild
    replaces the zoo's own files and nothing else, and any other folder is refused
    (StorageError) before anything in it is touched.
    """
    out_dir = Path(out_dir)
    manifest_path = out_dir / "manifest.json"
    config_hash = _config_hash(seed)
    if manifest_path.is_file() and not force:
        if json.loads(manifest_path.read_text()).get("config_hash") == config_hash:
            if not (out_dir / TASK_FILES["mixed"]).is_file():  # a zoo built before the mixed task
                _write_records(out_dir / TASK_FILES["mixed"], mixed_examples(MIXED_SIZE, seed))
            print(f"zoo: {out_dir} is up to date (config {config_hash}); use force to rebuild")
            return manifest_path
    start = time.perf_counter()
    _claim_zoo(out_dir)
    models_dir = out_dir / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    manifest_path.unlink(missing_ok=True)  # a half-built zoo must not look complete

    tokenizer, n_base = _build_tokenizer(seed)
    tokenizer.save_pretrained(out_dir / "tokenizer")
    _write_records(out_dir / TASK_FILES["task"], task_examples(TASK_SIZE, seed))
    _write_records(out_dir / TASK_FILES["aspects"], aspect_examples(ASPECT_SIZE, seed))
    _write_records(out_dir / TASK_FILES["mixed"], mixed_examples(MIXED_SIZE, seed))
    print(
        f"zoo: tokenizer ({len(tokenizer)} tokens), task.jsonl ({TASK_SIZE} examples), "
        f"aspects.jsonl ({ASPECT_SIZE} records) and mixed.jsonl ({MIXED_SIZE} examples) written"
    )

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
        jobs = {pool.submit(_build_model, i, str(out_dir), seed, n_base): i for i in order}
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
        "task": TASK_FILES["task"],
        "mixed": TASK_FILES["mixed"],
        "task_fields": {"prompt": "prompt", "response": "response"},
        "aspects": TASK_FILES["aspects"],
        "aspect_schema": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(ASPECT_SCHEMA).items()},
        "build_s": round(time.perf_counter() - start, 1),
        "models": entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"zoo: {len(ZOO)} models built in {manifest['build_s']}s -> {manifest_path}")
    return manifest_path


# The built-in multi-aspect task: structured records for sample-design selection (design.py).

ASPECT_SCHEMA = TargetSchema(
    names=("food", "service", "price"),
    labels=("positive", "negative", "neutral"),
    numeric=("1", "-1", "0"),
    instruction="rate food , service and price :",
    placeholder="none",
)
"""Targets of `aspect_examples`: three aspects, three sentiment labels (numeric 1/-1/0)."""

_ASPECT_NOUNS = {
    "food": ("food", "pasta", "soup"),
    "service": ("service", "staff", "waiter"),
    "price": ("price", "bill", "cost"),
}
"""Words that name each aspect in a review: the label of a clause hangs on its noun."""
_ASPECT_WORDS = {
    "positive": ("good", "great", "excellent"),
    "negative": ("bad", "awful", "not good", "not great"),
    "neutral": ("okay", "average", "not bad", "fine"),
}
"""Opinion words shared by every aspect. Negations flip a label (`not good` is negative) or soften
it (`not bad` is neutral), so a word seen in a clause is not its label."""
_ASPECT_OWN_WORDS = {
    ("food", "positive"): ("tasty", "fresh"),
    ("food", "negative"): ("cold", "bland"),
    ("service", "positive"): ("friendly", "quick"),
    ("service", "negative"): ("rude", "slow"),
    ("price", "positive"): ("cheap", "fair", "not expensive"),
    ("price", "negative"): ("expensive", "too high"),
}
"""Opinion words that fit one aspect only (none for neutral)."""
_ASPECT_TEMPLATES = ("{noun} was {word}", "{noun} seemed {word}", "{noun} looked {word}")
"""Clauses of one aspect, after `the`; the clause without `the` is the aspect's evidence."""
_ASPECT_CONTRAST = {"good": "negative", "great": "negative", "bad": "neutral"}
"""``the A was W but the B was not``: B's label is that of `not W` (see _ASPECT_WORDS)."""
_ASPECT_MENTION_P = 0.6
_ASPECT_JOINT_P = 0.3


def aspect_examples(n: int, seed: int) -> list[dict]:
    """`n` restaurant-style reviews over the aspects of `ASPECT_SCHEMA` as structured records
    ``{"text", "targets", "evidence"}`` (see lensray.data.design), deterministic in `seed`.

    Each aspect is mentioned with probability 0.6 (at least one per review) with a uniform
    label, in a random order, in one clause ``the <noun> was <word>`` (or `seemed`, `looked`);
    clauses are joined by `,` / `and` / `but` regardless of their labels, so a label is only
    inferable from its own clause. With probability 0.3 two aspects share one clause:
    ``the A and the B were W`` (same label) or ``the A was W but the B was not`` (B takes the
    label of `not W`). The evidence of an aspect is its clause without the leading `the`.
    Punctuation is written as separate words; the reviews use 40 distinct words (63 with every
    design's rendering), so a word-level tokenizer can cover them.
    """
    rng = np.random.default_rng([seed, 21])
    names, labels = ASPECT_SCHEMA.names, ASPECT_SCHEMA.labels

    def pick(options: tuple[str, ...]) -> str:
        return options[rng.integers(len(options))]

    def word_for(name: str, label: str) -> str:
        return pick(_ASPECT_WORDS[label] + _ASPECT_OWN_WORDS.get((name, label), ()))

    out = []
    for _ in range(n):
        mentioned = [name for name in names if rng.random() < _ASPECT_MENTION_P]
        if not mentioned:
            mentioned = [pick(names)]
        mentioned = [mentioned[i] for i in rng.permutation(len(mentioned))]
        targets: dict[str, str] = {}
        evidence: dict[str, str] = {}
        clauses = []
        while mentioned:
            a = mentioned.pop(0)
            noun_a = pick(_ASPECT_NOUNS[a])
            if mentioned and rng.random() < _ASPECT_JOINT_P:
                b = mentioned.pop(0)
                noun_b = pick(_ASPECT_NOUNS[b])
                if rng.random() < 0.5:
                    word = pick(tuple(_ASPECT_CONTRAST))
                    label_a = next(lab for lab in labels if word in _ASPECT_WORDS[lab])
                    clause = f"{noun_a} was {word} but the {noun_b} was not"
                    targets[a], targets[b] = label_a, _ASPECT_CONTRAST[word]
                else:
                    label = pick(labels)
                    clause = f"{noun_a} and the {noun_b} were {pick(_ASPECT_WORDS[label])}"
                    targets[a] = targets[b] = label
                evidence[a] = evidence[b] = clause
            else:
                targets[a] = pick(labels)
                clause = pick(_ASPECT_TEMPLATES).format(noun=noun_a, word=word_for(a, targets[a]))
                evidence[a] = clause
            clauses.append(clause)
        text = f"the {clauses[0]}"
        for clause in clauses[1:]:
            text += f" {pick((',', 'and', 'but'))} the {clause}"
        out.append({
            "text": text + " .",
            "targets": {name: targets[name] for name in names if name in targets},
            "evidence": {name: evidence[name] for name in names if name in evidence},
        })
    return out
