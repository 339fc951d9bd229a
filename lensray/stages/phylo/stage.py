"""The `phylo` pre-sweep stage (`stages: {pre: [phylo]}`): fingerprint every model of the pool,
write the distances and the tree, drop near-duplicates, and, when losses at T are known for some
models (`phylo.scores`), attach a prior to every Candidate, order the pool most promising first
(the sweep probes in that order), and predict the unknown scores as PhyloLM does.

Files written into the experiment folder::

    phylo_distances.parquet   the genetic distances, one row and one column per model
    phylo_tree.nwk            the neighbour-joining tree (Newick)
    phylo_tree.png            its dendrogram, models coloured by family (the name's first
                              dash-separated word: the architecture, for the zoo's models)
    phylo.json                per model: tokens and seconds its fingerprint cost, cached or not,
                              its error if it failed; the near-duplicate groups; the priors; the
                              score prediction (leave-one-family-out Pearson r, predicted scores)

A model whose fingerprint fails stays in the pool, unfingerprinted, with the reason printed and
in phylo.json: a bad model never fails the others. Only the models and the settings enter the
fingerprint cache's key, so re-running a sweep re-uses every fingerprint.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from lensray.core.errors import ConfigError
from lensray.core.types import Pool
from lensray.stages.base import register_stage

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig

FILES = ("phylo_distances.parquet", "phylo_tree.nwk", "phylo_tree.png", "phylo.json")


def read_scores(path: str | Path) -> dict[str, float]:
    """Known losses (or errors) at T by model, from a CSV with columns `model` and `score`, or
    from a curves file (`lensray record`'s schema, lensray.core.curves): its largest size."""
    from lensray.core.curves import read_curves
    from lensray.core.errors import CurveError

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"phylo.scores={str(path)!r}: no such file; give a CSV with columns model,score or leave it empty")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "config name" in rows[0]:
        try:
            curves = read_curves(path)
        except CurveError as err:
            raise ConfigError(f"phylo.scores={str(path)!r}: {err}") from None
        return dict(zip(curves.candidates, map(float, curves.losses[:, -1])))
    if not rows or not {"model", "score"} <= set(rows[0]):
        raise ConfigError(f"phylo.scores={str(path)!r}: needs the columns model and score (one row per model), "
                          "or a curves file (lensray record's)")
    try:
        return {r["model"]: float(r["score"]) for r in rows}
    except ValueError as err:
        raise ConfigError(f"phylo.scores={str(path)!r}: a score is not a number ({err})") from None


def family_of(model) -> str:
    """The family a model is coloured by in the tree."""
    return model.name.split("-")[0]


def config_genes(cfg: "SelectConfig") -> list[str]:
    """The genes `cfg.phylo` draws: from `phylo.genes_path`, else from the data set."""
    from lensray.stages.phylo.genes import draw_genes, texts_from_data, texts_from_file

    p = cfg.phylo
    if not p.genes_path and cfg.data is None:
        raise ConfigError("the phylo stage needs texts to cut genes from: set phylo.genes_path or a data section")
    texts = texts_from_file(p.genes_path) if p.genes_path else texts_from_data(cfg.data)
    return draw_genes(texts, n=p.genes, seed=p.seed, min_chars=p.min_chars, max_chars=p.max_chars)


def by_prior(pool: Pool) -> Pool:
    """The pool with its most promising candidates (lowest prior loss) first, those with no
    prior last in their order: the sweep launches its trials in this order."""
    rank = {c.name: pool.priors.get(c.name, {}).get("phylo_loss", float("inf")) for c in pool.candidates}
    return Pool(sorted(pool.candidates, key=lambda c: rank[c.name]), pool.dropped, pool.priors)


def score_prediction(names: list[str], d, known: dict[str, float], families: dict[str, str]) -> dict:
    """PhyloLM's score prediction from the distances `d` between `names`: the leave-one-family-out
    Pearson r over the models with `known` scores (when they span two families or more), and the
    predicted score of every other model from a regressor fitted on all the known ones."""
    import numpy as np

    from lensray.stages.phylo.score import PhyloRegressor, leave_one_family_out

    idx = [i for i, n in enumerate(names) if n in known]
    rest = [i for i in range(len(names)) if i not in idx]
    y = [known[names[i]] for i in idx]
    fam = [families[names[i]] for i in idx]
    out: dict = {"known": len(idx), "families": len(set(fam)), "lofo_pearson_r": None, "predicted": {}}
    d = np.asarray(d)
    if len(set(fam)) >= 2 and len(idx) >= 3:
        out["lofo_pearson_r"] = leave_one_family_out(d[np.ix_(idx, idx)], y, fam)
    if rest and len(idx) >= 2:
        reg = PhyloRegressor().fit(d[np.ix_(idx, idx)], y)
        out["predicted"] = dict(zip((names[i] for i in rest), map(float, reg.predict(d[np.ix_(rest, idx)]))))
    return out


class PhyloStage:
    """Fingerprints, tree, near-duplicates and priors of the pool (see the module)."""

    name = "phylo"

    def run(self, cfg: "SelectConfig", pool: Pool, folder: Path) -> Pool:
        from lensray.stages.phylo.duplicates import drop_reasons, near_duplicates
        from lensray.stages.phylo.fingerprint import fingerprint_models
        from lensray.stages.phylo.prior import priors
        from lensray.stages.phylo.similarity import distance, write_matrix
        from lensray.stages.phylo.tree import nj_tree, plot_tree, write_newick
        from lensray.sweep.run import init_ray

        p = cfg.phylo
        genes = config_genes(cfg)
        models = list({c.model.name: c.model for c in pool.candidates}.values())
        init_ray(cfg)
        print(f"phylo: fingerprinting {len(models)} models on {len(genes)} genes x {p.samples} samples "
              "(one Ray task each; cached ones are read back)", flush=True)
        t0 = time.perf_counter()
        prints = fingerprint_models(models, genes, p)
        made = sum(fp.ok and not fp.cached for fp in prints.values())
        print(f"phylo: {made} made, {sum(fp.cached for fp in prints.values())} from the cache, "
              f"{sum(not fp.ok for fp in prints.values())} failed, in {time.perf_counter() - t0:.0f} s", flush=True)
        for fp in prints.values():
            if not fp.ok:
                print(f"phylo: {fp.model}: no fingerprint, kept unfingerprinted: {fp.error}", file=sys.stderr)
        done = [m for m in models if prints[m.name].ok]
        names = [m.name for m in done]
        summary = {"genes": len(genes), "models": {n: fp.to_dict() | {"alleles": None} for n, fp in prints.items()},
                   "groups": [], "priors": {}}
        folder.mkdir(parents=True, exist_ok=True)
        if len(done) >= 2:
            d = distance([prints[n].alleles for n in names])
            write_matrix(folder / FILES[0], names, d)
            families = {m.name: family_of(m) for m in done}
            if len(done) >= 3:
                tree = nj_tree(names, d)
                write_newick(tree, folder / FILES[1])
                plot_tree(tree, folder / FILES[2], families)
            groups = near_duplicates(names, d, {n: prints[n].n_params for n in names}, p.duplicate_threshold)
            summary["groups"] = [{"kept": g.representative, "dropped": g.distances} for g in groups]
            if groups and not p.probe_all:
                pool = pool.drop(drop_reasons(pool, groups))
            if p.scores:
                known = {n: v for n, v in read_scores(p.scores).items() if n in names}
                found = priors(names, d, known, p.prior_neighbours, p.prior_bandwidth, p.prior_level)
                summary["priors"] = {n: pr.to_dict() for n, pr in found.items()}
                summary["score_prediction"] = score_prediction(names, d, known, families)
                attached = {c.name: found[c.model.name].to_dict() for c in pool.candidates if c.model.name in found}
                pool = by_prior(Pool(pool.candidates, pool.dropped, {**pool.priors, **attached}))
        (folder / FILES[3]).write_text(json.dumps(summary, indent=1, default=str) + "\n")
        return pool


def run_phylo(cfg: "SelectConfig", scores: str = "") -> tuple[Path, dict]:
    """`lensray phylo CONFIG`: the stage on the config's pool, outside any sweep, into
    `<output>/<name>-phylo/` (its files are rewritten on every run; the fingerprints come from
    the cache). `scores`: a CSV of known scores, instead of `phylo.scores`. Returns the folder
    and phylo.json's content."""
    from dataclasses import replace

    from lensray.cluster.storage import Storage
    from lensray.pipeline import initial_pool

    if scores:
        cfg = replace(cfg, phylo=replace(cfg.phylo, scores=scores))
    if cfg.phylo.scores:
        read_scores(cfg.phylo.scores)  # a bad file fails before Ray starts
    storage = Storage(cfg.output, f"{cfg.name}-phylo")
    PhyloStage().run(cfg, initial_pool(cfg), storage.local)
    storage.push(*FILES)
    return storage.local, json.loads((storage.local / FILES[3]).read_text())


register_stage("pre", PhyloStage())
