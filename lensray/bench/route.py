"""`lensray bench route CONFIG`: what routing costs at run time, on a finished selection whose
route stage ran: the router's training and scoring time on its held-out queries, and the
served application's latency per query over HTTP (median and p95), one query per request and
in one batch; beside them, the route stage's cross-validated evaluation from selection.json
(accuracy and cost per query of every policy and baseline).

    lensray select configs/route-demo.yaml            # the sweep and the route stage
    lensray bench route configs/route-demo.yaml --requests 64 --json out/bench-route.json

Training is timed as the route stage trains its final router (every held-out query, the
config's encoder), `repeats` times, and scoring as `predict_proba` over the same queries. The
serving half starts the application of `lensray serve` on a free port of 127.0.0.1 (its own
local Ray unless `ray_address` says otherwise), sends one warm-up request, then `requests`
single-query POSTs one after the other (the held-out queries in turn), then the same queries in
one batch request, and shuts Serve down. `served_matches_offline` is the share of the batch's
answers equal to what the evaluation answers with the saved router and the answers the probes
recorded: 1.0 when the finalists serve the weights their probes fine-tuned.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig
    from lensray.stages.route.config import RouteConfig
    from lensray.stages.route.evaluate import RouteData
    from lensray.stages.route.saved import SavedRouter


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        return json.loads(reply.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_router(cfg: SelectConfig, queries: list[str], correct: np.ndarray, repeats: int) -> dict[str, float]:
    """Median seconds to train the router on `queries` and to score them, over `repeats` runs."""
    from lensray.stages.route.router import Router, make_encoder

    encoder = make_encoder(cfg.route)
    fit_s, score_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        router = Router(cfg.route, encoder).fit(queries, correct)
        fit_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        router.predict_proba(queries)
        score_s.append(time.perf_counter() - start)
    return {"train_s": float(np.median(fit_s)), "score_ms_per_query": 1e3 * float(np.median(score_s)) / len(queries)}


def offline_answers(saved: SavedRouter, data: RouteData, route: RouteConfig, rows: list[int]) -> list[str]:
    """What the route stage's evaluation answers to the queries `rows` of `data` with the saved
    router: its policy over the answers the finalists' probes recorded."""
    from lensray.stages.route.policies import decide

    conf = saved.router.predict_proba([data.queries[i] for i in rows])
    cost = np.array([f.cost(route.tie_cost) for f in saved.finalists])
    return [decide(route.policy, c, data.answers[i], cost, route.k, route.threshold).answer for c, i in zip(conf, rows)]


def time_serving(cfg: SelectConfig, saved: SavedRouter, data: RouteData, requests: int) -> dict[str, Any]:
    """Latency of the served application per query (single requests and one batch), and the
    share of its answers equal to the offline evaluation's."""
    from ray import serve

    from lensray.stages.route.serve import start_app

    rows = [i % data.n for i in range(requests)]
    asked = [data.queries[i] for i in rows]
    url = start_app(cfg, "127.0.0.1", _free_port())
    try:
        _post(url, {"query": asked[0]})  # warm-up: the first call of each replica
        single = []
        for query in asked:
            start = time.perf_counter()
            _post(url, {"query": query})
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        reply = _post(url, {"queries": asked})
        batch_s = time.perf_counter() - start
    finally:
        serve.shutdown()
    calls = [len(r["called"]) for r in reply["results"]]
    offline = offline_answers(saved, data, cfg.route, rows)
    return {
        "requests": requests,
        "served_fine_tuned": all(f.fine_tuned for f in saved.finalists),
        "served_matches_offline": float(np.mean([r["answer"] == a for r, a in zip(reply["results"], offline)])),
        "latency_ms_median": 1e3 * float(np.median(single)),
        "latency_ms_p95": 1e3 * float(np.percentile(single, 95)),
        "batch_ms_per_query": 1e3 * batch_s / requests,
        "finalists_called_mean": float(np.mean(calls)),
    }


def bench_route(cfg: SelectConfig, requests: int = 64, repeats: int = 5) -> dict[str, Any]:
    """The figures of the module docstring, printed and returned."""
    from lensray.core.errors import ConfigError
    from lensray.stages.route.queries import query_results, route_data
    from lensray.stages.route.serve import load_for_serving
    from lensray.stages.route.stage import check_route, finished_selection

    if requests < 1 or repeats < 1:
        raise ConfigError(f"--requests {requests} / --repeats {repeats}: both must be at least 1")
    check_route(cfg)
    saved = load_for_serving(cfg)  # before any timing: the route stage must have run
    selection = finished_selection(cfg)
    results = query_results(selection.observations)
    data = route_data(results, [f.name for f in saved.finalists])  # the router's columns
    route = selection.doc.get("route") or {}
    out: dict[str, Any] = {
        "config": cfg.name, "encoder": cfg.route.encoder, "policy": cfg.route.policy,
        "queries": data.n, "finalists": [f.name for f in saved.finalists],
        "best_single": route.get("best_single"),
        "evaluation": {name: {k: round(v, 4) for k, v in score.items()} for name, score in route.get("scores", {}).items()},
        **time_router(cfg, list(data.queries), data.correct, repeats),
    }
    print(f"bench route: router ({cfg.route.encoder} encoder) trained on {data.n} queries x {data.m} finalists in "
          f"{out['train_s']:.3f} s, scores {out['score_ms_per_query']:.3f} ms a query", flush=True)
    out |= time_serving(cfg, saved, data, requests)
    print(f"bench route: served ({cfg.route.policy}, {len(saved.finalists)} finalists, "
          f"{out['finalists_called_mean']:.2f} called a query): {requests} single requests, latency median "
          f"{out['latency_ms_median']:.1f} ms, p95 {out['latency_ms_p95']:.1f} ms; one batch "
          f"{out['batch_ms_per_query']:.1f} ms a query; {100 * out['served_matches_offline']:.1f}% of the served answers "
          f"are the offline evaluation's ({'fine-tuned' if out['served_fine_tuned'] else 'pretrained'} finalists)")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
