"""lensray.zoo.lineages: models derived from the base zoo with a known family tree; their plan,
their folder's ownership and cache, and one slow test that PhyloLM (lensray.stages.phylo)
recovers the tree from fingerprints made on a local Ray; the routing specialist answers the
reviews half of the mixed task before any fine-tune, and not its cipher half."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from lensray.cluster.storage import MARKER, claim_folder
from lensray.core.errors import StorageError
from lensray.zoo.build import ZOO, build_zoo, task_examples
from lensray.zoo.lineages import (
    GENE_TEXTS,
    DERIVED,
    KINDS,
    LINEAGES,
    SPECIALISTS,
    LINEAGES_OWNER,
    Lineage,
    _config_hash,
    build_lineages,
    gene_texts,
    load_lineages,
)

BASE = {m.name: m for m in ZOO}


def test_the_plan_has_children_of_three_architectures_and_copies_of_two_models():
    names = [m.name for m in LINEAGES]
    assert len(set(names)) == len(names) and not set(names) & set(BASE)
    children = Counter(m.parent for m in LINEAGES if m.kind == "child")
    parents = [p for p, n in children.items() if n >= 2]
    assert len(parents) >= 3
    assert len({BASE[p].architecture for p in parents}) >= 3 and len({BASE[p].corpus for p in parents}) >= 2
    for kind in ("noise-copy", "step-copy"):
        assert len({m.parent for m in LINEAGES if m.kind == kind}) >= 2, kind
    for m in LINEAGES:
        assert m.family == m.parent and m.kind in KINDS
        assert m.kind != "child" or (m.corpus != BASE[m.parent].corpus and 1 <= m.steps <= 50), m


def test_a_lineage_that_cannot_be_made_is_refused_with_its_name():
    for bad, words in [
        (("x", "gpt2-huge", "child", "copy", 10, 1e-4), "not a base zoo model"),
        (("x", "llama-text-32", "clone"), "not one of"),
        (("x", "llama-text-32", "child", "text", 10, 1e-4), "other than its parent's"),
        (("x", "llama-text-32", "child", "copy", 0, 1e-4), "steps >= 1"),
        (("x", "llama-text-32", "noise-copy", "copy"), "takes no corpus"),
    ]:
        with pytest.raises(ValueError, match=words):
            Lineage(*bad)


def test_config_hash_is_deterministic_and_follows_the_seed_and_the_base_zoo():
    assert _config_hash(0, "abc") == _config_hash(0, "abc")
    assert len({_config_hash(0, "abc"), _config_hash(1, "abc"), _config_hash(0, "abd")}) == 3


def test_gene_texts_mix_the_task_with_the_text_corpus(tmp_path):
    task = tmp_path / "task.jsonl"
    examples = task_examples(GENE_TEXTS, 0)
    task.write_text("".join(json.dumps(ex) + "\n" for ex in examples))
    texts = gene_texts(str(task))
    half = GENE_TEXTS // 2
    assert len(texts) == GENE_TEXTS and all("\n" not in t for t in texts)
    assert texts[:half] == [f"{ex['prompt']} {ex['response']}" for ex in examples[:half]]
    assert all(t.startswith("the ") and t.endswith(" .") for t in texts[half:])
    assert gene_texts(str(task)) == texts and gene_texts(str(task), seed=1)[half:] != texts[half:]


def _fake_zoo(folder):
    """A zoo manifest that names every base model (no weights: nothing may get as far as training)."""
    claim_folder(folder, "lensray zoo build")
    manifest = {"config_hash": "z", "seed": 0, "tokenizer": "tokenizer", "task": "task.jsonl",
                "models": [{"name": m.name, "path": f"models/{m.name}"} for m in ZOO]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_lineages_need_a_zoo_and_leave_a_folder_that_is_not_theirs(tmp_path):
    with pytest.raises(FileNotFoundError, match="lensray zoo build"):
        build_lineages(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no lineages"):
        load_lineages(tmp_path)
    zoo = _fake_zoo(tmp_path / "zoo")
    (zoo / "lineages" / "models").mkdir(parents=True)
    (zoo / "lineages" / "models" / "mine.safetensors").write_text("weights")
    with pytest.raises(StorageError, match="choose another --out, or empty the folder"):
        build_lineages(zoo)
    (zoo / "lineages" / MARKER).write_text("lensray bench select\n")  # another command's folder
    with pytest.raises(StorageError, match="not written by `lensray zoo build: lineages`"):
        build_lineages(zoo)
    assert (zoo / "lineages" / "models" / "mine.safetensors").read_text() == "weights"
    manifest = json.loads((zoo / "manifest.json").read_text())
    manifest["models"] = manifest["models"][1:]
    (zoo / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StorageError, match=f"no models \\['{ZOO[0].name}'\\]"):
        build_lineages(zoo)


def test_the_zoo_is_never_built_over_its_lineages_and_they_are_cached(tmp_path):
    zoo = _fake_zoo(tmp_path / "zoo")
    claim_folder(zoo / "lineages", LINEAGES_OWNER)
    (zoo / "lineages" / "models").mkdir()
    with pytest.raises(StorageError, match="not written by `lensray zoo build`"):
        build_zoo(zoo / "lineages")
    assert (zoo / "lineages" / MARKER).read_text() == LINEAGES_OWNER + "\n"
    manifest = {"config_hash": _config_hash(0, "z"), "models": []}
    (zoo / "lineages" / "manifest.json").write_text(json.dumps(manifest))
    t0 = time.perf_counter()
    assert build_lineages(zoo) == zoo / "lineages" / "manifest.json"  # up to date: nothing built
    assert time.perf_counter() - t0 < 1.0 and (zoo / "lineages" / "models").is_dir()


@pytest.mark.slow
def test_phylolm_recovers_the_lineages_family_tree(zoo_manifest, zoo_lineages, ray_local, tmp_path):
    """Fingerprint the base zoo and every lineage model on a local Ray; the NJ tree keeps each
    family together, each child's nearest model is of its parent's making, and near-duplicates
    are exactly the copies with their sources."""
    from lensray.core.types import ModelSpec
    from lensray.stages.phylo.duplicates import near_duplicates
    from lensray.stages.phylo.fingerprint import PhyloConfig, fingerprint_models
    from lensray.stages.phylo.genes import draw_genes, texts_from_file
    from lensray.stages.phylo.similarity import distance
    from lensray.stages.phylo.tree import is_clade, nearest_neighbours, nj_tree

    assert [m["name"] for m in zoo_lineages["models"]] == [m.name for m in DERIVED]
    derived = [m for m in zoo_lineages["models"] if not m["specialist"]]
    assert [m["name"] for m in derived] == [m.name for m in LINEAGES]
    assert all(m["n_params"] == zoo_manifest["by_name"][m["parent"]]["n_params"] for m in derived)
    models = [ModelSpec(m["name"], m["path"]) for m in zoo_manifest["models"] + derived]
    names = [m.name for m in models]
    family = {m["name"]: m["name"] for m in zoo_manifest["models"]} | {m["name"]: m["family"] for m in derived}
    parent = {m["name"]: m["parent"] for m in derived}
    kind = {m["name"]: m["kind"] for m in derived}

    # 48 samples: a copy sits about its source's sampling noise away, which at 32 samples is above
    # the 0.05 threshold for opt-text-160 on some builds of the zoo (0.061; docs/phylo.md)
    cfg = PhyloConfig(genes=64, samples=48, genes_path=zoo_lineages["genes"], cache_dir=str(tmp_path / "cache"))
    genes = draw_genes(texts_from_file(cfg.genes_path), cfg.genes, cfg.seed, cfg.min_chars, cfg.max_chars)
    t0 = time.perf_counter()
    prints = fingerprint_models(models, genes, cfg)
    print(f"fingerprinted {len(models)} models in {time.perf_counter() - t0:.1f} s")
    assert all(prints[n].ok for n in names), {n: prints[n].error for n in names if not prints[n].ok}
    d = distance([prints[n].alleles for n in names])
    at = {n: i for i, n in enumerate(names)}
    print("d(model, parent):", {n: round(float(d[at[n], at[p]]), 3) for n, p in parent.items()})

    tree = nj_tree(names, d)
    for root in sorted(set(family.values())):
        members = {n for n in names if family[n] == root}
        if len(members) > 1:
            assert is_clade(tree, members), f"family {root} {sorted(members)} is not a clade of the NJ tree"

    near = nearest_neighbours(names, d)
    children = [n for n in names if kind.get(n) == "child"]
    kin = {c: {parent[c]} | {s for s in parent if parent[s] == parent[c] and s != c} for c in children}
    strays = {c: near[c] for c in children if near[c][0] not in kin[c]}
    assert len(strays) <= 0.1 * len(children), f"children nearest to another family's model: {strays}"

    groups = near_duplicates(names, d, {m.name: prints[m.name].n_params for m in models}, cfg.duplicate_threshold)
    print("near-duplicate groups:", [(g.members, {k: round(v, 3) for k, v in g.distances.items()}) for g in groups])
    for g in groups:
        assert len({family[m] for m in g.members}) == 1, f"a group crosses families: {g.members}"
        assert not any(parent.get(m) in g.members for m in g.members if kind.get(m) == "child"), f"a child with its parent: {g.members}"
    for copy in (n for n in names if kind.get(n) in ("noise-copy", "step-copy")):
        assert any({copy, parent[copy]} <= set(g.members) for g in groups), (
            f"{copy} is not grouped with {parent[copy]} (d = {d[at[copy], at[parent[copy]]]:.3f})"
        )


@pytest.mark.slow
def test_the_reviews_specialist_answers_reviews_and_not_the_cipher(zoo_manifest, zoo_lineages):
    """Greedy answers on held-out mixed-task queries, before any fine-tune: the specialist gets
    many reviews right and its parent none; neither knows the cipher. That split is what gives
    the route demo's finalists complementary strengths."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lensray.data.design import score_plain
    from lensray.zoo.build import ASPECT_SCHEMA, mixed_examples

    (specialist,) = SPECIALISTS
    assert [m["name"] for m in zoo_lineages["models"] if m["specialist"]] == [specialist.name]
    rows = mixed_examples(4096 + 256, seed=7)[-256:]  # another seed: queries the build never saw
    halves = {"reviews": [r for r in rows if r["prompt"].startswith(ASPECT_SCHEMA.instruction)]}
    halves["cipher"] = [r for r in rows if r not in halves["reviews"]]
    tok = AutoTokenizer.from_pretrained(zoo_manifest["tokenizer"], padding_side="left")
    paths = {specialist.name: next(m["path"] for m in zoo_lineages["models"] if m["name"] == specialist.name),
             specialist.parent: zoo_manifest["by_name"][specialist.parent]["path"]}
    accuracy = {}
    for name, path in paths.items():
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        for half, examples in halves.items():
            batch = tok([r["prompt"] for r in examples], padding=True, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)
            texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
            accuracy[name, half] = score_plain(texts, [r["response"] for r in examples]).accuracy
    print("zero-shot accuracy:", accuracy)
    assert accuracy[specialist.name, "reviews"] >= 0.3, accuracy
    assert accuracy[specialist.parent, "reviews"] <= 0.05, accuracy
    assert accuracy[specialist.name, "cipher"] <= 0.05 and accuracy[specialist.parent, "cipher"] <= 0.05, accuracy
