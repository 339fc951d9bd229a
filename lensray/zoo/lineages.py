"""Lineages of the zoo: models derived here from the base zoo's, whose family tree is known, to
check what PhyloLM (lensray.stages.phylo) recovers of it (tests/test_lineages.py).

Every derived model has one base zoo model (lensray.zoo.build.ZOO) as its parent, which is also
its family (the lineage's root). Three kinds (`KINDS`):

- ``child``: the parent's pretraining continued on another corpus for 10 to 30 steps
  (`Lineage.steps`, peak rate `Lineage.lr`, build._pretrain's recipe): a relative that has moved
  away from its parent, not a near-duplicate of it;
- ``noise-copy``: the parent's weights plus Gaussian noise, `NOISE_SCALE` times each weight
  tensor's root mean square: a near-duplicate;
- ``step-copy``: the parent one optimizer step further on its own corpus, at `STEP_LR_SHARE` of
  its peak rate, the rate its pretraining schedule ended at: a near-duplicate.

`LINEAGES`: two children each of llama-text-32, opt-text-160, gpt2-format-48 and gpt2-mix-128
(three architectures, three corpora), and both copies of mistral-text-96 and opt-text-160.
`SPECIALISTS` are built beside them but are not part of the family tree: children trained long
on one sub-task's corpus, for routing (``mistral-text-96.reviews``: 800 steps on the aspect
reviews, the ``reviews`` corpus of lensray.zoo.build).

The genes (`genes.txt`, `gene_texts`) are half the task's records and half documents of the
text corpus, which every zoo model saw in pretraining (the copy and format corpora are 30%
text), so each model is fingerprinted partly in its own domain. On the task's records alone
the text models share no allele with several format and copy models (30 of the 190 pairs sit
at the distance cap, 23.03) and the NJ tree keeps only 2 of the 5 families together.

Measured with G = 64 genes of genes.txt and N = 32 samples on one machine's build, a model's
distance to itself under another sampling seed (the sampling noise) is 0.02 to 0.09; the
copies are 0.025 to 0.030 from their parents (0.045 to 0.052 with N = 16: at the 0.05
near-duplicate threshold); children are 0.09 to 0.23 from their parents and 0.06 to 0.10 from
their siblings; the nearest model outside a family is 0.29 to 0.89 away. A copy is about its
parent's sampling noise away, and that noise depends on the build (the CPU): on another
machine's, opt-text-160's is 0.061 at N = 32, above the threshold, so the slow test takes
N = 48 (docs/phylo.md#recovering-known-lineages). The
rates are set by what the fingerprint sees:

- a text model never saw the task's format, so a few steps on any other corpus (all three are
  in that format) replace what it says after the task's prompts: 10 steps at 3e-4 put the
  children of mistral-text-96 and opt-text-160 4 to 5 away from their parent on the task's
  records, nearer the format models than to it. Their rates are 2e-4 (llama-text-32) and 6e-5
  (opt-text-160); mistral-text-96's children stayed nearer other families' models at every
  rate tried but the smallest, where they were near-duplicates of each other, so it has copies
  only;
- gpt2-format-48's children at 3e-4 (0.12 to 0.17 from it) lost the family: NJ put
  qwen2-format-96 (the format corpus too, 0.34 away) inside it. At 1e-4 they are 0.09 from
  it, as far as the parent's own sampling noise (0.08): the fingerprint tells them from it no
  better than from a resampled copy;
- the copies' parents vary little from one sampling to the next and have no close relative in
  the base zoo: neox-copy-48's copies are 0.02 from it, but llama-copy-96 (0.22 away) then
  joins that family in the NJ tree, whose copies give it nothing to tell them apart by.

Run it (`lensray zoo build` builds it after the base zoo)::

    python -c "from pathlib import Path; from lensray.zoo.lineages import build_lineages; build_lineages(Path('zoo'))"

About 90 s on 2 idle CPU cores (the specialist's 800 steps on one; the 12 others on the other).
Layout, in the zoo's folder (the base zoo's files are only read)::

    lineages/.lensray        LINEAGES_OWNER: the folder may be rebuilt
    lineages/manifest.json   config hash (which covers the base zoo's), seed, genes, and per
                             model: name, path (relative to this manifest), parent, kind,
                             family, n_params, corpus and steps trained (none for a
                             noise-copy), final loss, whether it is a specialist
    lineages/genes.txt       the texts to draw the genes from (PhyloConfig.genes_path)
    lineages/models/<name>/  config.json, model.safetensors, tokenizer files (as the base zoo's)

Deterministic given the seed on one machine and software stack, as the base zoo (two builds
here give the same weights); a no-op when the manifest holds the same config hash, unless
`force`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lensray.core.errors import StorageError
from lensray.zoo.build import ZOO, _claim_zoo, _corpus_doc, _pretrain, load_manifest

KINDS = ("child", "noise-copy", "step-copy")
"""How a derived model is made from its parent (see the module docstring)."""
LINEAGES_OWNER = "lensray zoo build: lineages"
"""What the marker of the lineages' folder holds (not the zoo's owner: the base zoo is never
built into it)."""
STEP_LR_SHARE = 0.1
"""A step-copy's one step is at this share of its parent's peak rate: where the base schedule ends."""
NOISE_SCALE = 0.01
"""A noise-copy's noise, relative to each weight tensor's root mean square."""
GENE_TEXTS = 512
"""Lines of genes.txt: half the task's records, half documents of the text corpus."""
_BUILD_VERSION = 1
"""Bump when the recipe changes, so built lineages are rebuilt."""


@dataclass(frozen=True)
class Lineage:
    """One derived model: its parent in the base zoo and how it is made from it."""

    name: str
    """Directory and model name, ``<parent>.<corpus>`` (child) or ``<parent>.noise`` / ``.step``."""
    parent: str
    """The base zoo model it is made from (a name in ZOO), which is also its family."""
    kind: str
    """One of KINDS."""
    corpus: str = ""
    """A child's corpus (another than its parent's); empty for the copies."""
    steps: int = 0
    """A child's optimizer steps (batch 32, as the base zoo); 0 for the copies."""
    lr: float = 0.0
    """A child's peak learning rate (build._pretrain's schedule); 0 for the copies."""

    def __post_init__(self) -> None:
        parents = {m.name: m for m in ZOO}
        if self.parent not in parents:
            raise ValueError(f"Lineage {self.name!r}: parent {self.parent!r} is not a base zoo model ({sorted(parents)})")
        if self.kind not in KINDS:
            raise ValueError(f"Lineage {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "child" and (self.steps < 1 or self.lr <= 0 or self.corpus in ("", parents[self.parent].corpus)):
            raise ValueError(f"Lineage {self.name!r}: a child needs steps >= 1 at a learning rate > 0 on a corpus other than its parent's")
        if self.kind != "child" and (self.corpus or self.steps or self.lr):
            raise ValueError(f"Lineage {self.name!r}: a {self.kind} takes no corpus, steps or learning rate")

    @property
    def family(self) -> str:
        """The lineage's root: the base zoo model it descends from."""
        return self.parent


LINEAGES: tuple[Lineage, ...] = (
    Lineage("llama-text-32.copy", "llama-text-32", "child", "copy", 10, 2e-4),
    Lineage("llama-text-32.format", "llama-text-32", "child", "format", 10, 2e-4),
    Lineage("opt-text-160.copy", "opt-text-160", "child", "copy", 10, 6e-5),
    Lineage("opt-text-160.format", "opt-text-160", "child", "format", 10, 6e-5),
    Lineage("opt-text-160.noise", "opt-text-160", "noise-copy"),
    Lineage("opt-text-160.step", "opt-text-160", "step-copy"),
    Lineage("gpt2-format-48.copy", "gpt2-format-48", "child", "copy", 20, 1e-4),
    Lineage("gpt2-format-48.text", "gpt2-format-48", "child", "text", 20, 1e-4),
    Lineage("gpt2-mix-128.copy", "gpt2-mix-128", "child", "copy", 30, 1e-3),
    Lineage("gpt2-mix-128.text", "gpt2-mix-128", "child", "text", 30, 1e-3),
    Lineage("mistral-text-96.noise", "mistral-text-96", "noise-copy"),
    Lineage("mistral-text-96.step", "mistral-text-96", "step-copy"),
)
"""The derived models of the family tree: 8 children of 4 parents, and both copies of 2 base
models (see the module)."""
SPECIALISTS: tuple[Lineage, ...] = (
    Lineage("mistral-text-96.reviews", "mistral-text-96", "child", "reviews", 800, 2e-3),
)
"""Children whose pretraining is continued long on one sub-task's corpus, for routing
(lensray.stages.route, configs/route-demo.yaml): mistral-text-96 on aspect reviews under the
``es-sde`` design, so it answers the reviews half of the zoo's mixed task and none of its cipher
half. Built with the lineages, into the same folder, but not part of their family tree."""
DERIVED = LINEAGES + SPECIALISTS
"""Every model built into the lineages' folder, in the manifest's order."""


def _config_hash(seed: int, zoo_hash: str) -> str:
    """The lineages' config hash: their recipe, the seed and the base zoo's config hash."""
    blob = json.dumps(
        {
            "version": _BUILD_VERSION,
            "seed": seed,
            "zoo": zoo_hash,
            "lineages": [asdict(m) for m in DERIVED],
            "step_lr_share": STEP_LR_SHARE,
            "noise_scale": NOISE_SCALE,
            "gene_texts": GENE_TEXTS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def gene_texts(task: str, seed: int = 0) -> list[str]:
    """The texts the lineages' family tree is fingerprinted on (their genes.txt): the first
    GENE_TEXTS / 2 records of the task file `task`, as a model reads them
    (lensray.stages.phylo.genes.texts_from_data), then as many documents of the text corpus
    (deterministic in `seed`)."""
    import numpy as np

    from lensray.data.dataset import DataConfig
    from lensray.stages.phylo.genes import texts_from_data

    rng = np.random.default_rng([seed, 31])
    half = GENE_TEXTS // 2
    return texts_from_data(DataConfig(path=task))[:half] + [_corpus_doc("text", rng) for _ in range(half)]


def _build_lineage(index: int, zoo_dir: str, parent_path: str, seed: int) -> dict[str, Any]:
    """Make and save DERIVED[index] into zoo_dir/lineages/models (runs in a worker process)."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    start = time.perf_counter()
    lineage = DERIVED[index]
    spec = next(m for m in ZOO if m.name == lineage.parent)
    tokenizer = transformers.AutoTokenizer.from_pretrained(Path(zoo_dir) / "tokenizer")
    model = transformers.AutoModelForCausalLM.from_pretrained(parent_path)
    own_seed = seed * 1000 + 100 + index  # the base zoo's models have seed * 1000 + 0..7
    loss = None
    if lineage.kind == "noise-copy":
        generator = torch.Generator().manual_seed(own_seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * NOISE_SCALE * p.pow(2).mean().sqrt())
        corpus, steps = None, 0
    else:
        child = lineage.kind == "child"
        corpus, steps = (lineage.corpus, lineage.steps) if child else (spec.corpus, 1)
        model, loss, _ = _pretrain(
            replace(spec, name=lineage.name, corpus=corpus, steps=steps), tokenizer, own_seed,
            init=model, lr=lineage.lr if child else STEP_LR_SHARE * spec.lr,
        )
    path = Path(zoo_dir) / "lineages" / "models" / lineage.name
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return {
        "name": lineage.name,
        "path": str(path.relative_to(Path(zoo_dir) / "lineages")),
        "parent": lineage.parent,
        "kind": lineage.kind,
        "family": lineage.family,
        "n_params": sum(p.numel() for p in model.parameters()),
        "corpus": corpus,
        "steps": steps,
        "specialist": lineage in SPECIALISTS,
        "loss": None if loss is None else round(loss, 4),
        "build_s": time.perf_counter() - start,
    }


def build_lineages(zoo_dir: Path, seed: int = 0, force: bool = False) -> Path:
    """Build the lineages of the zoo at `zoo_dir` into `zoo_dir/lineages` (see the module
    docstring) and return their manifest's path.

    A no-op when the manifest already holds this build's config hash (which covers the base
    zoo's), unless `force`. Prints one progress line per model. Raises FileNotFoundError when
    `zoo_dir` holds no built zoo, StorageError when `zoo_dir` or its `lineages` folder holds
    another command's files; a rebuild replaces the lineages' own files and nothing else.
    """
    zoo_dir = Path(zoo_dir)
    zoo = load_manifest(zoo_dir)
    out_dir = zoo_dir / "lineages"
    manifest_path = out_dir / "manifest.json"
    config_hash = _config_hash(seed, zoo["config_hash"])
    if not force and manifest_path.is_file() and json.loads(manifest_path.read_text()).get("config_hash") == config_hash:
        print(f"lineages: {out_dir} is up to date (config {config_hash}); use force to rebuild")
        return manifest_path
    parents = {m["name"]: m["path"] for m in zoo["models"]}
    missing = sorted({m.parent for m in DERIVED} - set(parents))
    if missing:
        raise StorageError(f"the zoo at {zoo_dir} has no models {missing}: rebuild it with `lensray zoo build --out {zoo_dir} --force`")
    start = time.perf_counter()
    _claim_zoo(zoo_dir)
    _claim_zoo(out_dir, LINEAGES_OWNER)
    models_dir = out_dir / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    manifest_path.unlink(missing_ok=True)  # half-built lineages must not look complete

    # As build_zoo: one single-threaded process per model, each on its own seed.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    specs = {m.name: m for m in ZOO}
    cost = [specs[m.parent].hidden ** 2 * specs[m.parent].layers * max(1, m.steps) for m in DERIVED]
    entries: list[dict[str, Any] | None] = [None] * len(DERIVED)
    procs = max(1, min(len(DERIVED), os.cpu_count() or 1))
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        order = sorted(range(len(DERIVED)), key=lambda i: -cost[i])  # longest first
        jobs = {pool.submit(_build_lineage, i, str(zoo_dir), parents[DERIVED[i].parent], seed): i for i in order}
        for done, job in enumerate(as_completed(jobs), 1):
            entry = job.result()
            entries[jobs[job]] = entry
            trained = f"{entry['steps']:3d} steps on {entry['corpus']:6s} loss {entry['loss']:.3f}" if entry["steps"] else "weight noise"
            print(
                f"lineages: [{done}/{len(DERIVED)}] {entry['name']:24s} {entry['kind']:10s} of {entry['parent']:16s} "
                f"{trained}  ({entry.pop('build_s'):.1f}s)",
                flush=True,
            )
    genes = out_dir / "genes.txt"
    genes.write_text("\n".join(gene_texts(zoo["task"], seed)) + "\n")
    manifest = {
        "config_hash": config_hash,
        "seed": seed,
        "zoo_config_hash": zoo["config_hash"],
        "genes": genes.name,
        "build_s": round(time.perf_counter() - start, 1),
        "models": entries,
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"lineages: {len(DERIVED)} models built in {manifest['build_s']}s -> {manifest_path}")
    return manifest_path


def load_lineages(zoo_dir: Path) -> dict[str, Any]:
    """Read `zoo_dir/lineages/manifest.json`, with every model's path made absolute.

    Raises FileNotFoundError naming the command that builds them when there is none.
    """
    out_dir = Path(zoo_dir) / "lineages"
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no lineages in {zoo_dir}: build them with `lensray zoo build --out {zoo_dir}`")
    manifest = json.loads(path.read_text())
    for entry in manifest["models"]:
        entry["path"] = str((out_dir / entry["path"]).resolve())
    manifest["genes"] = str((out_dir / manifest["genes"]).resolve())
    return manifest
