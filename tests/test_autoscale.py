"""Autoscaling on this machine: a head started by `ray start --head --autoscaling-config` with
Ray's fake multi-node provider, whose worker node type (2 CPUs, min 0) is not up when a sweep is
started. The sweep's probes each need 2 CPUs, which only that node type has, so the autoscaler
adds nodes for them, and removes them once the sweep is done and they sit idle."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.request import Request, urlopen

import pytest
import yaml
from test_cluster import (
    BIN,
    _free_ports,
    _node_ports,
    _wait_for_nodes,
    replay_config,
    wait_until,
)

pytestmark = pytest.mark.slow

IDLE_TIMEOUT_MIN = 0.1
"""Minutes a worker node may sit idle before the autoscaler removes it (6 s here)."""


def autoscaling_config(gcs: str) -> dict:
    """A cluster launcher config for the fake provider: a 1-CPU head, 0..2 `probe` workers."""
    return {
        "cluster_name": "lensray-fake",
        "max_workers": 2,
        "provider": {"type": "fake_multinode", "gcs_address": gcs, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "probe": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 2},
        },
        "head_node_type": "ray.head.default",
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
        "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    import ray

    if ray.is_initialized():  # a local Ray an earlier module left: this cluster is the machine's only one
        ray.shutdown()
    token = secrets.token_hex(16)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_FAKE_CLUSTER": "1",
           "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gcs, dash, client = _free_ports(3)
    folder = tmp_path_factory.mktemp("autoscale")
    config = folder / "cluster.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(f"127.0.0.1:{gcs}")))
    temp = Path(f"/tmp/lr-{secrets.token_hex(3)}")
    log = folder / "head.log"
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--autoscaling-config", str(config), "--port", str(gcs),
         "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash), "--ray-client-server-port", str(client), "--temp-dir", str(temp),
         *_node_ports(), "--disable-usage-stats", "--block"],
        env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{dash}"
    _wait_for_nodes(url, env, 1, log)
    yield {"url": url, "env": env, "gcs": f"127.0.0.1:{gcs}", "out": folder / "shared", "temp": temp}
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    # The fake provider's nodes are processes of the head's autoscaler (same session); any left
    # behind hold the temp dir's sockets.
    subprocess.run(["pkill", "-9", "-f", str(temp)], check=False)
    shutil.rmtree(temp, ignore_errors=True)


def monitor_tail(cluster: dict, lines: int = 80) -> str:
    """The last lines of the autoscaler's log (the head's monitor), to tell why nodes stay."""
    logs = sorted(Path(cluster["temp"]).glob("session_*/logs/monitor.log"))
    return "\n".join(logs[-1].read_text(errors="replace").splitlines()[-lines:]) if logs else "(no monitor.log)"


def holders(cluster: dict) -> str:
    """The cluster's live actors and placement groups (Ray's state API): what holds a node's CPUs."""
    env = {**cluster["env"], "RAY_ADDRESS": cluster["url"]}
    out = []
    for what in (["actors", "--filter", "state=ALIVE"], ["placement-groups"], ["jobs"]):
        done = subprocess.run([str(BIN / "ray"), "list", *what, "--detail", "--format", "yaml"], env=env,
                              capture_output=True, text=True, timeout=60)
        out.append(f"$ ray list {' '.join(what)}\n{done.stdout[-4000:]}{done.stderr[-1000:]}")
    return "\n".join(out)


def alive_nodes(cluster: dict) -> int:
    req = Request(f"{cluster['url']}/nodes?view=summary", headers={"Authorization": f"Bearer {cluster['env']['RAY_AUTH_TOKEN']}"})
    doc = json.loads(urlopen(req, timeout=5).read())
    return sum(n.get("raylet", {}).get("state") == "ALIVE" for n in doc["data"]["summary"])


def test_probes_needing_a_node_type_not_up_make_the_autoscaler_add_it_then_remove_it(autoscaling_cluster, tmp_path):
    cluster = autoscaling_cluster
    assert alive_nodes(cluster) == 1  # the head alone: no node can run a 2-CPU probe
    pool = ["t5-small", "gpt2", "t5-base", "gpt2-medium"]
    # reuse_processes false, as docs/cluster.md advises for autoscaling clusters: a trial process
    # Tune swaps for a reused one just as it starts can keep its node's CPUs reserved in Ray 2.60
    # (resources.reuse_processes), and that node would never scale down.
    cfg = replay_config(tmp_path / "cfg", pool={"models": pool},
                        resources={"cpus_per_worker": 2, "max_concurrent": 2, "reuse_processes": False},
                        replay={"curves": "flan.csv", "sleep_s_per_pflop": 0.5})
    out = cluster["out"] / "scaled"
    # The driver runs on the head and joins the cluster (as after `ray attach`), not as a Jobs API
    # job: a fake node shares the head's temp dir, and starting one clears the runtime-env
    # working dirs kept there, a submitted job's among them (separate machines share no temp dir).
    driver = subprocess.Popen([str(BIN / "lensray"), "select", str(cfg), "--out", str(out)],
                              env={**cluster["env"], "RAY_ADDRESS": cluster["gcs"]},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.time()
    most, deadline = 1, started + 600
    while driver.poll() is None and time.time() < deadline:
        most = max(most, alive_nodes(cluster))
        time.sleep(1)
    driver_s = time.time() - started
    logs = driver.communicate(timeout=max(1, deadline - time.time()))[0]
    assert driver.returncode == 0, logs[-3000:]
    assert most >= 2, "the autoscaler never added a worker node"
    doc = json.loads((out / "flan" / "selection.json").read_text())
    assert {e["candidate"] for e in doc["ranking"]} == set(pool) and doc["selected"] in pool
    assert {e["status"] for e in doc["ranking"]} <= {"finished", "stopped early"}

    # Idle nodes go after IDLE_TIMEOUT_MIN; a timeout here means they were not removed.
    try:
        wait_until(lambda: alive_nodes(cluster) == 1, deadline, step_s=2.0)
    except AssertionError:
        raise AssertionError(f"idle worker nodes were not removed (the driver took {driver_s:.0f} s); what holds "
                             f"them:\n{holders(cluster)}\nthe autoscaler's log ends:\n{monitor_tail(cluster, 30)}") from None
