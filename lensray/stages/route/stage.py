"""The `route` post-sweep stage (`stages: {post: [route]}`) and `lensray route CONFIG`: SelectLLM
routing over the selection's finalists, from the per-query results their probes kept
(`probe.metric: task`; lensray.stages.route.queries).

The finalists are the `route.finalists` best candidates of the ranking with per-query results
(failed ones left out). Every policy is cross-validated against the single finalists, their
majority vote and the oracle (lensray.stages.route.evaluate); then a router is trained on all
the held-out queries and saved for `lensray serve`. Files written into the experiment folder::

    route.json          the cross-validated evaluation (RouteResult: scores, hull, AIQ, F1)
    route.png           accuracy against FLOPs and latency per query, hull and oracle
    route_router.json   the trained router's settings and finalists   (lensray.stages.route.saved)
    route_router.npz    its weights

Each finalist is served with the weights its probe fine-tuned at the size its results come from:
with the stage configured, the sweep's probes keep them (ProbeConfig.weights_path, under
`<output>/<name>/weights/<candidate>/`). A selection swept without the stage kept none; its
finalists are then served pretrained, and route_router.json says so (`fine_tuned: false`).

selection.json gains "route": route.json's content plus each finalist's probed size ("sizes");
report.md gains a Routing section from it (`route_section`).

`lensray route CONFIG` runs the stage on a finished selection's folder without sweeping again:
the Selection is read back from selection.json and the sweep's record (sweep.jsonl), and the
report files are written anew with the Routing section::

    from lensray.stages.route.stage import run_route
    folder, selection = run_route(load_config("configs/route-demo.yaml"))
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lensray.core.errors import ConfigError
from lensray.core.types import Selection
from lensray.stages.base import register_stage, require_task_probes

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig
    from lensray.stages.route.evaluate import RouteData
    from lensray.stages.route.saved import Finalist

FILES = ("route.json", "route.png")
"""The evaluation's files (the router's: lensray.stages.route.saved.FILES)."""


def check_route(cfg: SelectConfig) -> None:
    """What routing needs of a config, checked before Ray starts: probes that keep per-query
    results, two finalists or more, and a query in every fold."""
    require_task_probes(cfg, "the route stage routes on each held-out query's result")
    if cfg.route.finalists < 2:
        raise ConfigError(f"route.finalists={cfg.route.finalists}: routing needs at least 2 finalists, e.g. 3")
    if cfg.data is not None and cfg.route.folds > cfg.data.eval_size:
        raise ConfigError(
            f"route.folds={cfg.route.folds} exceeds data.eval_size={cfg.data.eval_size}: every fold needs a "
            "held-out query; lower route.folds or raise data.eval_size"
        )


def finalist_of(cfg: SelectConfig, name: str, data: RouteData, j: int, weights: str = "") -> Finalist:
    """How serving runs finalist `name` (column j of `data`): its model (the fine-tuned `weights`
    its probe kept, else the pretrained model), data section and costs."""
    from lensray.stages.route.saved import Finalist

    try:
        candidate = cfg.candidate(name)
    except KeyError:
        raise ConfigError(f"route: finalist {name!r} of the selection is not in pool: route with the config "
                          "the selection was run with") from None
    return Finalist(
        name=name, model=weights or candidate.model.path or candidate.model.name, fine_tuned=bool(weights),
        data=cfg.candidate_data(candidate).to_dict(),
        trust_remote_code=candidate.model.trust_remote_code, accuracy=float(data.correct[:, j].mean()),
        flops=float(data.flops[:, j].mean()), latency_s=float(data.latency[:, j].mean()),
    )


class RouteStage:
    """SelectLLM routing over the finalists: evaluation, files, trained router (see the module)."""

    name = "route"

    def run(self, cfg: SelectConfig, selection: Selection, folder: Path) -> tuple[Selection, list[Path]]:
        from lensray.stages.route.evaluate import (
            cross_validate,
            plot_accuracy_cost,
            write_route_json,
        )
        from lensray.stages.route.queries import (
            pick_finalists,
            query_results,
            route_data,
        )
        from lensray.stages.route.router import Router, make_encoder
        from lensray.stages.route.saved import save_router

        rc = cfg.route
        results = query_results(selection.observations)
        names = pick_finalists(selection.doc, results, rc.finalists)
        if len(names) < rc.finalists:
            print(f"route: {len(names)} of route.finalists={rc.finalists} candidates have per-query results; "
                  f"routing over {', '.join(names)}", file=sys.stderr)
        data = route_data(results, names)
        encoder = make_encoder(rc)  # one for the folds and the final router: a hub encoder embeds each query once
        result = cross_validate(data, rc, lambda: Router(rc, encoder))
        folder.mkdir(parents=True, exist_ok=True)
        files = [write_route_json(result, folder / FILES[0]), plot_accuracy_cost(result, folder / FILES[1])]
        router = Router(rc, encoder).fit(data.queries, data.correct)
        files += save_router(folder, router, [finalist_of(cfg, n, data, j, results[n].weights) for j, n in enumerate(names)], data.n)
        doc = {**selection.doc, "route": result.to_dict() | {"sizes": {n: results[n].size for n in names}}}
        return Selection(doc, selection.observations, selection.fits), files


def finished_selection(cfg: SelectConfig) -> Selection:
    """The finished selection in `<output>/<name>/`, read back from selection.json and the
    sweep's record (pulled from the storage first); a ConfigError when there is none."""
    import json

    from lensray.report.rank import final_fits
    from lensray.sweep.record import STATE_FILE, read_state

    storage = cfg.storage()
    storage.pull("selection.json", STATE_FILE)
    path = storage.local / "selection.json"
    if not path.is_file():
        raise ConfigError(f"{storage.uri()} holds no finished selection (no selection.json): run "
                          "`lensray select CONFIG` first, or name that selection's `name` and `output`")
    doc = json.loads(path.read_text())
    state = read_state(storage.local / STATE_FILE)
    observations = {e["candidate"]: state.observations.get(e["candidate"], []) for e in doc["ranking"]}
    priors = {e["candidate"]: e["prior"] for e in doc["ranking"] if e.get("prior")}
    return Selection(doc, observations, final_fits(cfg, observations, priors))


def run_route(cfg: SelectConfig) -> tuple[Path, Selection]:
    """`lensray route CONFIG`: the stage on the finished selection in `<output>/<name>/`, then its
    report files again, with the Routing section. Returns the folder and the new Selection."""
    from lensray.report.files import write_report

    check_route(cfg)
    storage = cfg.storage()
    selection, files = RouteStage().run(cfg, finished_selection(cfg), storage.local)
    files += write_report(selection, storage.local)
    storage.push(*(str(p.relative_to(storage.local)) for p in files))
    return storage.local, selection


def route_section(doc: dict[str, Any]) -> str:
    """report.md's Routing section from selection.json's "route" (empty when the stage did not run)."""
    r = doc.get("route")
    if not r:
        return ""
    lines = [
        "## Routing (SelectLLM)", "",
        (f"Each of the {r['queries']} held-out queries routed between the finalists {', '.join(r['finalists'])} "
         f"by a router that did not see it ({r['folds']}-fold cross-validation). Served policy: **{r['policy']}** "
         f"(k = {r['k']}); a query's cost is the sum over the finalists it calls."), "",
        "| policy | accuracy | finalists called | latency per query (s) | FLOPs per query |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, s in r["scores"].items():
        if name == "best_single":  # the same row as its single:<name>
            continue
        shown = f"**{name}** (served)" if name == r["policy"] else name
        lines.append(f"| {shown} | {s['accuracy']:.3f} ± {s['accuracy_std']:.3f} | {s['calls']:.2f} | "
                     f"{s['latency']:.3g} | {s['flops']:.3g} |")
    lines += [
        "",
        (f"Best single finalist: {r['best_single']}. Router micro F1 {r['router_f1']:.3f}; AIQ {r['aiq']['latency']:.3f} "
         f"(latency), {r['aiq']['flops']:.3f} (FLOPs). Details in route.json; `lensray serve` serves the router "
         "saved in route_router.json."), "",
        "![routing](route.png)", "",
    ]
    return "\n".join(lines)


register_stage("post", RouteStage())
