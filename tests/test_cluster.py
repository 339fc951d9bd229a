"""A real multi-node Ray on this machine (loopback only): a head from `ray start --head` and a
worker node with its own resources, token authentication on; selection jobs go through
`lensray submit` / `jobs` / `logs` / `stop` over the Ray Jobs API, as a user's would."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lensray.core.curves import packaged_curves

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports() -> list[str]:
    """Every port a node listens on, chosen free, so this cluster never collides with the test
    session's own local Ray."""
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-grpc-port",
             "--dashboard-agent-listen-port", "--metrics-export-port", "--runtime-env-agent-port"]
    return [a for name, port in zip(names, _free_ports(len(names))) for a in (name, str(port))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + worker node (2 CPUs, resource `node_b`), RAY_AUTH_MODE=token."""
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, client = _free_ports(3)
    # One temp dir per node, as on separate machines: nodes sharing one would also share the
    # runtime-env cache, and one node's cache cleanup would delete the other's job working dir.
    # Short paths: Ray's socket paths have a length limit.
    temps = [Path(f"/tmp/lr-{secrets.token_hex(3)}")]
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    logs = tmp_path_factory.mktemp("nodes")
    procs = [subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--port", str(gcs), "--num-cpus", "1",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
         "--temp-dir", str(temps[0]), *_node_ports(), *common],
        env=env, start_new_session=True, stdout=(logs / "head.log").open("w"), stderr=subprocess.STDOUT,
    )]
    url = f"http://127.0.0.1:{dash}"
    _wait_for_nodes(url, env, 1, logs / "head.log")

    def add_node(cpus: int, resources: dict) -> subprocess.Popen:
        """Start one more worker node (its own temp dir) and wait until the cluster has it."""
        temps.append(Path(f"/tmp/lr-{secrets.token_hex(3)}"))
        log = logs / f"worker-{len(procs)}.log"
        procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs}", "--num-cpus", str(cpus),
             "--resources", json.dumps(resources), "--temp-dir", str(temps[-1]), *_node_ports(), *common],
            env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
        ))
        _wait_for_nodes(url, env, len(procs), log)
        return procs[-1]

    add_node(2, {"node_b": 1})
    yield {"url": url, "env": env, "gcs": f"127.0.0.1:{gcs}", "out": tmp_path_factory.mktemp("shared"),
           "add_node": add_node}
    for p in reversed(procs):
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
    for temp in temps:
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_nodes(url: str, env: dict, n: int, log: Path, timeout_s: float = 120) -> None:
    """Poll the cluster (through the dashboard's REST API, with the token) until n nodes are up."""
    from urllib.request import Request, urlopen

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            req = Request(f"{url}/nodes?view=summary", headers={"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"})
            doc = json.loads(urlopen(req, timeout=5).read())
            alive = [n for n in doc["data"]["summary"] if n.get("raylet", {}).get("state") == "ALIVE"]
            if len(alive) >= n:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the local cluster did not reach {n} nodes in {timeout_s}s; `ray start` said:\n{log.read_text()[-3000:]}")


def lensray(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lensray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def submit(cluster: dict, cfg: Path, out: Path) -> str:
    """`lensray submit` without waiting; the job's id."""
    r = lensray("submit", str(cfg), "--address", cluster["url"], "--out", str(out), env=cluster["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()[1].rstrip(":")


def wait_until(condition, deadline: float, step_s: float = 0.5) -> None:
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(step_s)


def wait_for_job(cluster: dict, job_id: str, deadline: float) -> str:
    """Poll `lensray jobs` until the job ends; its final status."""
    status = ""

    def ended() -> bool:
        nonlocal status
        jobs = lensray("jobs", "--address", cluster["url"], env=cluster["env"]).stdout.splitlines()
        status = {line.split()[0]: line.split()[1] for line in jobs}.get(job_id, "")
        return status in ("SUCCEEDED", "FAILED", "STOPPED")

    wait_until(ended, deadline, step_s=1.0)
    return status


def replay_config(folder: Path, **over) -> Path:
    """A replay sweep whose curves file sits next to the config (it travels as the working dir)."""
    folder.mkdir(parents=True, exist_ok=True)
    flan = packaged_curves()[0]
    shutil.copy(flan, folder / flan.name)
    raw = {
        "name": "flan",
        "backend": "replay",
        "replay": {"curves": flan.name},
        "plan": {"start": 200, "budget": 6400, "target": 1638400},
        "resources": {"cpus_per_worker": 0.5},
        "output": "out",
    }
    raw.update(over)
    (folder / "select.yaml").write_text(yaml.safe_dump(raw))
    return folder / "select.yaml"


def test_submit_runs_a_replay_sweep_on_the_cluster_and_lists_it(cluster, tmp_path):
    out = cluster["out"] / "replay"
    r = lensray("submit", str(replay_config(tmp_path / "cfg")), "--address", cluster["url"],
                "--out", str(out), "--wait", env=cluster["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = r.stdout.split()[1].rstrip(":")
    doc = json.loads((out / "flan" / "selection.json").read_text())
    assert doc["selected"] in r.stdout and len(doc["ranking"]) == 30
    assert (out / "flan" / "observations.parquet").exists()

    listed = lensray("jobs", "--address", cluster["url"], env=cluster["env"])
    assert any(line.split()[:2] == [job_id, "SUCCEEDED"] for line in listed.stdout.splitlines()), listed.stdout
    logs = lensray("logs", job_id, "--address", cluster["url"], env=cluster["env"])
    assert f"selected: {doc['selected']}" in logs.stdout


def test_submission_without_the_token_is_refused(cluster, tmp_path):
    env = {k: v for k, v in cluster["env"].items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "none")  # never fall back to this user's ~/.ray token
    r = lensray("submit", str(replay_config(tmp_path / "cfg")), "--address", cluster["url"],
                "--out", str(tmp_path / "out"), env=env)
    assert r.returncode == 2 and "requires its token" in r.stderr, r.stderr
    wrong = {**cluster["env"], "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    r = lensray("jobs", "--address", cluster["url"], env=wrong)
    assert r.returncode == 2 and "requires its token" in r.stderr, r.stderr


def test_stop_ends_a_running_job_and_resubmit_resumes_it(cluster, tmp_path):
    cfg = replay_config(tmp_path / "cfg", replay={"curves": "flan.csv", "sleep_s_per_pflop": 2e-3})
    out = cluster["out"] / "stopped"
    job_id = submit(cluster, cfg, out)
    state = out / "flan" / "sweep.jsonl"
    deadline = time.time() + 300
    wait_until(lambda: state.exists() and state.read_text().count("\n") >= 10, deadline)
    assert lensray("stop", job_id, "--address", cluster["url"], env=cluster["env"]).returncode == 0
    assert wait_for_job(cluster, job_id, deadline) == "STOPPED"
    assert not (out / "flan" / "selection.json").exists()

    r = lensray("submit", str(cfg), "--address", cluster["url"], "--out", str(out), "--resume", "--wait", env=cluster["env"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "flan" / "selection.json").read_text())["selected"]


def test_a_lost_worker_node_mid_sweep_retries_its_probes(cluster, tmp_path):
    """Five probes fill the cluster's 5 CPUs (head 1, node_b 2, the extra node 2); killing the
    extra node's raylet and workers mid-sweep (as a lost machine) fails the probes it ran, which
    Tune retries elsewhere from their checkpoints; the sweep completes with every size of every
    candidate, each observed once."""
    node = cluster["add_node"](2, {"node_c": 1})
    pool = ["google/mt5-large", "cerebras/Cerebras-GPT-1.3B", "facebook/opt-1.3b", "ai-forever/mGPT",
            "microsoft/phi-1_5", "gpt2-xl"]  # ~1.4B parameters each: ~13 PFLOP, ~26 s of replay per probe
    cfg = replay_config(tmp_path / "cfg", pool={"models": pool}, scheduler={"enabled": False},
                        replay={"curves": "flan.csv", "sleep_s_per_pflop": 2.0}, resources={"cpus_per_worker": 1})
    out = cluster["out"] / "lost-node"
    job_id = submit(cluster, cfg, out)
    state = out / "flan" / "sweep.jsonl"
    deadline = time.time() + 300
    wait_until(lambda: state.exists() and state.read_text().count('"observation"') >= 5, deadline)
    os.killpg(node.pid, signal.SIGKILL)  # raylet, its workers and their probes: gone at once
    status = wait_for_job(cluster, job_id, deadline)
    logs = lensray("logs", job_id, "--address", cluster["url"], env=cluster["env"]).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    assert "lost (" in logs and "retrying, failure 1 of 2 allowed" in logs, logs[-3000:]
    doc = json.loads((out / "flan" / "selection.json").read_text())
    assert {e["status"] for e in doc["ranking"]} == {"finished"} and len(doc["ranking"]) == 6
    sizes = doc["sizes"]
    assert all(e["sizes"] == sizes for e in doc["ranking"])
    records = [json.loads(line) for line in state.read_text().splitlines()]
    seen = [(r["candidate"], r["size"]) for r in records if r["event"] == "observation"]
    assert len(seen) == len(set(seen)) == 6 * len(sizes)  # a retried probe resumed after its last size


def test_submit_runs_a_live_sweep_with_zoo_models(cluster, tmp_path, zoo_dir):
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "live.yaml").write_text(yaml.safe_dump({
        "name": "live",
        "backend": "hf",
        "zoo": str(zoo_dir),
        "pool": {"models": ["neox-copy-48", "llama-text-32"]},
        "plan": {"sizes": [32, 64, 128], "budget": 128, "target": 512},
        "data": {"max_length": 32, "eval_size": 64},
        "probe": {"zero_stage": 2, "micro_batch": 8, "lr": 0.001, "epochs": 2, "ntk_examples": 4},
        "resources": {"workers": 1, "cpus_per_worker": 0.9},
        "scheduler": {"synchronous": False},
    }))
    out = cluster["out"] / "live"
    r = lensray("submit", str(folder / "live.yaml"), "--address", cluster["url"], "--out", str(out), "--wait",
                env=cluster["env"], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    doc = json.loads((out / "live" / "selection.json").read_text())
    assert doc["selected"] == "neox-copy-48"
    assert {e["status"] for e in doc["ranking"]} <= {"finished", "stopped early"}
