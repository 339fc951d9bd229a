"""The command line: JSON shape of `bench curves`, and one-line errors for bad input."""

import json
import subprocess
import sys

from lensray.bench import GAMMAS
from lensray.curves import packaged_curves
from lensray.predict import METHODS


def lensray(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lensray", *args], capture_output=True, text=True, cwd=cwd)


def test_bench_curves_json_has_exactly_the_documented_shape(tmp_path):
    out = tmp_path / "b.json"
    data = [str(p) for p in packaged_curves()]
    run = lensray("bench", "curves", "--data", data[0], "--data", data[1], "--json", str(out))
    assert run.returncode == 0, run.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"flan", "wmt19"}
    for by_method in doc.values():
        assert list(by_method) == list(METHODS)
        for cells in by_method.values():
            assert list(cells) == [f"1/{g}" for g in GAMMAS]
            for cell in cells.values():
                assert set(cell) == {"pearcorr", "relacc"}
                assert all(isinstance(v, float) for v in cell.values())
    assert "PearCorr / RelAcc" in run.stdout and "coverage of the 90% intervals" in run.stdout
    assert "one candidate's fit" in run.stdout and "whole bench" in run.stdout


def test_bench_curves_runs_on_a_users_own_file(tmp_path):
    sizes = [200 * 2**i for i in range(14)]  # 200 ... 1638400, as in the schema
    rows = [",".join(["config name", "0", *map(str, sizes), "size"])]
    for i, slope in enumerate((0.05, 0.08, 0.11)):
        rows.append(",".join([f"m{i}", "5", *(f"{4 * (s / 200) ** -slope:.4f}" for s in sizes), "1000"]))
    path = tmp_path / "mine.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o.json"
    run = lensray("bench", "curves", "--data", str(path), "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert json.loads(out.read_text())["mine"]["lensray"]["1/8"]["relacc"] == 100.0


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("config name,200,400\na,3,x\n")
    run = lensray("bench", "curves", "--data", str(bad))
    assert run.returncode == 2
    assert run.stderr.startswith("lensray: error:") and "not a number" in run.stderr
    assert "Traceback" not in run.stderr
    missing = lensray("bench", "curves", "--data", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
