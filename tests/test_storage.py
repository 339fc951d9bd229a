"""Experiment storage (lensray.cluster.storage): paths and URIs, and a replay sweep whose state and report
live in an S3 bucket, served on loopback by moto's S3-compatible server (no cloud account)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from test_select import replay_raw

from lensray.cluster.storage import MARKER, Storage, claim_folder
from lensray.config.load import config_from_dict
from lensray.core.errors import ConfigError, StorageError
from lensray.pipeline import run_select


def test_uri_joins_before_the_query():
    st = Storage("s3://bucket/sweeps?region=eu-west-1&scheme=http", "demo")
    assert st.remote and st.uri("report.md") == "s3://bucket/sweeps/demo/report.md?region=eu-west-1&scheme=http"
    assert st.uri() == "s3://bucket/sweeps/demo?region=eu-west-1&scheme=http"
    local = Storage("/mnt/shared/out", "demo")
    assert not local.remote and local.uri("report.md") == "/mnt/shared/out/demo/report.md"
    assert local.local == Path("/mnt/shared/out/demo")


def test_uri_mirror_is_per_output(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSRAY_CACHE", str(tmp_path))
    a, b = Storage("s3://one/x", "demo"), Storage("s3://two/x", "demo")
    assert a.local.parent != b.local.parent and a.local.is_relative_to(tmp_path / "runs")


@pytest.mark.parametrize(
    "output, message",
    [("ftp://host/x", "unknown storage scheme 'ftp'; use a path, or a URI with one of s3://"),
     ("s3:///sweeps", r"name the bucket or host, e.g. s3://my-bucket/sweeps")],
)
def test_bad_output_uri_is_refused_naming_output(tmp_path, output, message):
    with pytest.raises(ConfigError, match=f"output {output!r}: {message}"):
        config_from_dict(replay_raw(tmp_path, output=output))


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "results").write_text("mine\n")
    with pytest.raises(ConfigError, match=r"output '.*results' is a file: give a folder"):
        config_from_dict(replay_raw(tmp_path, output=str(tmp_path / "results")))
    assert (tmp_path / "results").read_text() == "mine\n"


def test_claim_folder_creates_and_marks_a_new_or_empty_folder(tmp_path):
    new = claim_folder(tmp_path / "a" / "b", "lensray bench select")
    assert new == (tmp_path / "a" / "b").resolve() and (new / MARKER).read_text() == "lensray bench select\n"
    (tmp_path / "empty").mkdir()
    assert (claim_folder(tmp_path / "empty", "x") / MARKER).is_file()
    (new / "sweep").mkdir()  # what lensray wrote there: the folder stays lensray's
    assert claim_folder(new, "lensray bench select") == new


def test_claim_folder_refuses_a_folder_with_a_users_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError) as err:
        claim_folder(tmp_path, "lensray bench select")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "choose another --out, or empty the folder" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # untouched, not marked
    with pytest.raises(StorageError, match="is a file, not a folder: choose another --out"):
        claim_folder(tmp_path / "notes.txt", "x")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def s3():
    """A loopback S3 endpoint with bucket `lensray`; the URI of a prefix in it. The credentials
    are in the environment, which the local Ray's workers inherit, as on a real cluster."""
    server_mod = pytest.importorskip("moto.server")
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "lensray", "AWS_SECRET_ACCESS_KEY": "lensray", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="lensray")
        yield {"uri": f"s3://lensray/sweeps?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1",
               "port": port}
    server.stop()


def _bucket_files(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    return [i.path[len(root) + 1 :] for i in infos if i.type == pafs.FileType.File]


@pytest.mark.slow
def test_sweep_lives_in_the_bucket_and_resumes_on_another_machine(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSRAY_CACHE", str(tmp_path / "machine-a"))  # where the local mirror goes
    cfg = config_from_dict(replay_raw(tmp_path, output=s3["uri"]))
    first = run_select(cfg, quiet=True)
    files = _bucket_files(Storage(s3["uri"], "t").uri())
    names = {Path(f).name for f in files}
    assert {"sweep.jsonl", "selection.json", "observations.parquet", "report.md", "curves.png"} <= names
    assert any(n.startswith("experiment_state") for n in names), files  # Tune's own state
    assert "sizes_done.json" in names, files  # the probes' checkpoints
    assert json.loads((Storage(s3["uri"], "t").local / "selection.json").read_text())["selected"] == first.selected

    monkeypatch.setenv("LENSRAY_CACHE", str(tmp_path / "machine-b"))  # a fresh machine: empty mirror
    with pytest.raises(ConfigError, match=r"s3://lensray/sweeps/t\?.* already holds a sweep"):
        run_select(cfg, quiet=True)
    again = run_select(cfg, resume=True, quiet=True)
    assert again.selected == first.selected and again.doc["ranking"] == first.doc["ranking"]
    records = [json.loads(line) for line in (Storage(s3["uri"], "t").local / "sweep.jsonl").read_text().splitlines()]
    seen = [(r["candidate"], r["size"]) for r in records if r["event"] == "observation"]
    assert seen and len(seen) == len(set(seen))  # the resume ran no probe again


def test_unreachable_storage_is_one_clear_error(s3, tmp_path, monkeypatch):
    monkeypatch.setenv("LENSRAY_CACHE", str(tmp_path))
    bad = Storage(s3["uri"].replace("lensray/", "no-such-bucket/"), "t")
    bad.local.mkdir(parents=True)
    (bad.local / "sweep.jsonl").write_text("{}\n")
    with pytest.raises(StorageError, match=r"output 's3://no-such-bucket/.*check the URI and the credentials"):
        bad.push("sweep.jsonl")


def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_put_folder_replaces_a_folder_whole_and_fetch_folder_reads_a_path_in_place(tmp_path):
    from lensray.cluster.storage import fetch_folder, put_folder

    dest = tmp_path / "exp" / "weights" / "m"
    put_folder(_folder(tmp_path / "a", {"config.json": "1", "old.bin": "x"}), str(dest))
    put_folder(_folder(tmp_path / "b", {"config.json": "2"}), str(dest))
    assert sorted(p.name for p in dest.iterdir()) == [MARKER, "config.json"] and (dest / "config.json").read_text() == "2"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m"]  # no staging folder left
    assert fetch_folder(str(dest)) == dest
    # a folder of the user's at that place is refused and left as it is
    mine = _folder(tmp_path / "exp" / "weights" / "mine", {"notes.txt": "mine"})
    with pytest.raises(StorageError, match=r"mine holds files lensray did not put there \(no \.lensray file"):
        put_folder(tmp_path / "b", str(mine))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "mine"


def test_a_folder_put_to_a_bucket_is_fetched_once_into_the_cache(s3, tmp_path, monkeypatch):
    from lensray.cluster.storage import fetch_folder, put_folder

    monkeypatch.setenv("LENSRAY_CACHE", str(tmp_path / "cache"))
    uri = Storage(s3["uri"], "w").uri("weights", "m")
    put_folder(_folder(tmp_path / "a", {"config.json": "1", "old.bin": "x"}), uri)
    put_folder(_folder(tmp_path / "b", {"config.json": "2", "model.safetensors": "w"}), uri)
    assert sorted(_bucket_files(uri)) == [MARKER, "config.json", "model.safetensors"]
    local = fetch_folder(uri)
    assert local.is_relative_to(tmp_path / "cache") and (local / "model.safetensors").read_text() == "w"
    assert sorted(p.name for p in local.iterdir()) == [MARKER, "config.json", "model.safetensors"]
    (local / "config.json").write_text("cached")
    assert fetch_folder(uri) == local and (local / "config.json").read_text() == "cached"  # not downloaded again
    # a prefix holding a user's files is refused and left as it is
    theirs = Storage(s3["uri"], "w").uri("weights", "theirs")
    put_folder(_folder(tmp_path / "c", {"data.csv": "x"}), theirs)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(theirs)
    fs.delete_file(f"{path}/{MARKER}")  # as if a user had put data.csv there
    with pytest.raises(StorageError, match=r"holds files lensray did not put there"):
        put_folder(tmp_path / "b", theirs)
    assert _bucket_files(theirs) == ["data.csv"]
