"""The cluster recipes in cluster/: fast, offline, no Ray started, no cloud SDK.

cluster/aws.yaml and cluster/gcp.yaml go through the same steps `ray up` runs before it first
talks to a cloud: `prepare_config` (merge with the provider's defaults.yaml, fold setup_commands
into head/worker setup) then `validate_config` (ray-schema.json plus Ray's cross-field checks).
Their `ray start` lines are checked against the options of the real `ray start` command. The
KubeRay manifests (cluster/kuberay/) are checked structurally: there is no KubeRay CRD schema
offline.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray", reason="the cluster recipes are validated with Ray's own code")
import jsonschema  # noqa: E402  (a dependency of ray)
from ray.autoscaler._private.providers import _NODE_PROVIDERS  # noqa: E402
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
KUBERAY_MANIFESTS = {"kuberay/raycluster.yaml": "RayCluster", "kuberay/rayjob.yaml": "RayJob"}
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _ray_start_options() -> set[str]:
    """Every long option of the installed `ray start` (click command), e.g. `--dashboard-host`."""
    from ray.scripts.scripts import start

    return {opt for param in start.params for opt in param.opts if opt.startswith("--")}


def _invocations(commands: list[str]) -> list[tuple[list[str], dict[str, str]]]:
    """(`ray start` argv, env exported earlier in the same shell command) for each `ray start`."""
    found = []
    for command in commands:
        env: dict[str, str] = {}
        for part in re.split(r";|&&|\|\|", command):
            argv = shlex.split(part)
            if argv[:1] == ["export"]:
                env.update(a.split("=", 1) for a in argv[1:] if "=" in a)
                continue
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=x ray start
                key, value = argv.pop(0).split("=", 1)
                env[key] = value
            if argv[:2] == ["ray", "start"]:
                found.append((argv, dict(env)))
    return found


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` or `--name value` in argv (None when absent)."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


@pytest.fixture(params=LAUNCHER_CONFIGS)
def launcher(request) -> tuple[dict, dict]:
    """(the YAML as written, the config `ray up` works with after prepare_config)."""
    raw = _load(request.param)
    return raw, prepare_config(copy.deepcopy(raw))


def _worker_types(cfg: dict) -> dict[str, dict]:
    return {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}


# --------------------------------------------------------------------- cluster launcher


def test_ray_validates_launcher_config(launcher):
    raw, cfg = launcher
    assert raw["provider"]["type"] in _NODE_PROVIDERS
    validate_config(cfg)  # raises on any schema or cross-field error
    # prepare_config kept our node types and sized the head at 0 workers of its own type.
    assert set(cfg["available_node_types"]) == set(raw["available_node_types"])
    assert cfg["available_node_types"][cfg["head_node_type"]]["max_workers"] == 0


@pytest.mark.parametrize(
    "breakage, error, message",
    [
        (lambda c, gpu: c.update(max_wrokers=4), jsonschema.ValidationError, "max_wrokers"),
        (lambda c, gpu: c["available_node_types"][gpu]["resources"].update(GPU=0.5), jsonschema.ValidationError, "0.5"),
        (lambda c, gpu: c["available_node_types"][gpu].update(min_workers="zero"), jsonschema.ValidationError, "zero"),
        (lambda c, gpu: c.update(head_node_type="no-such-type"), ValueError, "head_node_type"),
        (lambda c, gpu: c["available_node_types"][gpu].update(min_workers=c["max_workers"] + 1), ValueError, "min_workers"),
    ],
    ids=["unknown-key", "fractional-gpu", "non-integer-min", "unknown-head-type", "min-over-max"],
)
def test_ray_validation_rejects_broken_config(launcher, breakage, error, message):
    raw, _ = launcher
    broken = copy.deepcopy(raw)
    gpu = next(k for k, v in _worker_types(raw).items() if v["resources"].get("GPU", 0) > 0)
    breakage(broken, gpu)
    with pytest.raises(error, match=re.escape(message)):
        validate_config(prepare_config(broken))


def test_head_schedules_no_probes(launcher):
    _, cfg = launcher
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0


def test_gpu_and_cpu_workers_scale_from_zero(launcher):
    _, cfg = launcher
    workers = _worker_types(cfg)
    gpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) > 0}
    cpu = {k: v for k, v in workers.items() if v["resources"].get("GPU", 0) == 0}
    assert gpu and cpu
    for name, node_type in workers.items():
        assert node_type["min_workers"] == 0, name
        assert 1 <= node_type["max_workers"] <= cfg["max_workers"], name
        assert node_type["resources"].get("CPU", 0) >= 1, name


def test_gpu_workers_are_spot_with_matching_accelerators(launcher):
    raw, cfg = launcher
    for name, node_type in _worker_types(cfg).items():
        node = node_type["node_config"]
        if raw["provider"]["type"] == "aws":
            assert node["InstanceMarketOptions"]["MarketType"] == "spot", name
            assert node["ImageId"] == cfg["available_node_types"][cfg["head_node_type"]]["node_config"]["ImageId"]
        else:
            # GCE refuses preemptible or GPU VMs that would live-migrate on host maintenance.
            assert node["scheduling"] == {"preemptible": True, "onHostMaintenance": "TERMINATE", "automaticRestart": False}, name
            gpus = sum(a["acceleratorCount"] for a in node.get("guestAccelerators", []))
            assert gpus == node_type["resources"].get("GPU", 0), name


def test_ray_start_lines_bind_dashboard_to_loopback(launcher):
    _, cfg = launcher
    options = _ray_start_options()
    head = _invocations(cfg["head_start_ray_commands"])
    workers = _invocations(cfg["worker_start_ray_commands"])
    assert len(head) == 1 and len(workers) == 1
    for argv, _ in head + workers:
        flags = {a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")}
        assert flags <= options, f"not options of `ray start`: {sorted(flags - options)}"
    head_argv = head[0][0]
    assert "--head" in head_argv
    assert _option(head_argv, "--dashboard-host") == "127.0.0.1"
    assert _option(head_argv, "--autoscaling-config") == "~/ray_bootstrap_config.yaml"
    assert "0.0.0.0" not in " ".join(cfg["head_start_ray_commands"])


def test_token_auth_on_every_node(launcher):
    from ray._private.authentication.authentication_token_setup import (
        AUTH_MODE_ENV_VAR,
        _get_default_token_path,
    )

    raw, cfg = launcher
    for argv, env in _invocations(cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]):
        assert env.get(AUTH_MODE_ENV_VAR) == "token", argv
    # Ray reads the token from ~/.ray/auth_token of the user that runs `ray start` (the ssh user).
    token_rel = _get_default_token_path().relative_to(Path.home()).as_posix()
    remote = f"/home/{raw['auth']['ssh_user']}/{token_rel}"
    assert cfg["file_mounts"][remote] == f"~/{token_rel}"
    # Shells Ray opens later (ray exec/attach, job entrypoints) also run in token mode.
    assert any(f"export {AUTH_MODE_ENV_VAR}=token" in c and ".bashrc" in c for c in cfg["initialization_commands"])


def test_no_rule_opens_dashboard_or_client_port(launcher):
    raw, _ = launcher
    rules = raw["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        ports = range(rule.get("FromPort", 0), rule.get("ToPort", 65535) + 1)
        assert not ({8265, 10001} & set(ports)), rule
    if raw["provider"]["type"] == "aws":
        assert raw["provider"]["security_group"]["GroupName"]


def test_setup_installs_lensray_on_every_node(launcher):
    raw, cfg = launcher
    mount = next(remote for remote, local in cfg["file_mounts"].items() if local == ".")
    target = mount.replace("~", "$HOME", 1) + "[all]"
    pinned = f"ray[default,tune,train]=={ray.__version__}"
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in
        argvs = [shlex.split(c) for c in cfg[key] if "pip install" in c]
        installs = [a for a in argvs if "-e" in a and a[a.index("-e") + 1].replace("~", "$HOME", 1) == target]
        assert installs, f"{key} never runs pip install -e {target}"
        assert any(pinned in a for a in argvs), f"{key} does not pin {pinned}"
    sdk = {"aws": "boto3", "gcp": "google-api-python-client"}[raw["provider"]["type"]]
    assert any(sdk in c for c in raw["head_setup_commands"])
    # The working tree is rsynced without what .gitignore names (the local .venv above all).
    assert ".gitignore" in cfg["rsync_filter"]
    assert ".venv/" in (REPO / ".gitignore").read_text().split()


# ------------------------------------------------------------------------------ KubeRay


def _kuberay(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _groups(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(spec: dict) -> list[dict]:
    return [c for g in _groups(spec) for c in g["template"]["spec"]["containers"]]


def _gpu_limit(group: dict) -> int:
    limits = [c.get("resources", {}).get("limits", {}) for c in group["template"]["spec"]["containers"]]
    return sum(int(lim.get("nvidia.com/gpu", 0)) for lim in limits)


def _walk(node):
    """Every dict inside node (depth first)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize("name, kind", KUBERAY_MANIFESTS.items())
def test_kuberay_manifest_kind(name, kind):
    docs = _kuberay(name)
    assert [(d["apiVersion"], d["kind"]) for d in docs] == [("ray.io/v1", kind)]
    assert docs[0]["metadata"]["name"]


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_groups(name):
    spec = _cluster_spec(_kuberay(name)[0])
    options = _ray_start_options()
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == ray.__version__
    for group in _groups(spec):
        params = group["rayStartParams"]
        assert isinstance(params, dict)
        assert {f"--{k}" for k in params} <= options, params
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["image"] for c in containers)
        assert all(ray.__version__ in c["image"] for c in containers)
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert _gpu_limit(spec["headGroupSpec"]) == 0
    gpu = [g for g in spec["workerGroupSpecs"] if _gpu_limit(g) > 0]
    cpu = [g for g in spec["workerGroupSpecs"] if _gpu_limit(g) == 0]
    assert gpu and cpu
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0, group["groupName"]
        assert group.get("replicas", 0) == 0, group["groupName"]
        assert group["maxReplicas"] >= 1, group["groupName"]
    for group in gpu:
        tolerated = {t["key"] for t in group["template"]["spec"].get("tolerations", [])}
        assert "nvidia.com/gpu" in tolerated, group["groupName"]


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_nothing_exposed_outside_the_cluster(name):
    docs = _kuberay(name)
    for doc in docs:
        for node in _walk(doc):
            assert node.get("serviceType") not in PUBLIC_SERVICE_TYPES, node
            if node.get("kind") == "Service" or "headService" in node:
                service = node.get("headService", node)
                assert service.get("spec", {}).get("type") not in PUBLIC_SERVICE_TYPES, node
    head = _cluster_spec(docs[0])["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress", False) is False


def _shared_mounts(group: dict) -> set[tuple[str, str]]:
    """(claimName, mountPath) of every PersistentVolumeClaim the group's Ray container mounts."""
    spec = group["template"]["spec"]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
    mounts = spec["containers"][0].get("volumeMounts", [])
    return {(claims[m["name"]], m["mountPath"]) for m in mounts if m["name"] in claims}


@pytest.mark.parametrize("name", KUBERAY_MANIFESTS)
def test_kuberay_every_group_shares_one_volume(name):
    # Ray Tune persists the checkpoints trials report on worker pods to its storage path: it
    # must be the same storage on every pod (a head-local path fails the first checkpoint).
    spec = _cluster_spec(_kuberay(name)[0])
    shared = [_shared_mounts(g) for g in _groups(spec)]
    assert len(shared[0]) == 1 and all(s == shared[0] for s in shared), shared


def _env(entries: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in entries}


def test_raycluster_token_from_secret_everywhere():
    spec = _cluster_spec(_kuberay("kuberay/raycluster.yaml")[0])
    assert "authOptions" not in spec  # the token is ours (a Secret), not the operator's
    holders = {c["name"] + f"#{i}": c.get("env", []) for i, c in enumerate(_containers(spec))}
    holders["autoscaler"] = spec.get("autoscalerOptions", {}).get("env", [])  # it talks to GCS too
    refs = set()
    for holder, entries in holders.items():
        env = _env(entries)
        assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", holder
        token = env.get("RAY_AUTH_TOKEN", {})
        assert "value" not in token, holder  # never a literal token in the manifest
        ref = token.get("valueFrom", {}).get("secretKeyRef")
        assert ref, f"{holder}: RAY_AUTH_TOKEN does not come from a Secret"
        refs.add((ref["name"], ref["key"]))
    assert len(refs) == 1  # one Secret for head, workers and autoscaler


def test_rayjob_token_auth_and_entrypoint():
    from lensray.cli import build_parser
    from lensray.config.load import load_config

    job = _kuberay("kuberay/rayjob.yaml")[0]
    spec = _cluster_spec(job)
    # The operator submits and polls the job through the dashboard; it sends a token only when
    # authOptions asks for one, and then it provisions the Secret and the env vars itself.
    assert spec["authOptions"]["mode"] == "token"
    for container in _containers(spec):
        assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & set(_env(container.get("env", [])))
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["lensray", "select"]
    args = build_parser().parse_args(argv[1:])  # real options of the lensray CLI
    # The image has this repository at /home/ray/lensray: the config must exist here and load.
    config = REPO / Path(args.config).relative_to("/home/ray/lensray")
    assert load_config(config).name
    # ... and its output goes to the volume every pod shares.
    ((_, mount_path),) = _shared_mounts(spec["headGroupSpec"])
    assert Path(args.out).is_relative_to(mount_path), args.out
