"""lensray.zoo.build: the offline candidate pool loads like hub models, is cached and deterministic,
and its task has an entropy floor and makes the fine-tuned ranking differ from the zero-shot and
the size rankings; the aspect task is covered by the tokenizer under every sample design, fits the context, ships with
the zoo and is known to the text and mix models."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from lensray.cluster.storage import MARKER, claim_folder
from lensray.core.errors import StorageError
from lensray.data.design import TargetSchema, render
from lensray.zoo.build import (
    ASPECT_SCHEMA,
    ASPECT_SIZE,
    CONTEXT,
    NOISE,
    SYMBOLS,
    TASK_KINDS,
    ZOO,
    _answer,
    _aspect_doc,
    _aspect_words,
    _cipher,
    _corpus_doc,
    all_designs,
    aspect_examples,
    build_tokenizer,
    build_zoo,
    entropy_floor,
    task_examples,
)


def test_manifest_lists_a_diverse_pool(zoo_manifest):
    models = zoo_manifest["models"]
    assert len(models) >= 8
    assert len({m["architecture"] for m in models}) >= 4
    sizes = [m["n_params"] for m in models]
    assert max(sizes) >= 10 * min(sizes)
    assert len({m["pretrain_steps"] for m in models}) == len(models)  # each its own budget
    assert {"name", "path", "architecture", "n_params", "pretrain_steps"} <= set(models[0])


def test_every_model_loads_like_a_hub_model(zoo_manifest):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for entry in zoo_manifest["models"]:
        tok = AutoTokenizer.from_pretrained(entry["path"])
        model = AutoModelForCausalLM.from_pretrained(entry["path"], use_safetensors=True, trust_remote_code=False)
        assert model.config.model_type == entry["architecture"]
        assert sum(p.numel() for p in model.parameters()) == entry["n_params"]
        assert tok.pad_token == "<pad>" and tok.eos_token == "</s>" and tok.chat_template
        batch = tok(["translate : a b c d e ->", "the cat sees the dog ."], padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.shape[-1] == len(tok) and torch.isfinite(logits).all()


def test_rebuild_is_a_noop(zoo_dir, capsys):
    manifest = zoo_dir / "manifest.json"
    before = manifest.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_zoo(zoo_dir) == manifest
    assert time.perf_counter() - start < 2
    assert manifest.stat().st_mtime_ns == before
    assert "up to date" in capsys.readouterr().out


def test_task_and_tokenizer_are_deterministic(zoo_manifest):
    assert task_examples(50, seed=0) == task_examples(50, seed=0)
    assert task_examples(50, seed=0) != task_examples(50, seed=1)
    assert build_tokenizer(0).get_vocab() == build_tokenizer(0).get_vocab()
    with open(zoo_manifest["task"]) as f:
        rows = [json.loads(line) for line in f]
    assert rows[:50] == task_examples(50, seed=zoo_manifest["seed"])
    assert all(set(row) == {"prompt", "response"} for row in rows)
    assert all(len(row["prompt"].split()) == 8 and len(row["response"].split()) == 5 for row in rows)


def test_cipher_task_has_an_entropy_floor():
    """A share NOISE of the response symbols is random, so even the rule's own answer (the best
    predictor: the cipher's symbol with 1 - NOISE + NOISE/16, any other with NOISE/16) has the
    loss entropy_floor() > 0; the sub-tasks come in their shares."""
    rows = task_examples(10000, seed=3)
    cipher = _cipher(3)
    assert all(v != k for k, v in cipher.items())  # no fixed points: copying is wrong
    kinds = [row["prompt"].split()[0] for row in rows]
    for kind, share in TASK_KINDS.items():
        assert abs(kinds.count(kind) / len(rows) - share) < 0.01, kind
    right, wrong, log_p = 0, 0, 0.0
    for kind, row in zip(kinds, rows):
        for y, rule in zip(row["response"].split(), _answer(kind, row["prompt"].split()[2:-1], cipher)):
            hit = y == rule
            right, wrong = right + hit, wrong + (not hit)
            log_p += np.log(1 - NOISE + NOISE / len(SYMBOLS) if hit else NOISE / len(SYMBOLS))
    assert abs(wrong / (right + wrong) - NOISE * 15 / 16) < 0.005  # a random symbol may be the right one
    ideal = -log_p / len(rows) / 6  # 5 symbols and the end token (certain) a response
    assert entropy_floor() > 0.3 and abs(entropy_floor() - ideal) < 0.01
    assert entropy_floor(0.0) == 0.0 and entropy_floor(0.2) > entropy_floor()


def _finetune_losses(path: str, data, sizes, torch) -> tuple[float, list[float]]:
    """Zero-shot held-out loss and the loss after a plain 3-epoch fine-tune on each size."""
    from transformers import AutoModelForCausalLM

    def batch(ds):
        width = max(len(x) for x in ds["input_ids"])
        ids = torch.tensor([x + [0] * (width - len(x)) for x in ds["input_ids"]])  # 0 = <pad>
        labels = torch.tensor([y + [-100] * (width - len(y)) for y in ds["labels"]])
        return ids, (ids != 0).long(), labels

    def held_out(model):
        ids, mask, labels = batch(data.eval)
        model.eval()
        with torch.no_grad():
            return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)

    zero_shot = held_out(AutoModelForCausalLM.from_pretrained(path))
    tuned = []
    for size in sizes:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(path)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        for epoch in range(3):
            rows = data.subset(size).shuffle(seed=epoch)
            for i in range(0, size, 8):
                ids, mask, labels = batch(rows[i : i + 8])
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
        tuned.append(held_out(model))
    return zero_shot, tuned


@pytest.mark.slow
def test_finetuned_ranking_differs_from_zero_shot_and_size(zoo_manifest, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from lensray.data.dataset import DataConfig, prepare_data

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(zoo_manifest["tokenizer"])
    data = prepare_data(
        DataConfig(path=zoo_manifest["task"], sizes=(32, 64, 256), eval_size=128, cache_dir=str(tmp_path)), tok
    )
    zero_shot, tuned, curves = {}, {}, {}
    for entry in zoo_manifest["models"]:
        sizes = (32, 64, 256) if entry["name"] == "neox-copy-48" else (256,)
        zero_shot[entry["name"]], curves[entry["name"]] = _finetune_losses(entry["path"], data, sizes, torch)
        tuned[entry["name"]] = curves[entry["name"]][-1]
    by_size = max(zoo_manifest["models"], key=lambda m: m["n_params"])["name"]
    best_zero_shot = min(zero_shot, key=zero_shot.get)
    best_tuned = min(tuned, key=tuned.get)
    assert best_tuned not in (by_size, best_zero_shot), (zero_shot, tuned)
    assert zoo_manifest["by_name"][best_tuned]["corpus"] == "copy"
    # Copy-pretrained models are far from the best zero-shot (they confidently copy) yet the only
    # ones 256 examples teach anything: the others stay at chance on the symbols (5/6 ln 16).
    copy_models = [m["name"] for m in zoo_manifest["models"] if m["corpus"] == "copy"]
    assert all(zero_shot[n] > 2 * zero_shot[best_zero_shot] for n in copy_models)
    chance = 5 / 6 * np.log(16)
    assert all(tuned[n] < 0.75 * chance for n in copy_models)
    assert all(abs(tuned[m] - chance) < 0.1 for m in tuned if m not in copy_models), tuned
    # Pre-power then power phase: 32 -> 64 examples barely helps, 64 -> 256 cuts the loss; the
    # entropy floor stays below it all.
    d32, d64, d256 = curves["neox-copy-48"]
    assert d64 > 0.75 * d32 and d256 < 0.7 * d64 and d256 > entropy_floor(), curves["neox-copy-48"]
    assert len(ZOO) == len(zoo_manifest["models"])


# The aspect task: in the tokenizer, in the zoo directory, and seen by the text and mix models.

OLD_FIRST_IDS = ["<pad>", "<s>", "</s>", "<unk>", "the", ".", ":", "->", "named"]
"""The first ids of the tokenizer: the corpora's and the cipher task's words, most frequent first
(the aspect words come after them)."""


def test_tokenizer_keeps_the_old_words_and_isolates_newlines(tokenizer):
    rng = np.random.default_rng(0)
    docs = [_corpus_doc(c, rng) for c in ("copy", "format", "text") for _ in range(100)]
    docs += [ex["prompt"] + " " + ex["response"] for ex in task_examples(100, seed=0)]
    for doc in docs:  # the cipher task and the corpora tokenise to the same words as before
        ids = tokenizer(doc)["input_ids"]
        assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", *doc.split()]
        assert tokenizer.decode(ids, skip_special_tokens=True) == doc
    vocab = tokenizer.get_vocab()
    assert tokenizer.convert_ids_to_tokens(range(len(OLD_FIRST_IDS))) == OLD_FIRST_IDS
    old_words = {w for doc in docs for w in doc.split()} | {"system", "user", "assistant"}
    aspect_only = (set(_aspect_words().split()) | {"\n", "reasoning", "answer", '"food"', "-1"}) - old_words
    assert len(aspect_only) > 40
    assert max(vocab[w] for w in old_words) < min(vocab[w] for w in aspect_only)  # new words come after
    text = "the food is good , the staff was rude . \n answer : { \"food\" : -1 }"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == text.split(" ")  # the newline is its own token
    assert tokenizer.decode(ids) == text  # words joined by single spaces, no clean-up of `good ,`
    assert tokenizer.convert_ids_to_tokens(tokenizer("a  b\tc\n\nd", add_special_tokens=False)["input_ids"]) == [
        "a", "b", "c", "\n", "\n", "d"
    ]


def test_aspect_samples_fit_the_context_under_every_design(tokenizer):
    vocab = tokenizer.get_vocab()
    designs = [d for d in all_designs() if d.input_loss == "off"]  # input_loss changes no text
    assert len(all_designs()) == 216 and len(designs) == 108
    records = aspect_examples(ASPECT_SIZE, seed=0)  # every record of the zoo's aspects.jsonl
    longest, unknown, spot = 0, set(), []
    for i, design in enumerate(designs):
        for j, record in enumerate(records):
            sample = render(record, design, ASPECT_SCHEMA)
            prompt, response = sample.prompt.split(" "), sample.response.split(" ")
            unknown.update(w for w in prompt + response if w not in vocab)
            longest = max(longest, 1 + len(prompt) + len(response) + 1)  # <s> ... </s>
            if j % 97 == i % 97:
                spot.append((sample, len(prompt), len(response)))
    assert not unknown and longest <= CONTEXT, (unknown, longest)
    # The word counts are the token counts of the zoo tokenizer (spot check ~4.6k samples).
    prompts = tokenizer([s.prompt for s, _, _ in spot])["input_ids"]
    responses = tokenizer([s.response for s, _, _ in spot], add_special_tokens=False)["input_ids"]
    for p, r, (_, n_prompt, n_response) in zip(prompts, responses, spot):
        assert len(p) == 1 + n_prompt and len(r) == n_response
        assert tokenizer.unk_token_id not in p + r


def test_zoo_ships_the_aspect_task(zoo_manifest):
    with open(zoo_manifest["aspects"]) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == ASPECT_SIZE and rows[:50] == aspect_examples(50, seed=zoo_manifest["seed"])
    assert TargetSchema(**zoo_manifest["aspect_schema"]) == ASPECT_SCHEMA
    for entry in zoo_manifest["models"]:
        assert (entry["aspect_loss"] is not None) == (entry["corpus"] in ("text", "mix")), entry


def test_zoo_ships_the_mixed_task_half_cipher_half_reviews(zoo_dir, zoo_manifest):
    from lensray.config.load import config_from_dict
    from lensray.data.design import PRESETS
    from lensray.zoo.build import MIXED_SIZE, TASK_FILES, mixed_examples

    with open(zoo_dir / TASK_FILES["mixed"]) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == MIXED_SIZE and rows == mixed_examples(MIXED_SIZE, seed=zoo_manifest["seed"])
    reviews = [r for r in rows if r["prompt"].startswith(ASPECT_SCHEMA.instruction)]
    cipher = [r for r in rows if r not in reviews]
    assert len(reviews) == len(cipher) == MIXED_SIZE // 2
    assert sorted(map(json.dumps, cipher)) == sorted(map(json.dumps, task_examples(MIXED_SIZE // 2, zoo_manifest["seed"])))
    first = render(aspect_examples(1, zoo_manifest["seed"])[0], PRESETS["es-sde"], ASPECT_SCHEMA)
    assert {"prompt": first.prompt, "response": first.response} in reviews
    assert {r in reviews for r in rows[:16]} == {True, False}  # shuffled, not one half after the other
    cfg = config_from_dict({"backend": "hf", "zoo": str(zoo_dir), "data": {"path": "zoo:mixed"},
                           "scheduler": {"synchronous": False}})
    assert cfg.data.path == str((zoo_dir / "mixed.jsonl").resolve()) and cfg.data.schema is None


def test_a_zoo_built_before_the_mixed_task_gains_it_without_a_rebuild(tmp_path):
    from lensray.zoo.build import MIXED_SIZE, TASK_FILES, _config_hash, mixed_examples

    (tmp_path / "manifest.json").write_text(json.dumps({"config_hash": _config_hash(0), "models": []}))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "kept").write_text("weights")
    build_zoo(tmp_path)
    rows = [json.loads(line) for line in open(tmp_path / TASK_FILES["mixed"])]
    assert rows == mixed_examples(MIXED_SIZE, 0) and (tmp_path / "models" / "kept").read_text() == "weights"


def test_text_and_mix_models_know_the_aspect_words(zoo_manifest):
    """Pretraining on aspect samples trains their embeddings: text and mix models predict held-out
    aspect samples far better than copy and format models, which never saw the words."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(zoo_manifest["tokenizer"])
    designs = all_designs()
    docs = [_aspect_doc(r, designs[(7 * i) % len(designs)]) + " </s>" for i, r in enumerate(aspect_examples(32, seed=99))]
    batch = tok(docs, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = {}
    for entry in zoo_manifest["models"]:
        model = AutoModelForCausalLM.from_pretrained(entry["path"])
        with torch.no_grad():
            loss[entry["name"]] = float(model(**batch, labels=labels).loss)
    seen = [loss[m["name"]] for m in zoo_manifest["models"] if m["corpus"] in ("text", "mix")]
    unseen = [loss[m["name"]] for m in zoo_manifest["models"] if m["corpus"] in ("copy", "format")]
    assert max(seen) < 0.5 * min(unseen), loss


# The zoo's folder: built only in a new or empty folder or a zoo; a rebuild deletes nothing else.

def test_zoo_build_refuses_a_folder_with_a_users_files(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.safetensors").write_text("weights")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError) as err:
        build_zoo(tmp_path)
    assert "\n" not in str(err.value) and "choose another --out, or empty the folder" in str(err.value)
    assert (tmp_path / "models" / "mine.safetensors").read_text() == "weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "notes.txt"]


def test_zoo_build_leaves_the_models_of_another_lensray_folder(tmp_path):
    claim_folder(tmp_path, "lensray bench select")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.csv").write_text("x")
    with pytest.raises(StorageError, match=r"models was not written by `lensray zoo build`"):
        build_zoo(tmp_path)
    assert (tmp_path / "models" / "m.csv").is_file()


def test_a_zoo_from_before_the_marker_is_rebuilt_in_place(tmp_path, monkeypatch):
    import lensray.zoo.build as zoo

    manifest = {"config_hash": "old", "seed": 0, "tokenizer": "tokenizer", "task": "task.jsonl",
                "models": [{"name": "llama-text-32", "path": "models/llama-text-32"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "models" / "llama-text-32").mkdir(parents=True)

    class Stop(Exception):
        pass

    def stop(seed):
        raise Stop  # where the build would start training: what came before is what counts
    monkeypatch.setattr(zoo, "_build_tokenizer", stop)
    with pytest.raises(Stop):
        build_zoo(tmp_path)
    assert (tmp_path / MARKER).read_text() == "lensray zoo build\n"
    assert not (tmp_path / "models").exists() and not (tmp_path / "manifest.json").exists()


def test_zoo_build_cli_error_is_one_line(tmp_path):
    import subprocess
    import sys

    (tmp_path / "thesis.tex").write_text("mine")
    run = subprocess.run([sys.executable, "-m", "lensray", "zoo", "build", "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("lensray: error: ") and run.stderr.count("\n") == 1
    assert (tmp_path / "thesis.tex").read_text() == "mine"
