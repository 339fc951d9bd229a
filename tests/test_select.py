"""`lensray select` end to end on a real local Ray with the replay backend; configs refused."""

import json
import subprocess
import sys
from dataclasses import replace

import pyarrow.parquet as pq
import pytest

from lensray.config.load import config_from_dict, load_config
from lensray.core.curves import packaged_curves, read_curves
from lensray.core.errors import ConfigError
from lensray.core.types import Selection, Status
from lensray.pipeline import run_select
from lensray.report.files import _markdown
from lensray.sweep.record import read_state

FINISHED, STOPPED = Status.FINISHED, Status.STOPPED

FLAN = str(packaged_curves()[0])
POOL = ["facebook/opt-1.3b", "t5-base", "gpt2", "cerebras/Cerebras-GPT-111M", "facebook/opt-6.7b", "t5-small"]


def replay_raw(tmp_path, **over) -> dict:
    """A replay sweep's config as a user writes it."""
    raw = {
        "name": "t",
        "backend": "replay",
        "replay": {"curves": FLAN},
        "pool": {"models": POOL},
        "plan": {"start": 200, "budget": 6400, "target": 1638400},
        "resources": {"cpus_per_worker": 0.5},
        "output": str(tmp_path),
    }
    raw.update(over)
    return raw


def replay_cfg(tmp_path, **over):
    return config_from_dict(replay_raw(tmp_path, **over))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    cfg = replay_cfg(out)
    return cfg, run_select(cfg, quiet=True), out / "t"


@pytest.mark.slow
def test_replay_sweep_selects_and_writes_every_file(sweep):
    cfg, sel, folder = sweep
    doc = json.loads((folder / "selection.json").read_text())
    assert doc["selected"] == sel.selected and doc["selected"] in POOL
    assert [e["candidate"] for e in doc["ranking"]].count(doc["selected"]) == 1
    for e in doc["ranking"]:
        assert set(e) >= {"candidate", "model", "predicted_loss", "interval", "status", "reason", "flops"}
        assert e["status"] in ("finished", "stopped early", "failed")
        if e["predicted_loss"] is not None:
            assert e["interval"][0] <= e["predicted_loss"] <= e["interval"][1]
    assert set(doc["cost"]) >= {"flops_spent", "flops_all_probes", "flops_full"}
    assert 0 < doc["cost"]["flops_spent"] <= doc["cost"]["flops_all_probes"] < doc["cost"]["flops_full"]
    # where the compute went: each candidate's probes, adding up to what was spent
    assert sum(e["flops"] for e in doc["ranking"]) == pytest.approx(doc["cost"]["flops_spent"])
    assert all(e["flops"] > 0 for e in doc["ranking"])
    table = pq.read_table(folder / "observations.parquet")
    assert table.num_rows == sum(len(e["sizes"]) for e in doc["ranking"])
    assert set(table.column_names) >= {"candidate", "size", "loss", "tokens", "flops", "wall_s"}
    assert (folder / "curves.png").stat().st_size > 10_000
    report = (folder / "report.md").read_text()
    assert "Selected:" in report and "share of compute" in report
    top = max(doc["ranking"], key=lambda e: e["flops"])
    row = next(line for line in report.splitlines() if f"| {top['candidate']} |" in line)
    assert f"{top['flops'] / doc['cost']['flops_spent']:.1%}" in row


@pytest.mark.slow
def test_replay_sweep_stops_losers_and_picks_a_good_one(sweep):
    cfg, sel, _ = sweep
    curves = read_curves(FLAN)
    truth = {c: curves.losses[i, -1] for i, c in enumerate(curves.candidates) if c in POOL}
    stopped = [e for e in sel.doc["ranking"] if e["status"] == STOPPED]
    assert stopped, "clearly worse candidates (gpt2, Cerebras-111M) are stopped early"
    assert all(len(e["sizes"]) < len(cfg.plan.resolved_sizes()) for e in stopped)
    assert all(e["reason"].startswith("cannot reach the top 1") for e in stopped)
    worst, best = max(truth.values()), min(truth.values())
    assert (worst - truth[sel.selected]) / (worst - best) > 0.9
    assert sel.doc["cost"]["flops_spent"] < sel.doc["cost"]["flops_all_probes"]


@pytest.mark.slow
def test_every_rung_of_a_replay_sweep_spans_the_whole_pool(sweep):
    # More probes than fit at once: all must still be alive together, so no candidate is judged
    # at a decision size before every candidate that gets there has reported it.
    import ray

    cfg, _, folder = sweep
    assert len(POOL) * cfg.resources.cpus_per_worker > ray.cluster_resources()["CPU"]
    records = [json.loads(line) for line in (folder / "sweep.jsonl").read_text().splitlines()]
    assert {r["candidate"] for r in records} == set(POOL)
    sizes = cfg.plan.resolved_sizes()
    rungs = sizes[cfg.scheduler.min_points - 1 : -1]  # judged there; at the budget probes just end
    for r in records:  # before the first rung there is nothing to judge, and no probe waits
        if r["event"] == "decision" and r["size"] < rungs[0]:
            assert r["decision"] == "CONTINUE" and "sizes needed to decide" in r["reason"], r
    for size in rungs:
        seen = [i for i, r in enumerate(records) if r["event"] == "observation" and r["size"] == size]
        judged = [
            i for i, r in enumerate(records)
            if r["event"] == "decision" and r["size"] == size and r["decision"] in ("CONTINUE", "STOP")
        ]
        assert not judged or max(seen) < min(judged), size


@pytest.mark.slow
def test_rerun_refuses_to_overwrite_and_resume_runs_nothing_twice(sweep):
    cfg, sel, folder = sweep
    with pytest.raises(ConfigError, match="--resume"):
        run_select(cfg, quiet=True)
    lines = (folder / "sweep.jsonl").read_text().splitlines()
    again = run_select(cfg, resume=True, quiet=True)
    assert again.selected == sel.selected
    assert (folder / "sweep.jsonl").read_text().splitlines() == lines  # every probe was done


@pytest.mark.slow
def test_resume_finishes_an_interrupted_sweep(tmp_path):
    cfg = replay_cfg(tmp_path)
    full = run_select(replace(cfg, name="full"), quiet=True)
    # an interrupted sweep: two candidates finished, one stopped after 2 of 6 sizes
    state = tmp_path / "t" / "sweep.jsonl"
    state.parent.mkdir(parents=True)
    src = (tmp_path / "full" / "sweep.jsonl").read_text().splitlines()
    keep = [l for l in src if '"facebook/opt-1.3b"' in l or '"t5-base"' in l]
    keep += [l for l in src if '"gpt2"' in l and '"observation"' in l][:2]
    state.write_text("\n".join(keep) + "\n")
    done = {c for c, (status, _) in read_state(state).status.items() if status in (FINISHED, STOPPED)}
    assert done == {"facebook/opt-1.3b", "t5-base"}
    before = len(keep)
    resumed = run_select(cfg, resume=True, quiet=True)
    assert resumed.selected == full.selected
    records = [json.loads(l) for l in state.read_text().splitlines()[before:]]
    new_obs = [(r["candidate"], r["size"]) for r in records if r["event"] == "observation"]
    assert not [o for o in new_obs if o[0] in ("facebook/opt-1.3b", "t5-base")], "finished probes re-ran"
    assert ("gpt2", 200) not in new_obs and ("gpt2", 400) not in new_obs


@pytest.mark.slow
def test_resume_holds_probes_paused_at_an_undecided_rung(tmp_path):
    """Interrupted while every probe was paused at 800 (the first decision size), its rung not
    yet judged: `--resume` starts new trials, which Tune runs at once, yet each is held at 800
    and the rung is judged as the uninterrupted sweep judged it before that probe goes on."""
    cfg = replay_cfg(tmp_path)
    full = run_select(replace(cfg, name="full"), quiet=True)
    src = [json.loads(l) for l in (tmp_path / "full" / "sweep.jsonl").read_text().splitlines()]
    cut = [r for r in src if r["event"] in ("observation", "decision") and
           (r["size"] < 800 or (r["size"] == 800 and r.get("decision", "PAUSE") == "PAUSE"))]
    assert sorted(r["candidate"] for r in cut if r.get("decision") == "PAUSE") == sorted(POOL)
    state = tmp_path / "t" / "sweep.jsonl"
    state.parent.mkdir(parents=True)
    state.write_text("".join(json.dumps(r) + "\n" for r in cut))
    resumed = run_select(cfg, resume=True, quiet=True)
    assert resumed.selected == full.selected
    records = [json.loads(l) for l in state.read_text().splitlines()[len(cut):]]
    judged = {r["candidate"]: r["decision"] for r in records if r["event"] == "decision" and r["size"] == 800}
    expected = {r["candidate"]: r["decision"] for r in src
                if r["event"] == "decision" and r["size"] == 800 and r["decision"] != "PAUSE"}
    assert judged == expected and "STOP" in judged.values()
    for name in POOL:  # each was judged at 800 (with every fit at 800, from the record) before it went on
        mine = [r for r in records if r["candidate"] == name]
        assert (mine[0]["event"], mine[0]["size"]) == ("decision", 800), f"{name} went past its rung: {mine[0]}"


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_same_selection_without_rerunning_probes(sweep, tmp_path):
    """The driver machine is lost mid-sweep (SIGKILL to `lensray select` and the Ray it started);
    `--resume` finishes with the uninterrupted run's selection and redoes no reported size."""
    import os
    import signal
    import time

    import yaml

    cfg_path = tmp_path / "select.yaml"
    slow = {"curves": FLAN, "sleep_s_per_pflop": 2e-3}  # slow enough to be caught mid-way
    cfg_path.write_text(yaml.safe_dump(replay_raw(tmp_path / "out", replay=slow)))
    cli = [sys.executable, "-m", "lensray", "select", str(cfg_path), "--quiet"]
    state = tmp_path / "out" / "t" / "sweep.jsonl"
    proc = subprocess.Popen(cli, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and state.read_text().count('"observation"') >= 8:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # let the killed Ray's processes go
    before = read_state(state)
    assert not (tmp_path / "out" / "t" / "selection.json").exists()

    done = subprocess.run(cli + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads((tmp_path / "out" / "t" / "selection.json").read_text())
    assert doc["selected"] == sweep[1].selected
    records = [json.loads(l) for l in state.read_text().splitlines() if l.startswith("{")]
    seen = [(r["candidate"], r["size"]) for r in records if r.get("event") == "observation"]
    assert len(seen) == len(set(seen)), "a reported size ran twice"
    for c, obs in before.observations.items():
        assert [o.size for o in obs] == [s for (cc, s) in seen if cc == c][: len(obs)]


@pytest.mark.slow
def test_candidates_still_flat_at_the_budget_are_flagged_as_not_ranked_reliably(tmp_path):
    # On WMT19, opt-6.7b's loss barely moves from 200 to 3,200 examples (1.99 to 1.96): it is
    # probed to the budget, never decided on, and its prediction at T cannot be trusted.
    import yaml

    pool = ["google/t5-v1_1-base", "t5-base", "gpt2", "facebook/opt-6.7b", "google/mt5-base"]
    raw = replay_raw(tmp_path, replay={"curves": str(packaged_curves()[1])}, pool={"models": pool},
                     plan={"start": 200, "budget": 3200, "target": 1638400})
    (tmp_path / "flat.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "lensray", "select", str(tmp_path / "flat.yaml"), "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    doc = json.loads((tmp_path / "t" / "selection.json").read_text())
    by_name = {e["candidate"]: e for e in doc["ranking"]}
    flat = by_name["facebook/opt-6.7b"]
    assert flat["status"] == FINISHED and not flat["reliable"] and "not fallen beyond noise" in flat["reason"]
    assert by_name[doc["selected"]]["reliable"] and doc["selected"] != "facebook/opt-6.7b"
    assert [e["candidate"] for e in doc["ranking"] if e["status"] == FINISHED and not e["reliable"]] == [
        "facebook/opt-6.7b"
    ]
    assert "not ranked reliably: facebook/opt-6.7b: probed to the budget" in run.stdout
    report = (tmp_path / "t" / "report.md").read_text()
    assert "**Not ranked reliably: 1 of the candidates probed to the budget** (facebook/opt-6.7b)" in report
    assert "The selection's own fit is one of them" not in report
    by_name[doc["selected"]]["reliable"] = False  # were the pick itself still flat, the report says so
    assert "The selection's own fit is one of them" in _markdown(Selection(doc, {}, {}))


def test_the_select_cli_names_a_bad_config_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: replay\nreplay: {curves: x.csv}\nplan: {budgt: 100}\n")
    run = subprocess.run([sys.executable, "-m", "lensray", "select", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert "unknown key plan.budgt. Did you mean 'budget'?" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"replay": {"curves": FLAN}, "colour": 1}, "unknown key colour"),
        ({"replay": {"curves": FLAN}, "plan": {"budget": 4000000}}, "plan.budget .* larger than plan.target"),
        ({"backend": "hf"}, "pool.models is empty"),
        ({"backend": "hf", "pool": {"models": ["a", "a"]}}, "unique, repeated: \\['a'\\]"),
        ({"backend": "hf", "pool": {"models": ["../../etc"]}}, "pool.models\\[0\\].name"),
        ({"backend": "hf", "pool": {"models": ["/abs"]}}, "pool.models\\[0\\].name"),
        ({"backend": "magic"}, "backend must be one of hf, replay"),
        ({"replay": {"curves": FLAN}, "resources": {"workers": 0}}, "resources.workers"),
        ({"replay": {"curves": FLAN}, "plan": {"sizes": [400, 200]}}, "plan.sizes"),
        ({"replay": {"curves": FLAN}, "scheduler": {"top_k": "one"}}, "scheduler.top_k must be int"),
        ({"replay": {"curves": FLAN}, "fit": {"window": 1}}, "fit.window"),
    ],
)
def test_bad_configs_name_the_field(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_plan_sizes_must_be_in_the_curves(tmp_path):
    from lensray.probe.base import get_backend

    with pytest.raises(ConfigError, match="not columns"):
        get_backend("replay").check(replay_cfg(tmp_path, plan={"sizes": [300, 600, 1200], "budget": 1200}))


def test_yaml_paths_are_relative_to_the_config(tmp_path):
    (tmp_path / "c.yaml").write_text("backend: replay\nreplay: {curves: data/x.csv}\n")
    assert load_config(tmp_path / "c.yaml").replay.curves == str(tmp_path / "data" / "x.csv")


def test_the_local_default_ray_serves_its_dashboard_and_job_server_on_loopback_only(tmp_path):
    """`lensray select` without a cluster starts a local Ray whose dashboard (which is also the
    Jobs API's server) accepts connections on 127.0.0.1 and refuses them on every other address."""
    import socket

    import ray

    from lensray.sweep.run import init_ray

    ray.shutdown()
    init_ray(replay_cfg(tmp_path))
    host, port = ray._private.worker._global_node.address_info["webui_url"].rsplit(":", 1)
    assert host == "127.0.0.1"
    socket.create_connection((host, int(port)), timeout=5).close()
    import psutil

    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    assert others, "this machine has no address but loopback to test from"
    for address in others:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, int(port)), timeout=5)
