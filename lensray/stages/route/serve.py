"""`lensray serve CONFIG`: the finalists behind the trained router, as one Ray Serve application.

    lensray serve configs/route-demo.yaml --port 8000     # after its route stage ran
    curl -s 127.0.0.1:8000/ -d '{"query": "rate food , service and price : the service was good ."}'
    curl -s 127.0.0.1:8000/ -d '{"queries": ["translate : f e f j k ->", "..."]}'   # a batch: {"results": [...]}
    curl -s 127.0.0.1:8000/                                        # GET: the finalists' status

Deployments (Ray 2.60 Serve; one replica each)::

    finalist-<j>   FinalistServer: loads finalist j's model with transformers (resources like
                   one probe worker, resources.cpus_per_worker / gpus_per_worker; on a local
                   Ray too small for all of them, an equal share of its CPUs) and answers
                   query texts as its probe did: the prompt written under its design and
                   template, a greedy response of at most probe.max_new_tokens, and its
                   canonical answer (lensray.data.dataset.canonical_answer)
    router         RouterServer, the HTTP ingress: the saved router (route_router.json/.npz)
                   gives each query a confidence per finalist, the config's policy
                   (route.policy, k, threshold, tie_cost) picks whom to call, those finalists
                   answer, and the vote (lensray.stages.route.policies.decide) gives the answer

A reply: {"query", "answer", "output" (the winning finalist's text), "source", "called",
"confidence" (per finalist still in the route), "skipped" (finalists out of it, with why)}.

A finalist whose model fails to load (or whose replica later fails) takes itself out of the
route: the router routes between the others, and says so in "skipped"; the application stays
up while at least one finalist answers (503 when none does). A body that is not JSON, or a
"query" / "queries[i]" that is not text, is answered 400 naming the field.

Each finalist serves the weights its probe fine-tuned at the size the router was trained on
(`Finalist.model`; a URI is downloaded once into lensray's cache), so its answers are the ones
the route stage evaluated. A selection swept without the route stage kept no weights: its
finalists serve their pretrained models (`Finalist.fine_tuned` false). The HTTP proxy listens on
127.0.0.1 unless --host says otherwise. Ray and transformers are imported inside.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lensray.core.errors import ConfigError, ProbeError, one_line
from lensray.stages.route.config import RouteConfig
from lensray.stages.route.policies import POLICIES, decide, rank
from lensray.stages.route.saved import (
    Finalist,
    SavedRouter,
    check_trained_with,
    load_router,
)

if TYPE_CHECKING:
    from lensray.config.schema import SelectConfig
    from lensray.probe.hf.recipe import ProbeConfig

ROUTER_CPUS = 0.1
"""CPU the router replica reserves: it hashes queries and multiplies one small matrix."""
USAGE = 'send a JSON object {"query": "<text>"} or {"queries": ["<text>", ...]}'


class FinalistModel:
    """One finalist's model answering query texts as its probe did (see the module)."""

    def __init__(self, finalist: Finalist, probe: ProbeConfig, device: str = "cpu"):
        import torch

        from lensray.data.dataset import DataConfig
        from lensray.probe.hf.loading import load_model, load_tokenizer
        from lensray.probe.hf.recipe import ProbeSpec

        from lensray.cluster.storage import fetch_folder, is_uri

        model = str(fetch_folder(finalist.model)) if is_uri(finalist.model) else finalist.model
        self.spec = ProbeSpec(candidate=finalist.name, model=model, data=DataConfig.from_dict(finalist.data),
                              probe=replace(probe, lora=False), trust_remote_code=finalist.trust_remote_code)
        self.device = torch.device(device)
        self.tokenizer = load_tokenizer(self.spec)
        model, _ = load_model(self.spec, torch)
        self.model = model.to(self.device).eval()

    def answer(self, queries: list[str]) -> list[dict[str, str]]:
        """{"answer": its canonical answer, "output": the generated text} per query."""
        import torch

        from lensray.data.dataset import canonical_answer, prompt_ids
        from lensray.probe.hf.worker import generate

        data, tok = self.spec.data, self.tokenizer
        prompts = [prompt_ids(data, tok, q) for q in queries]
        ids = generate(self.model, prompts, tok.pad_token_id, tok.eos_token_id, self.spec.probe, 0, 1, torch, self.device)
        outputs = [tok.decode(x, skip_special_tokens=True) for x in ids]
        return [{"answer": canonical_answer(o, data.sample_design, data.schema), "output": o} for o in outputs]


class FinalistServer:
    """The finalist deployment: a FinalistModel, or the reason it could not load."""

    def __init__(self, finalist: dict[str, Any], probe: dict[str, Any], threads: int, device: str):
        import torch

        from lensray.probe.hf.recipe import ProbeConfig

        torch.set_num_threads(threads)
        self.model: FinalistModel | None = None
        self.error = ""
        try:
            self.model = FinalistModel(Finalist(**finalist), ProbeConfig(**probe), device)
        except ProbeError as e:
            self.error = e.reason
        except Exception as e:  # noqa: BLE001  (weights that do not load, an unknown architecture, ...)
            self.error = one_line(e)

    def status(self) -> str:
        """Empty when it answers, else why it cannot."""
        return self.error

    def answer(self, queries: list[str]) -> list[dict[str, str]]:
        if self.model is None:
            raise RuntimeError(self.error)
        return self.model.answer(queries)


def parse_request(body: Any) -> tuple[list[str], bool] | str:
    """(the query texts, whether one query was sent alone) of a request's JSON body, or the
    error to answer with, naming the field."""
    if not isinstance(body, dict) or ("query" in body) == ("queries" in body):
        return f"the body must hold exactly one of the fields \"query\" and \"queries\": {USAGE}"
    if "query" in body:
        q = body["query"]
        if not isinstance(q, str) or not q.strip():
            return f"field \"query\" must be non-empty text, got {type(q).__name__} {str(q)[:40]!r}: {USAGE}"
        return [q], True
    queries = body["queries"]
    if not isinstance(queries, list) or not queries:
        return f"field \"queries\" must be a non-empty list of texts, got {type(queries).__name__}: {USAGE}"
    for i, q in enumerate(queries):
        if not isinstance(q, str) or not q.strip():
            return f"field \"queries[{i}]\" must be non-empty text, got {type(q).__name__} {str(q)[:40]!r}: {USAGE}"
    return list(queries), False


class NoFinalist(RuntimeError):
    """No finalist of the route can answer."""


class RouterServer:
    """The ingress deployment: route each query, call the finalists picked, vote (see the module)."""

    def __init__(self, saved: SavedRouter, route: dict[str, Any], finalists: list):
        self.router, self.finalists, self.handles = saved.router, saved.finalists, finalists
        self.route = RouteConfig(**route)
        self.cost = np.array([f.cost(self.route.tie_cost) for f in self.finalists])
        self.skipped: dict[str, str] | None = None  # asked of the finalists at the first request

    async def _live(self) -> list[int]:
        """The finalists still in the route (their column indices)."""
        if self.skipped is None:
            errors = await asyncio.gather(*(h.status.remote() for h in self.handles), return_exceptions=True)
            self.skipped = {f.name: e if isinstance(e, str) else one_line(e)
                            for f, e in zip(self.finalists, errors) if e}
        return [j for j, f in enumerate(self.finalists) if f.name not in self.skipped]

    async def route_queries(self, queries: list[str]) -> list[dict[str, Any]]:
        """The reply to each query (see the module); raises NoFinalist when none can answer."""
        r = self.route
        conf_all = self.router.predict_proba(queries)
        while True:
            live = await self._live()
            if not live:
                raise NoFinalist("no finalist can answer: " + "; ".join(f"{n}: {e}" for n, e in self.skipped.items()))
            conf, cost = conf_all[:, live], self.cost[live]
            select = POLICIES[r.policy].select
            asks: dict[int, list[int]] = {}  # column in `live` -> the queries it is asked
            for i, c in enumerate(conf):
                for j in select(c, rank(c, cost), r.k, r.threshold):
                    asks.setdefault(j, []).append(i)
            columns = list(asks)
            replies = await asyncio.gather(*(self.handles[live[j]].answer.remote([queries[i] for i in asks[j]])
                                             for j in columns), return_exceptions=True)
            failed = {self.finalists[live[j]].name: one_line(rep) for j, rep in zip(columns, replies)
                      if isinstance(rep, BaseException)}
            if not failed:
                break
            self.skipped.update(failed)  # out of the route from now on; route the batch again
        answers: list[dict[int, dict[str, str]]] = [{} for _ in queries]
        for j, rep in zip(columns, replies):
            for i, a in zip(asks[j], rep):
                answers[i][j] = a
        out = []
        for i, q in enumerate(queries):
            texts = [answers[i].get(j, {"answer": ""})["answer"] for j in range(len(live))]
            d = decide(r.policy, conf[i], texts, cost, r.k, r.threshold)
            out.append({
                "query": q, "answer": d.answer, "output": answers[i][d.source]["output"],
                "source": self.finalists[live[d.source]].name,
                "called": [self.finalists[live[j]].name for j in d.called],
                "confidence": {self.finalists[j].name: float(conf_all[i, j]) for j in live},
                "skipped": dict(self.skipped),
            })
        return out

    async def status(self) -> dict[str, Any]:
        """The finalists, in or out of the route (with why), and the policy served."""
        live = await self._live()
        return {"policy": self.route.policy, "k": self.route.k, "threshold": self.route.threshold,
                "finalists": {f.name: "ok" if j in live else self.skipped[f.name] for j, f in enumerate(self.finalists)}}

    async def __call__(self, request) -> Any:
        from starlette.responses import JSONResponse

        if request.method == "GET":
            return JSONResponse(await self.status())
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": f"the body is not JSON: {USAGE}"}, status_code=400)
        parsed = parse_request(body)
        if isinstance(parsed, str):
            return JSONResponse({"error": parsed}, status_code=400)
        queries, single = parsed
        try:
            replies = await self.route_queries(queries)
        except NoFinalist as e:
            return JSONResponse({"error": str(e)}, status_code=503)
        return JSONResponse(replies[0] if single else {"results": replies})


def app_name(cfg: SelectConfig) -> str:
    """The Serve application's name: the experiment's."""
    return f"{cfg.name}-route"


def load_for_serving(cfg: SelectConfig) -> SavedRouter:
    """The experiment's saved router, checked against the config (before Ray starts)."""
    from lensray.stages.route.saved import FILES

    storage = cfg.storage()
    storage.pull(*FILES)
    saved = load_router(storage.local)
    check_trained_with(saved, cfg.route)
    return saved


def finalist_cpus(cfg: SelectConfig, finalists: int) -> float:
    """The CPUs each finalist replica reserves: a probe worker's (resources.cpus_per_worker), or,
    on a local Ray (ray_address / $RAY_ADDRESS empty or `local`) with too few CPUs for all the
    finalists beside the router, an equal share of them: a reservation is Ray's bookkeeping, not
    a limit (a cluster's autoscaler may add nodes instead)."""
    import ray

    want = cfg.resources.cpus_per_worker
    if (cfg.ray_address or os.environ.get("RAY_ADDRESS", "")) not in ("", "local"):
        return want
    total = ray.cluster_resources().get("CPU", 0.0)
    share = math.floor(100 * (total - ROUTER_CPUS) / finalists) / 100
    if want <= share or share <= 0:
        return want
    print(f"serve: {finalists} finalists x resources.cpus_per_worker={want:g} do not fit the {total:g} CPUs of this "
          f"Ray beside the router: each reserves {share:g}", file=sys.stderr)
    return share


def build_app(cfg: SelectConfig, saved: SavedRouter):
    """The Serve application: one FinalistServer per finalist, the RouterServer in front."""
    from ray import serve

    cpus, gpus = finalist_cpus(cfg, len(saved.finalists)), cfg.resources.gpus_per_worker
    finalist = serve.deployment(FinalistServer)
    handles = [
        finalist.options(name=f"finalist-{j}", ray_actor_options={"num_cpus": cpus, "num_gpus": gpus})
        .bind(asdict(f), asdict(cfg.probe), max(1, int(cpus)), "cuda" if gpus > 0 else "cpu")
        for j, f in enumerate(saved.finalists)
    ]
    router = serve.deployment(RouterServer).options(name="router", ray_actor_options={"num_cpus": ROUTER_CPUS})
    return router.bind(saved, asdict(cfg.route), handles)


def start_app(cfg: SelectConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Check, start Serve's HTTP proxy on host:port and deploy the application; its URL."""
    from lensray.sweep.run import init_ray

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: give a TCP port between 1 and 65535, e.g. 8000")
    saved = load_for_serving(cfg)
    init_ray(cfg)
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cfg, saved), name=app_name(cfg), route_prefix="/")
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def serve_forever(cfg: SelectConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """`lensray serve`: start the application and keep it up until Ctrl-C, then delete it."""
    import json
    import urllib.request

    from ray import serve

    url = start_app(cfg, host, port)
    with urllib.request.urlopen(url, timeout=60) as reply:  # the finalists' status, from the app itself
        status = json.loads(reply.read())
    for name, state in status["finalists"].items():
        print(f"  {name}: {'answers' if state == 'ok' else 'left out of the route: ' + state}")
    print(f"serving {url} (policy {status['policy']}): POST {USAGE}; Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
        serve.delete(app_name(cfg))
