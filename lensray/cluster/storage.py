"""Experiment storage: where a sweep's state and its report live, on one machine or a cluster.

A config's `output` (or `--out`) is one of:

- a local folder: one machine;
- a path that every node mounts at the same place (NFS, EFS, Filestore): a cluster;
- a pyarrow filesystem URI (`s3://bucket/prefix`, `gs://bucket/prefix`, `abfs://...`,
  `hdfs://...`), with pyarrow's query options where needed, e.g.
  `s3://bucket/sweeps?region=eu-west-1&endpoint_override=minio.internal:9000&scheme=http`.
  Credentials come from each node's environment, as for any pyarrow or boto client.

Ray Tune and Ray Train keep their own state (trial checkpoints, run snapshots) there themselves:
they are given `uri(...)`. lensray's own files, the scheduler's side file (the sweep's record,
which `--resume` reads) and the report files, are written to a local folder (`local`) and, for a
URI, mirrored: `pull` before a sweep starts (so a job resubmitted on another machine resumes
from the record), `push` while it runs and when it ends. Use it::

    from lensray.cluster.storage import Storage
    st = Storage("s3://bucket/sweeps?region=us-east-1", "demo")
    st.uri("report.md")     # 's3://bucket/sweeps/demo/report.md?region=us-east-1'
    st.local                # ~/.cache/lensray/runs/<hash of the URI>/demo

A probe that keeps its fine-tuned weights (for `lensray serve`) writes them with `put_folder`
to a path or URI under the experiment, and serving reads them back with `fetch_folder`.

Folders lensray fills on its own (a bench's --out, the zoo) are claimed first: `claim_folder`
creates a new or empty folder and marks it (`.lensray`), and refuses a folder with files lensray
did not put there, so a rerun cleans only lensray's own files and never a user's.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from lensray.core.errors import StorageError

SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs", "file")
"""URI schemes pyarrow.fs resolves (GCS and Azure need pyarrow built with them, as the wheels are)."""



def is_uri(output: str) -> bool:
    """True for a storage URI (`scheme://...`), False for a path."""
    return "://" in output


def check_output(output: str) -> None:
    """A URI output must use a scheme pyarrow knows; a path is always accepted."""
    if not is_uri(output):
        if Path(output).expanduser().is_file():
            raise StorageError(f"output {output!r} is a file: give a folder for the experiments (a new or an empty one), or a storage URI")
        return
    scheme = urlsplit(output).scheme
    if scheme not in SCHEMES:
        raise StorageError(
            f"output {output!r}: unknown storage scheme {scheme!r}; use a path, or a URI with one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    if not urlsplit(output).netloc and scheme != "file":
        raise StorageError(f"output {output!r}: name the bucket or host, e.g. {scheme}://my-bucket/sweeps")


MARKER = ".lensray"
"""The file that marks a folder as lensray's (it holds what created the folder)."""


def claim_folder(path: Path, what: str) -> Path:
    """The folder `path` (absolute), made lensray's to write into and clean, for `what` (e.g.
    `lensray bench select`): a missing or empty folder is created and marked (MARKER, holding
    `what`); a marked one is returned as it is; anything else, a file or a folder with files
    lensray did not put there, is refused (StorageError), so nothing a user has is overwritten
    or deleted. Only remove what lensray writes inside it, never the folder itself."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise StorageError(f"{path} is a file, not a folder: choose another --out")
    marker = path / MARKER
    if marker.is_file():
        return path
    if path.is_dir() and any(path.iterdir()):
        raise StorageError(
            f"{path} is not empty and lensray did not create it (no {MARKER} file in it): "
            "choose another --out, or empty the folder"
        )
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{what}\n")
    return path


def resolve_output(output: str) -> str:
    """A URI as given; a path made absolute (against the working folder)."""
    return output if is_uri(output) else str(Path(output).expanduser().resolve())


@dataclass(frozen=True)
class Storage:
    """One experiment's storage: `output`/`name`, as a path or a URI."""

    output: str
    """The configured output folder or URI."""
    name: str
    """The experiment name, a folder under `output`."""

    @property
    def remote(self) -> bool:
        """True when `output` is a URI (lensray's files are then mirrored to it)."""
        return is_uri(self.output)

    def uri(self, *parts: str) -> str:
        """`output/name/parts...` as a path or a URI (with the URI's query kept at its end)."""
        if not self.remote:
            return str(Path(self.output, self.name, *parts))
        u = urlsplit(self.output)
        return urlunsplit((u.scheme, u.netloc, posixpath.join(u.path or "/", self.name, *parts), u.query, ""))

    @property
    def local(self) -> Path:
        """The folder lensray writes its files to: the experiment folder itself for a path, a
        mirror under $LENSRAY_CACHE/runs (else ~/.cache/lensray/runs) for a URI."""
        if not self.remote:
            return Path(self.output) / self.name
        root = Path(os.environ.get("LENSRAY_CACHE") or Path.home() / ".cache" / "lensray")
        return root / "runs" / hashlib.sha256(self.output.encode()).hexdigest()[:12] / self.name

    def pull(self, *names: str) -> None:
        """Make the local mirror's copies of `names` those of the URI (removing ones it lacks)."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        self.local.mkdir(parents=True, exist_ok=True)
        for name in names:
            fs, path = self._fs(name)
            dest = self.local / name
            if self._call(fs.get_file_info, path).type == pafs.FileType.File:
                self._call(pafs.copy_files, path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            else:
                dest.unlink(missing_ok=True)

    def push(self, *names: str) -> None:
        """Upload the local mirror's `names` (those that exist) to the URI."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        for name in names:
            src = self.local / name
            if src.is_file():
                fs, path = self._fs(name)
                self._call(pafs.copy_files, str(src), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def _fs(self, name: str):
        import pyarrow.fs as pafs

        return self._call(pafs.FileSystem.from_uri, self.uri(name))

    def _call(self, fn, *args, **kwargs):
        """fn(...), with pyarrow's errors (ArrowInvalid, OSError from the store) as StorageError."""
        return _uri_call(self.output, fn, *args, **kwargs)


def _uri_call(uri: str, fn, *args, **kwargs):
    """fn(...), with pyarrow's errors on `uri` (ArrowInvalid, OSError from the store) as StorageError."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # noqa: BLE001
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StorageError(
            f"output {uri!r}: {first}; check the URI and the credentials in this machine's environment"
        ) from None


PUT_OWNER = "lensray put_folder"
"""What the MARKER of a folder written by `put_folder` holds."""


def put_folder(src: Path, dest: str) -> None:
    """Copy the folder `src` to `dest` (a path or a URI), replacing what `dest` held, and mark it
    (MARKER). A `dest` that holds files but no marker is a user's: it is refused (StorageError)
    and left as it is. A path is written beside it and renamed into place, so a reader never
    sees half a folder."""
    if not is_uri(dest):
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(target.name + ".partial")
        for folder in (staging, target):
            _refuse_unmarked(folder, folder.is_dir() and any(folder.iterdir()), (folder / MARKER).is_file())
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(src, staging)
        (staging / MARKER).write_text(f"{PUT_OWNER}\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        return
    import pyarrow.fs as pafs

    fs, path = _uri_call(dest, pafs.FileSystem.from_uri, dest)
    held = _uri_call(dest, fs.get_file_info, pafs.FileSelector(path, allow_not_found=True, recursive=True))
    marked = _uri_call(dest, fs.get_file_info, f"{path}/{MARKER}").type == pafs.FileType.File
    _refuse_unmarked(dest, any(i.type == pafs.FileType.File for i in held), marked)
    _uri_call(dest, fs.delete_dir_contents, path, missing_dir_ok=True)
    _uri_call(dest, pafs.copy_files, str(src), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    with _uri_call(dest, fs.open_output_stream, f"{path}/{MARKER}") as out:
        out.write(f"{PUT_OWNER}\n".encode())


def _refuse_unmarked(where, has_files: bool, marked: bool) -> None:
    """A StorageError when `where` holds files and no MARKER: lensray did not write it."""
    if has_files and not marked:
        raise StorageError(
            f"{where} holds files lensray did not put there (no {MARKER} file in it): move them, or "
            "choose another output"
        )


def fetch_folder(src: str) -> Path:
    """The folder `src` on this machine: a path as it is; a URI downloaded once into
    $LENSRAY_CACHE/folders (else ~/.cache/lensray/folders), under a hash of the URI."""
    if not is_uri(src):
        return Path(src)
    import pyarrow.fs as pafs

    root = Path(os.environ.get("LENSRAY_CACHE") or Path.home() / ".cache" / "lensray")
    local = root / "folders" / hashlib.sha256(src.encode()).hexdigest()[:16]
    if not local.is_dir():
        fs, path = _uri_call(src, pafs.FileSystem.from_uri, src)
        staging = local.with_name(local.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        _uri_call(src, pafs.copy_files, path, str(staging), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        staging.rename(local)
    return local
