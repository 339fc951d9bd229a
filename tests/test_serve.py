"""`lensray serve`: the finalists behind the trained router on Ray Serve. A request's fields are
checked naming them; end to end, a router trained on synthetic labels routes a batch of queries
over HTTP to the zoo's models exactly as the offline policy does, and a finalist whose model is
missing is left out of the route."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest

from lensray.config.load import config_from_dict
from lensray.core.errors import ConfigError

MODELS = ["llama-text-32", "mistral-text-96", "gpt2-mix-128"]
ASPECTS = ["food", "service", "price"]  # finalist j is "right" on the queries that mention aspect j


def serve_config(zoo_dir, tmp_path, **route) -> dict:
    return {
        "name": "served", "backend": "hf", "zoo": str(zoo_dir), "pool": {"models": MODELS},
        "data": {"path": "zoo:aspects", "max_length": 64, "eval_size": 32, "design": "es-sde"},
        "probe": {"metric": "task", "max_new_tokens": 24, "ntk_examples": 0},
        "plan": {"sizes": [16, 32, 64], "budget": 64, "target": 512},
        "scheduler": {"enabled": False},
        "resources": {"cpus_per_worker": 0.9},  # 4 finalists on a 2-CPU Ray: each reserves a share
        "route": {"policy": "labelled_max_conf", "k": 2, **route},
        "output": str(tmp_path),
    }


def test_a_request_that_is_not_text_is_refused_naming_the_field():
    from lensray.stages.route.serve import parse_request

    assert parse_request({"query": "the food was good ."}) == (["the food was good ."], True)
    assert parse_request({"queries": ["a", "b"]}) == (["a", "b"], False)
    assert 'field "query" must be non-empty text, got int' in parse_request({"query": 5})
    assert 'field "query" must be non-empty text, got str' in parse_request({"query": "  "})
    assert 'field "queries[1]" must be non-empty text, got dict' in parse_request({"queries": ["a", {"q": 1}]})
    assert 'field "queries" must be a non-empty list of texts, got str' in parse_request({"queries": "a"})
    for body in ([], "text", {}, {"query": "a", "queries": ["b"]}, {"prompt": "a"}):
        assert 'exactly one of the fields "query" and "queries"' in parse_request(body)


def train_router(cfg, folder, missing):
    """A router trained on synthetic labels (finalist j right on queries mentioning aspect j),
    saved with the three zoo models and one finalist whose model folder is missing."""
    from lensray.stages.route.router import Router
    from lensray.stages.route.saved import Finalist, save_router

    rows = [json.loads(line) for line in open(cfg.data.path)][:80]
    queries = [r["text"] for r in rows]
    correct = np.array([[a in r["targets"] for a in ASPECTS] + [True] for r in rows], dtype=int)
    router = Router(cfg.route).fit(queries, correct)
    data = cfg.candidate_data(cfg.candidates()[0]).to_dict()
    finalists = [Finalist(c.name, c.model.path, data, latency_s=0.01 * (j + 1)) for j, c in enumerate(cfg.candidates())]
    finalists.append(Finalist("ghost", str(missing), data, latency_s=0.001))  # the cheapest, and always "right"
    save_router(folder, router, finalists, len(queries))


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_serving_needs_a_trained_router_of_the_same_encoder(zoo_dir, tmp_path, capsys):
    import yaml

    from lensray.cli import main
    from lensray.stages.route.serve import load_for_serving, start_app

    cfg = config_from_dict(serve_config(zoo_dir, tmp_path))
    config = tmp_path / "served.yaml"
    config.write_text(yaml.safe_dump(serve_config(zoo_dir, tmp_path)))
    assert main(["serve", str(config)]) == 2  # before Ray starts
    assert "holds no trained router" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"holds no trained router.*run `lensray route CONFIG`"):
        load_for_serving(cfg)
    train_router(cfg, cfg.storage().local, tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"route.features=1024 but the saved router was trained with 262144"):
        load_for_serving(config_from_dict(serve_config(zoo_dir, tmp_path, features=1024)))
    with pytest.raises(ConfigError, match=r"--port 0: give a TCP port between 1 and 65535"):
        start_app(cfg, port=0)


@pytest.mark.slow
def test_served_routing_answers_as_the_offline_policy_and_skips_a_missing_model(zoo_dir, ray_local, tmp_path):
    from ray import serve

    from lensray.stages.route.policies import decide
    from lensray.stages.route.saved import load_router
    from lensray.stages.route.serve import FinalistModel, start_app

    cfg = config_from_dict(serve_config(zoo_dir, tmp_path))
    train_router(cfg, cfg.storage().local, tmp_path / "no-such-model")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = start_app(cfg, "127.0.0.1", port)
    try:
        assert url == f"http://127.0.0.1:{port}/"
        batch = [json.loads(line)["text"] for line in open(cfg.data.path)][100:108]
        status, reply = post(url, json.dumps({"queries": batch}).encode())
        assert status == 200, reply
        served = reply["results"]
        with urllib.request.urlopen(url, timeout=60) as r:
            health = json.loads(r.read())
        # the ghost's replica could not load its model: out of the route, the app up
        assert "does not exist" in health["finalists"]["ghost"] and health["policy"] == "labelled_max_conf"
        assert [health["finalists"][m] for m in MODELS] == ["ok"] * 3

        saved = load_router(cfg.storage().local)
        conf = saved.router.predict_proba(batch)[:, :3]
        cost = np.array([f.latency_s for f in saved.finalists[:3]])
        answers = [FinalistModel(f, cfg.probe).answer(batch) for f in saved.finalists[:3]]
        for i, got in enumerate(served):
            d = decide("labelled_max_conf", conf[i], [a[i]["answer"] for a in answers], cost, k=2)
            assert got["query"] == batch[i] and got["answer"] == d.answer
            assert got["source"] == MODELS[d.source] and got["called"] == [MODELS[j] for j in d.called]
            assert got["output"] == answers[d.source][i]["output"]
            assert got["confidence"] == pytest.approx(dict(zip(MODELS, conf[i])))
            assert list(got["skipped"]) == ["ghost"]
        assert len({tuple(g["called"]) for g in served}) > 1  # the queries went to different finalists

        status, one = post(url, json.dumps({"query": batch[0]}).encode())
        assert status == 200 and one["answer"] == served[0]["answer"]
        status, bad = post(url, json.dumps({"query": 7}).encode())
        assert status == 400 and 'field "query" must be non-empty text, got int' in bad["error"]
        status, bad = post(url, b"not json")
        assert status == 400 and "the body is not JSON" in bad["error"]
    finally:
        serve.shutdown()
