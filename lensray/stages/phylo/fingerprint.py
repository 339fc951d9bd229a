"""Fingerprints: each model's alleles on the genes, sampled with transformers, one Ray task per
model, cached on disk; and `PhyloConfig`, the settings of the whole phylo stage.

For every gene a model generates N = `samples` short continuations (at most `max_new_tokens`
new tokens, temperature `temperature`, nucleus `top_p`, no top-k cut unless `top_k`), all N in
one `generate` call with `num_return_sequences=N`, `genes_per_call` genes at a time (left
padded; a gene longer than the model's context keeps its last tokens). Each continuation's
allele and the frequencies are `lensray.stages.phylo.alleles`.

    from lensray.stages.phylo.fingerprint import PhyloConfig, fingerprint_models
    prints = fingerprint_models(models, genes, PhyloConfig(samples=32))   # {name: Fingerprint}

Each model is one Ray task (`cpus_per_model` CPUs, `gpus_per_model` GPUs; a local Ray is
started when none is running). A model that cannot be loaded or run fails its own Fingerprint
(`error` says why), never the others. A finished fingerprint is written to `cache_dir` under a
key of everything that changes it: the model's identity (a local folder: the SHA-256 of its
files; a hub id: its revision), the genes, and N, max_new_tokens, temperature, top_p, top_k,
seed and genes_per_call (the batches the sampler's random stream runs through). A run finds it
there and generates nothing (`cached`; hashing the files is all it costs). A hub model whose
revision cannot be looked up is fingerprinted each time, not cached.

Each model samples from its own random stream, seeded by `seed` and its identity: one shared
stream would make models with similar next-token distributions (and the same vocabulary)
draw the very same samples, so their distance would shrink below the sampling noise that
models with other vocabularies see. Copies of the same files still get the same stream, so
they are 0 apart.

Cost: `Fingerprint.tokens` (new tokens generated, up to each sample's end token) and `seconds`
(wall time of its task: loading and generating, and for a worker's first model its imports of
torch and transformers) are what making it cost.

Measured on the zoo's eight models with the defaults (G = 128, N = 32; genes from the zoo's
task), `python -m lensray.stages.phylo.fingerprint zoo`: 15,600 to 20,400 tokens and 12 to 54 s
per model on 2 busy CPU cores (the two slowest ran first, in fresh workers); a second run read
all eight from the cache in 0.0 s. The distance between one model's fingerprints under seeds 0
and 1 (the sampling noise) had median 0.104 (0.002 to 0.23, and 1.7 for qwen2-format-96, whose
saved tokenizer transformers loads as a character-level Qwen2Tokenizer); the closest two
different models, the copy-corpus neox-copy-48 and llama-copy-96, were 0.039 apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from lensray.core.errors import ConfigError, ProbeError, failure_reason, one_line
from lensray.core.types import ModelSpec
from lensray.stages.phylo.alleles import ALLELE_CHARS, Alleles, allele_frequencies

_CACHE_VERSION = 1


@dataclass(frozen=True)
class PhyloConfig:
    """The phylo stage: PhyloLM fingerprints of every model, the tree, near-duplicates, priors."""

    genes: int = 128
    """Genes G: prompts every model is fingerprinted on (PhyloLM: 128)."""
    samples: int = 32
    """Continuations N sampled per gene and model (PhyloLM: 32)."""
    max_new_tokens: int = 5
    """Longest continuation, in new tokens (an allele keeps its first 4 characters)."""
    temperature: float = 0.7
    """Sampling temperature (PhyloLM: 0.7)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens up to this probability mass (1 = all)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = no cut, as in PhyloLM)."""
    seed: int = 0
    """Seed of the genes' draw and, with each model's identity, of its sampling stream."""
    min_chars: int = 20
    """Shortest gene, in characters (shorter texts are used whole)."""
    max_chars: int = 100
    """Longest gene, in characters."""
    genes_path: str = ""
    """Text file whose lines the genes are cut from; empty = the records of the data set (`data`)."""
    genes_per_call: int = 8
    """Genes per `generate` call (x samples sequences in one batch)."""
    cpus_per_model: float = 1.0
    """CPUs Ray reserves for each model's fingerprint (also its torch threads)."""
    gpus_per_model: float = 0.0
    """GPUs Ray reserves for each model's fingerprint (> 0: it runs on CUDA)."""
    duplicate_threshold: float = 0.05
    """Models within this genetic distance of each other are near-duplicates: only the cheapest
    of each group is probed (0 = only identical fingerprints)."""
    probe_all: bool = False
    """Probe every candidate: near-duplicates are reported, not dropped."""
    prior_neighbours: int = 3
    """Relatives with measured values a prior is drawn from (the k nearest)."""
    prior_bandwidth: float = 0.0
    """Distance scale h of the relatives' weights exp(-d / h) (0 = the median distance between
    the models)."""
    prior_level: float = 0.9
    """Coverage of a prior's interval."""
    scores: str = ""
    """CSV of known losses (or errors) at T by model (columns model, score), or a curves file
    (`lensray record`'s; its largest size): each Candidate then gets a prior from its nearest
    relatives among them; empty = no priors."""
    cache_dir: str = ""
    """Where fingerprints are cached (empty = $LENSRAY_CACHE/phylo, else ~/.cache/lensray/phylo)."""

    def __post_init__(self) -> None:
        for name in ("genes", "samples", "max_new_tokens", "genes_per_call", "prior_neighbours", "min_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"phylo.{name}={getattr(self, name)}: must be at least 1")
        if self.max_chars < self.min_chars:
            raise ConfigError(f"phylo.max_chars={self.max_chars}: must be >= phylo.min_chars ({self.min_chars})")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"phylo.temperature={self.temperature}: must be a positive number, e.g. 0.7")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"phylo.top_p={self.top_p}: must be in (0, 1], e.g. 1.0")
        for name in ("top_k", "gpus_per_model", "prior_bandwidth"):
            if getattr(self, name) < 0:
                raise ConfigError(f"phylo.{name}={getattr(self, name)}: must be >= 0")
        if self.cpus_per_model <= 0:
            raise ConfigError(f"phylo.cpus_per_model={self.cpus_per_model}: must be > 0, e.g. 1")
        if not (self.duplicate_threshold >= 0 and math.isfinite(self.duplicate_threshold)):
            raise ConfigError(f"phylo.duplicate_threshold={self.duplicate_threshold}: must be >= 0 (0 = no near-duplicates)")
        if not 0 < self.prior_level < 1:
            raise ConfigError(f"phylo.prior_level={self.prior_level}: must be in (0, 1), e.g. 0.9")
        if self.genes_path and not Path(self.genes_path).expanduser().is_file():
            raise ConfigError(f"phylo.genes_path={self.genes_path!r}: no such file; give a text file (one text a line) or leave it empty to use the data set")

    @property
    def cache(self) -> Path:
        """The cache folder."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return Path(os.environ.get("LENSRAY_CACHE") or Path.home() / ".cache" / "lensray") / "phylo"

    def sampling(self) -> dict[str, Any]:
        """Everything besides the model and the genes that changes a fingerprint (its cache key)."""
        return {
            "samples": self.samples, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
            "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed, "genes_per_call": self.genes_per_call,
            "allele_chars": ALLELE_CHARS,
        }


@dataclass(frozen=True)
class Fingerprint:
    """One model's alleles on the genes, what making them cost, or why it failed."""

    model: str
    """The model's name (ModelSpec.name)."""
    alleles: Alleles = field(default_factory=list)
    """P(allele | gene) for each gene, in the genes' order (empty when it failed)."""
    tokens: int = 0
    """New tokens generated to make it (each sample up to its end token)."""
    seconds: float = 0.0
    """Wall seconds its task took to make it: loading the model and generating (and, for a
    worker's first model, importing torch and transformers)."""
    n_params: int = 0
    """The model's parameter count, as loaded."""
    cached: bool = False
    """Read from the cache: this run spent nothing on it but hashing the model's files."""
    error: str = ""
    """Why it failed, in one line (empty when it did not)."""

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Fingerprint":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


def _sha256_files(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _hub_revision(repo_id: str) -> str | None:
    """The commit a hub id resolves to: asked of the hub, else the local hub cache's `main`."""
    try:
        from huggingface_hub import HfApi, constants
    except ImportError:
        return None
    try:
        return HfApi().model_info(repo_id, timeout=10).sha
    except Exception:  # offline, unknown id, gated: the local cache may still know
        ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        return ref.read_text().strip() if ref.is_file() else None


def model_identity(model: ModelSpec) -> str | None:
    """What the model's fingerprint depends on: `files:<sha256>` of a local folder's files,
    `hub:<id>@<revision>` of a hub id, None when neither can be had (a missing folder, a hub
    id the hub and the local cache do not know): then it is not cached."""
    where = model.path or model.name
    local = Path(where).expanduser()
    if local.is_dir():
        return f"files:{_sha256_files(local)}"
    if local.is_absolute() or where.startswith((".", "~")):
        return None
    revision = _hub_revision(where)
    return f"hub:{where}@{revision}" if revision else None


def cache_key(identity: str, genes: Sequence[str], cfg: PhyloConfig) -> str:
    """The cache key of a fingerprint of the model `identity` on `genes` under `cfg`."""
    blob = json.dumps([_CACHE_VERSION, identity, list(genes), cfg.sampling()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def sampling_seed(cfg: PhyloConfig, stream: str) -> int:
    """The torch seed of the random stream `stream` (a model's identity) under `cfg.seed`."""
    return int(hashlib.sha256(f"{cfg.seed}\0{stream}".encode()).hexdigest()[:15], 16)


def fingerprint_model(model: ModelSpec, genes: Sequence[str], cfg: PhyloConfig, stream: str = "") -> Fingerprint:
    """Sample `model`'s alleles on `genes` in this process (what each Ray task runs), from the
    random stream `stream` (default: the model's path). Every failure is returned as the
    Fingerprint's `error`, never raised."""
    t0 = time.perf_counter()
    try:
        alleles, tokens, n_params = _sample(model, genes, cfg, sampling_seed(cfg, stream or model.path or model.name))
    except ProbeError as e:
        return Fingerprint(model.name, seconds=time.perf_counter() - t0, error=e.reason)
    except Exception as e:  # a model that loads but cannot generate (bad config, OOM, ...)
        return Fingerprint(model.name, seconds=time.perf_counter() - t0, error=f"cannot sample from it: {one_line(e)}")
    return Fingerprint(model.name, alleles, tokens, time.perf_counter() - t0, n_params)


def _sample(model: ModelSpec, genes: Sequence[str], cfg: PhyloConfig, seed: int) -> tuple[Alleles, int, int]:
    import torch
    from transformers import GenerationConfig

    from lensray.data.dataset import DataConfig
    from lensray.probe.hf.loading import load_model, load_tokenizer
    from lensray.probe.hf.recipe import ProbeSpec

    # The "data" of a fingerprint is the genes: a one-token prompt and its continuation must fit.
    spec = ProbeSpec(model.name, model.path or model.name, DataConfig(path="phylo genes", max_length=cfg.max_new_tokens + 1),
                     trust_remote_code=model.trust_remote_code)
    torch.set_num_threads(max(1, int(cfg.cpus_per_model)))
    tok = load_tokenizer(spec)
    tok.padding_side = tok.truncation_side = "left"
    lm, n_params = load_model(spec, torch)
    device = "cuda" if cfg.gpus_per_model > 0 and torch.cuda.is_available() else "cpu"
    lm.to(device).eval()
    context = getattr(lm.config, "max_position_embeddings", None) or getattr(lm.config, "n_positions", None)
    eos = lm.generation_config.eos_token_id if lm.generation_config.eos_token_id is not None else tok.eos_token_id
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
    gen = GenerationConfig(
        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None,
        max_new_tokens=cfg.max_new_tokens, num_return_sequences=cfg.samples,
        pad_token_id=tok.pad_token_id, eos_token_id=eos,
    )
    torch.manual_seed(seed)
    alleles: Alleles = []
    tokens = 0
    for start in range(0, len(genes), cfg.genes_per_call):
        batch = list(genes[start:start + cfg.genes_per_call])
        enc = tok(batch, return_tensors="pt", padding=True, truncation=bool(context),
                  max_length=context - cfg.max_new_tokens if context else None).to(device)
        with torch.no_grad():
            out = lm.generate(**enc, generation_config=gen)
        new = out[:, enc["input_ids"].shape[1]:]
        ends = torch.isin(new, eos_ids)
        lengths = torch.where(ends.any(1), ends.int().argmax(1) + 1, new.shape[1])
        tokens += int(lengths.sum())
        texts = tok.batch_decode(new, skip_special_tokens=True)
        alleles += [allele_frequencies(texts[i * cfg.samples:(i + 1) * cfg.samples]) for i in range(len(batch))]
    return alleles, tokens, n_params


def fingerprint_models(models: Sequence[ModelSpec], genes: Sequence[str], cfg: PhyloConfig) -> dict[str, Fingerprint]:
    """Each model's Fingerprint on `genes`, by name: from the cache, or made by one Ray task per
    model (a failed one carries its `error`). Finished ones are written to the cache."""
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"pool.models: each model is fingerprinted once; repeated names {repeated}")
    found: dict[str, Fingerprint] = {}
    todo: list[tuple[ModelSpec, str, str | None]] = []
    for m in models:
        identity = model_identity(m)
        key = cache_key(identity, genes, cfg) if identity else None
        entry = cfg.cache / f"{key}.json"
        if key and entry.is_file():
            found[m.name] = Fingerprint.from_dict(json.loads(entry.read_text()) | {"model": m.name, "cached": True})
        else:
            todo.append((m, identity or m.path or m.name, key))
    if todo:
        found |= _run_tasks(todo, genes, cfg)
    return {n: found[n] for n in names}


def _run_tasks(todo: list[tuple[ModelSpec, str, str | None]], genes: Sequence[str], cfg: PhyloConfig) -> dict[str, Fingerprint]:
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    task = ray.remote(num_cpus=cfg.cpus_per_model, num_gpus=cfg.gpus_per_model, max_retries=0)(fingerprint_model)
    refs = [task.options(name=f"phylo:{m.name}").remote(m, list(genes), cfg, stream) for m, stream, _ in todo]
    out: dict[str, Fingerprint] = {}
    for (m, _, key), ref in zip(todo, refs):
        try:
            fp = ray.get(ref)
        except Exception as e:  # the task's worker died (killed, out of memory)
            fp = Fingerprint(m.name, error=f"its fingerprint task died: {failure_reason(e)}")
        if fp.ok and key:
            _write_entry(cfg.cache / f"{key}.json", fp)
        out[m.name] = fp
    return out


def _write_entry(path: Path, fp: Fingerprint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(fp.to_dict()))
    os.replace(tmp, path)


def _measure(argv: Sequence[str] | None = None) -> None:
    """Fingerprint a zoo's models on its task, twice (seeds 0 and 1), on a local Ray: each
    model's cost, the distance between its two fingerprints (the sampling noise) and its nearest
    other model."""
    import argparse

    import numpy as np

    from lensray.data.dataset import DataConfig
    from lensray.stages.phylo.genes import draw_genes, texts_from_data
    from lensray.stages.phylo.similarity import distance
    from lensray.zoo.build import load_manifest

    parser = argparse.ArgumentParser(prog="python -m lensray.stages.phylo.fingerprint", description=_measure.__doc__)
    parser.add_argument("zoo", type=Path, help="a built zoo (lensray zoo build)")
    parser.add_argument("--genes", type=int, default=PhyloConfig.genes)
    parser.add_argument("--samples", type=int, default=PhyloConfig.samples)
    parser.add_argument("--cache-dir", default="", help="fingerprint cache (default: PhyloConfig's)")
    args = parser.parse_args(argv)
    manifest = load_manifest(args.zoo)
    models = [ModelSpec(m["name"], m["path"]) for m in manifest["models"]]
    cfg = PhyloConfig(genes=args.genes, samples=args.samples, cache_dir=args.cache_dir)
    genes = draw_genes(texts_from_data(DataConfig(path=manifest["task"])), cfg.genes, cfg.seed, cfg.min_chars, cfg.max_chars)
    runs = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        runs.append(fingerprint_models(models, genes, replace(cfg, seed=seed)))
        print(f"seed {seed}: {time.perf_counter() - t0:.1f} s for {len(models)} models")
    names = [m.name for m in models]
    d = distance([runs[0][n].alleles for n in names] + [runs[1][n].alleles for n in names])
    print(f"G={cfg.genes} N={cfg.samples}: model, tokens, seconds (seed 0), cached, d(seed 0, seed 1), nearest other")
    for i, n in enumerate(names):
        fp = runs[0][n]
        others = [j for j in range(len(names)) if j != i]
        j = min(others, key=lambda j: d[i, j])
        print(f"  {n:18s} {fp.tokens:7d} {fp.seconds:6.1f} {fp.cached!s:5s}  {d[i, i + len(names)]:.3f}  {names[j]} {d[i, j]:.3f}")
    print(f"median d(seed 0, seed 1) {np.median(np.diag(d[:len(names), len(names):])):.3f}")


if __name__ == "__main__":  # python -m lensray.stages.phylo.fingerprint zoo --genes 128 --samples 32
    from lensray.stages.phylo.fingerprint import _measure as measure  # the module's own name, for Ray

    measure()
