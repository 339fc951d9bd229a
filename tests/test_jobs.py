"""`lensray submit`'s checks on the laptop, before anything reaches a cluster (no Ray started;
the real submissions are in test_cluster.py)."""

import pytest

from lensray.cli import main
from lensray.cluster.jobs import plan_submission
from lensray.core.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "select.yaml"
    path.write_text(text)
    return path


CONFIG = "backend: replay\nreplay: {curves: flan.csv}\n"


def test_the_config_folder_travels_and_the_job_runs_select_on_it(tmp_path):
    (tmp_path / "flan.csv").write_text("unused: the config is only validated, not read as curves here\n")
    sub = plan_submission(str(write(tmp_path, CONFIG)), "/mnt/shared/x", resume=True, cpus=1.0)
    assert sub.working_dir == str(tmp_path.resolve())
    assert sub.entrypoint == "lensray select select.yaml --out /mnt/shared/x --resume"
    assert (sub.output, sub.entrypoint_num_cpus) == ("/mnt/shared/x", 1.0)


def test_a_config_valid_only_with_its_overrides_is_submitted_with_them(tmp_path):
    (tmp_path / "flan.csv").write_text("unused\n")
    path = write(tmp_path, "backend: replay\n")  # no replay.curves: refused on its own
    with pytest.raises(ConfigError, match="replay.curves is empty"):
        plan_submission(str(path), "/mnt/shared/x", resume=False)
    sub = plan_submission(str(path), "/mnt/shared/x", resume=False, overrides=["replay.curves=flan.csv"])
    assert sub.entrypoint == "lensray select select.yaml --out /mnt/shared/x --set replay.curves=flan.csv"


@pytest.mark.parametrize(
    "out, message",
    [
        (None, "is relative"),  # the config's default `out` would land in the job's temp dir
        ("results", "is relative"),
        ("ftp://host/lensray", "unknown storage scheme 'ftp'"),
    ],
)
def test_outputs_a_job_would_lose_are_refused(tmp_path, out, message):
    with pytest.raises(ConfigError, match=message):
        plan_submission(str(write(tmp_path, CONFIG)), out, resume=False)


def test_a_storage_uri_is_a_shared_output(tmp_path):
    (tmp_path / "flan.csv").write_text("unused\n")
    sub = plan_submission(str(write(tmp_path, CONFIG)), "s3://bucket/lensray?region=eu-west-1", resume=False)
    assert sub.output == "s3://bucket/lensray?region=eu-west-1"
    assert sub.entrypoint == "lensray select select.yaml --out 's3://bucket/lensray?region=eu-west-1'"


def test_a_file_outside_the_travelling_folder_is_refused_naming_the_field(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (tmp_path / "flan.csv").write_text("unused\n")
    config = write(job, "backend: replay\nreplay: {curves: ../flan.csv}\n")
    with pytest.raises(ConfigError, match=r"replay.curves '../flan.csv' lies outside .*copy the file next to the config"):
        plan_submission(str(config), "/mnt/shared/x", resume=False)
    # the same file by an absolute path (shared storage) is the user's call, and goes through
    config.write_text(f"backend: replay\nreplay: {{curves: {tmp_path / 'flan.csv'}}}\n")
    assert plan_submission(str(config), "/mnt/shared/x", resume=False).working_dir == str(job.resolve())


def test_a_bad_config_fails_here_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match="plan.budget"):
        plan_submission(str(write(tmp_path, CONFIG + "plan: {budget: 10, target: 5}\n")), "/mnt/x", resume=False)


def test_cli_needs_an_address_and_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(["jobs"]) == 2
    assert "--address http://HEAD:8265" in capsys.readouterr().err
    assert main(["logs", "x", "--address", "127.0.0.1:8265"]) == 2
    assert "is not the job server's URL" in capsys.readouterr().err


def test_cli_reports_an_unreachable_cluster_in_one_line(tmp_path, capsys):
    assert main(["stop", "raysubmit_x", "--address", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray job server at http://127.0.0.1:9" in err and "Traceback" not in err
