"""Selection jobs on a Ray cluster, over the Ray Jobs API: submit, list, logs, stop.

    lensray submit CONFIG --address http://127.0.0.1:8265 --out /shared/lensray [--wait]

The config is validated here first, so a bad config fails on the laptop, not on the cluster.
Its folder travels as the job's working directory (paths in it are relative to the config, so
data files next to it come along), and the job runs `lensray select <config>` on the head node,
where `RAY_ADDRESS` makes the sweep join the cluster. The report files land in the config's
`output` (or `--out`), which must be storage the cluster's nodes share: an absolute path (e.g. an
NFS mount), not a folder of the job's temporary working directory.

Token authentication: when the cluster runs with `RAY_AUTH_MODE=token`, set the same
`RAY_AUTH_MODE=token` here and give the token (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
`~/.ray/auth_token`, see `ray get-auth-token`); Ray's client sends it with every request.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from lensray.cluster.storage import is_uri
from lensray.config.load import DEMO_CONFIG, FILE_FIELDS, check_output, load_config
from lensray.core.errors import ConfigError, JobError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")



@dataclass(frozen=True)
class Submission:
    """What `lensray submit` sends: the entrypoint, its working directory and resources."""

    entrypoint: str
    working_dir: str | None
    output: str
    entrypoint_num_cpus: float
    entrypoint_num_gpus: float


def job_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise ConfigError("no cluster given: pass --address http://HEAD:8265 (the job server) or set RAY_ADDRESS")
    if not address.startswith(("http://", "https://")):
        raise ConfigError(f"--address {address!r} is not the job server's URL: use http://HEAD:8265")
    return address


def plan_submission(config: str | None, out: str | None, resume: bool, cpus: float = 0.0, gpus: float = 0.0,
                    overrides: list[str] | tuple[str, ...] = ()) -> Submission:
    """Validate CONFIG (with its `--set` overrides) here and build the job that runs it on the
    cluster with the same overrides."""
    if config is None:
        if not out:
            raise ConfigError("the demo needs --out: an absolute path on storage the cluster's nodes share")
        load_config(DEMO_CONFIG, overrides)
        working_dir, cmd, raw = None, ["lensray", "select"], {}
    else:
        path = Path(config)
        load_config(path, overrides)  # fail here, with the field named, rather than on the cluster
        raw = yaml.safe_load(path.read_text()) or {}  # as written: load_config makes paths absolute
        _check_files_travel(raw, path.resolve().parent)
        working_dir, cmd = str(path.resolve().parent), ["lensray", "select", path.name]
    output = out or str(raw.get("output", "out"))
    check_output(output)
    if not is_uri(output) and not PurePosixPath(output).is_absolute():
        raise ConfigError(
            f"output {output!r} is relative: a submitted job would write it into its temporary working "
            "directory on the head node, where it is lost; pass --out with an absolute path on storage the "
            "cluster's nodes share (e.g. /mnt/shared/lensray)"
        )
    cmd += ["--out", output] + [arg for item in overrides for arg in ("--set", item)]
    if resume:
        cmd.append("--resume")
    return Submission(shlex.join(cmd), working_dir, output, cpus, gpus)


def _check_files_travel(raw: dict, folder: Path) -> None:
    """Only the config's folder travels to the cluster: a relative file path that leaves it would
    be missing there, so refuse it here, naming the field."""
    for section, key in FILE_FIELDS:
        value = (raw.get(section) or {}).get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            if not (folder / value).resolve().is_relative_to(folder):
                raise ConfigError(
                    f"{section}.{key} {value!r} lies outside {folder}, the folder that travels to the cluster "
                    "as the job's working directory: copy the file next to the config, or give an absolute "
                    "path on storage every node mounts"
                )


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    url = job_address(address)
    try:
        return JobSubmissionClient(url)
    except Exception as err:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError or an auth error)
        raise JobError(_explain(err, url)) from None


def _explain(err: Exception, url: str) -> str:
    text = str(err)
    if "auth" in text.lower() or "401" in text or "403" in text:
        return (
            f"the cluster at {url} refused the request: it requires its token; set RAY_AUTH_MODE=token "
            "and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"cannot reach the Ray job server at {url} ({first}): is the cluster up and its dashboard port forwarded?"


def _call(address: str | None, fn):
    client = _client(address)
    try:
        return fn(client)
    except Exception as err:  # noqa: BLE001
        raise JobError(_explain(err, job_address(address))) from None


def submit(sub: Submission, address: str | None) -> str:
    """Submit the job; returns its submission id."""
    runtime_env = {"working_dir": sub.working_dir} if sub.working_dir else None
    return _call(
        address,
        lambda c: c.submit_job(
            entrypoint=sub.entrypoint,
            runtime_env=runtime_env,
            entrypoint_num_cpus=sub.entrypoint_num_cpus,
            entrypoint_num_gpus=sub.entrypoint_num_gpus,
            metadata={"lensray": "select", "output": sub.output},
        ),
    )


def wait(job_id: str, address: str | None, poll_s: float = 2.0) -> str:
    """Print the job's logs as they grow until it ends; returns its final status."""
    shown = 0
    while True:
        status = str(_call(address, lambda c: c.get_job_status(job_id)).value)
        logs = _call(address, lambda c: c.get_job_logs(job_id))
        sys.stdout.write(logs[shown:])
        sys.stdout.flush()
        shown = len(logs)
        if status in TERMINAL:
            return status
        time.sleep(poll_s)


def list_jobs(address: str | None) -> list[dict]:
    """The cluster's jobs, newest first: id, status, entrypoint, start time."""
    jobs = _call(address, lambda c: c.list_jobs())
    rows = [
        {
            "id": j.submission_id or j.job_id,
            "status": str(j.status.value),
            "entrypoint": j.entrypoint,
            "start_time": j.start_time,
            "message": j.message or "",
        }
        for j in jobs
    ]
    return sorted(rows, key=lambda r: r["start_time"] or 0, reverse=True)


def logs(job_id: str, address: str | None) -> str:
    return _call(address, lambda c: c.get_job_logs(job_id))


def stop(job_id: str, address: str | None) -> bool:
    """Ask the cluster to stop the job (its sweep's state stays: `submit --resume` continues it)."""
    return bool(_call(address, lambda c: c.stop_job(job_id)))
