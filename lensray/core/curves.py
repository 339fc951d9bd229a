"""Recorded fine-tuning curves: the table the benchmark and the replay backend read.

Schema (the one of shared/benchmarks/finetune-curves/, from Lin et al. 2024): one row per
candidate; a name column (`config name`, else the first column); one column per fine-tuning size
named by the integer size (`200`, `400`, ...; `200.0` reads as `200`), holding the held-out loss
after fine-tuning on that many examples; optional `0` (zero-shot loss), `size` (parameter count)
and `family`; other columns (such as the `ntk_*` ones `lensray record` writes) are left out.
CSV or Parquet. Every problem is reported with the file, row and column, and how to fix it.

    from lensray.core.curves import read_curves
    curves = read_curves("flan.csv").upto(3200)
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from lensray.core.errors import CurveError


@dataclass(frozen=True)
class Curves:
    """Loss curves of a pool of candidates on one data set."""

    name: str
    """Data set name (the file stem)."""
    candidates: list[str]
    """Candidate names, one per row."""
    sizes: np.ndarray
    """Fine-tuning sizes D, strictly increasing, shape (n,)."""
    losses: np.ndarray
    """Held-out loss, shape (candidates, n)."""
    zero_shot: np.ndarray | None = None
    """Loss of each pretrained model without fine-tuning (column `0`), if recorded."""
    n_params: np.ndarray | None = None
    """Parameter count of each model (column `size`), if recorded."""
    family: list[str] | None = None
    """Model family of each candidate (column `family`), if recorded."""

    def upto(self, budget: int) -> "Curves":
        """The curves restricted to sizes <= budget (what a method at budget B may look at)."""
        keep = self.sizes <= budget
        if not keep.any():
            raise CurveError(
                f"{self.name}: budget {budget} is smaller than the smallest size "
                f"{int(self.sizes[0])}; use a budget >= {int(self.sizes[0])}"
            )
        return replace(self, sizes=self.sizes[keep], losses=self.losses[:, keep])

    def loss_at(self, size: int) -> np.ndarray:
        """The column of losses at exactly `size`."""
        hit = np.flatnonzero(self.sizes == size)
        if hit.size == 0:
            raise CurveError(
                f"{self.name}: no column for size {size}; sizes are {self.sizes.astype(int).tolist()}"
            )
        return self.losses[:, hit[0]]


def packaged_curves() -> list[Path]:
    """The recorded curves shipped with lensray (FLAN and WMT19 of Lin et al., Apache-2.0)."""
    root = resources.files("lensray") / "resources" / "curves"
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".csv"))


def recorded_curves() -> list[Path]:
    """The curves `lensray record` recorded on the offline zoo and shipped with lensray
    (lensray/resources/curves/recorded/, whose README.md says how each was made)."""
    root = resources.files("lensray") / "resources" / "curves" / "recorded"
    if not root.is_dir():
        return []
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".csv"))


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if path.suffix.lower() in {".parquet", ".pq"}:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        cols = [str(c) for c in table.column_names]
        data = [table.column(i).to_pylist() for i in range(len(cols))]
        return cols, [["" if v is None else str(v) for v in row] for row in zip(*data)]
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        raise CurveError(f"{path}: the file is empty; expected a header row and one row per candidate")
    return [c.strip() for c in rows[0]], [r for r in rows[1:] if any(v.strip() for v in r)]


def _number(path: Path, row: int, col: str, text: str, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CurveError(f"{path}: row {row}, column {col!r}: {text!r} is not a number") from None
    if math.isnan(value) or math.isinf(value):
        raise CurveError(f"{path}: row {row}, column {col!r}: the loss is {text}; fill in a finite value or drop the column")
    if positive and value <= 0:
        raise CurveError(f"{path}: row {row}, column {col!r}: the loss {text} is not positive; losses must be > 0")
    return value


def _size_name(path: Path, column: str) -> str:
    """A size column's name as the integer it is ('200.0', written by tools that keep sizes as
    floats, reads as '200'); any other column's name unchanged."""
    try:
        value = float(column)
    except ValueError:
        return column
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise CurveError(
            f"{path}: column {column!r} looks like a size but is not a whole number of examples; "
            "name size columns by their integer size (e.g. '200')"
        )
    return str(int(value))


def read_curves(path: str | Path) -> Curves:
    """Read and validate a curves table (CSV or Parquet) of the schema above."""
    path = Path(path)
    if not path.is_file():
        raise CurveError(f"{path}: no such file; pass a CSV or Parquet of recorded curves")
    header, rows = _read_rows(path)
    if not rows:
        raise CurveError(f"{path}: no data rows; expected one row per candidate")
    header = [_size_name(path, c) for c in header]
    name_col = header.index("config name") if "config name" in header else 0
    size_cols = [(i, int(c)) for i, c in enumerate(header) if c.isdigit() and int(c) > 0]
    if len(size_cols) < 2:
        raise CurveError(
            f"{path}: found {len(size_cols)} size column(s); expected columns named by the number of "
            f"fine-tuning examples (e.g. '200', '400', ...). Columns present: {header}"
        )
    size_cols.sort(key=lambda t: t[1])
    sizes = np.array([s for _, s in size_cols], dtype=float)
    if np.any(np.diff(sizes) == 0):
        raise CurveError(f"{path}: a size column appears twice: {sizes.astype(int).tolist()}")
    idx = {c: i for i, c in enumerate(header)}
    names, losses, zero, params, family = [], [], [], [], []
    for r, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise CurveError(f"{path}: row {r} has {len(row)} fields, the header has {len(header)}")
        names.append(row[name_col].strip() or f"row-{r}")
        losses.append([_number(path, r, header[i], row[i], True) for i, _ in size_cols])
        if "0" in idx:
            zero.append(_number(path, r, "0", row[idx["0"]], True))
        if "size" in idx:
            params.append(_number(path, r, "size", row[idx["size"]], True))
        if "family" in idx:
            family.append(row[idx["family"]])
    dup = {n for n, k in Counter(names).items() if k > 1}
    if dup:
        raise CurveError(f"{path}: candidate names must be unique; repeated: {sorted(dup)}")
    return Curves(
        name=path.stem,
        candidates=names,
        sizes=sizes,
        losses=np.array(losses),
        zero_shot=np.array(zero) if zero else None,
        n_params=np.array(params) if params else None,
        family=family or None,
    )
