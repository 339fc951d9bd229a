"""`lensray bench select`'s baselines: Tune's own schedulers (ASHA, the median stopping rule) swept
through `run_select`'s `scheduler`, their two picks, and the summary over the cells.
"""

from __future__ import annotations

import pytest

from lensray.bench.curves import budgets
from lensray.bench.select import (
    BASELINES,
    PICKS,
    baseline_cell,
    format_select,
    replay_config,
    summary,
    survivor_picks,
)
from lensray.core.curves import packaged_curves, read_curves
from lensray.core.types import Status

SIZES = [100, 200, 400, 800]


def entry(name: str, losses: list[float]) -> dict:
    """A ranking entry of selection.json, observed at the first len(losses) sizes."""
    return {"candidate": name, "sizes": SIZES[: len(losses)], "losses": losses}


def test_the_picks_come_from_the_candidates_that_reached_the_budget():
    # "flat" is lowest at B but barely falls; "steep" falls fast and wins at T on a log-log line;
    # "stopped" was lower still when it was stopped, but never reached B.
    ranking = [
        entry("flat", [1.00, 0.99, 0.98, 0.97]),
        entry("steep", [2.00, 1.60, 1.28, 1.02]),
        entry("stopped", [0.50, 0.45]),
        entry("worst", [3.0, 2.9, 2.8, 2.7]),
    ]
    assert survivor_picks(ranking, SIZES, 102400, "pool") == ("flat", "steep")
    assert survivor_picks([entry("stopped", [0.5, 0.45])], SIZES, 102400, "pool") == (None, None)


def test_a_baseline_cell_scores_both_picks_over_the_whole_pool():
    import numpy as np

    from lensray.core.types import Selection

    ranking = [entry("flat", [1.00, 0.99, 0.98, 0.97]), entry("steep", [2.0, 1.6, 1.28, 1.02]), entry("stopped", [0.5])]
    doc = {"ranking": ranking, "sizes": SIZES, "target": 102400, "cost": {"fraction_of_all_probes": 0.61234}}
    truth = np.array([0.9, 0.3, 0.1])  # at T: "stopped" is the best, "flat" the worst
    cell = baseline_cell(Selection(doc, {}, {}), truth, {"flat": 0, "steep": 1, "stopped": 2})
    assert cell == {"relacc_observed": 0.0, "relacc_ats": 75.0, "fraction_of_all_probes": 0.6123, "reached_budget": 2}


def test_the_table_shows_each_baseline_and_a_summary_line_per_scheduler():
    flan = packaged_curves()[0]
    cells = {}
    for i, (label, _) in enumerate(budgets(read_curves(flan))):
        base = {b.key: {"relacc_observed": 50.0 + i, "relacc_ats": 80.0, "fraction_of_all_probes": 0.3 + i / 100,
                        "reached_budget": 3} for b in BASELINES}
        cells[label] = {"relacc": 90.0 + i, "pearcorr": 50.0, "fraction_of_all_probes": 0.2, "fraction_of_full": 1e-3,
                        "baselines": base}
    text = format_select({"flan": cells}, [flan])
    header = next(line for line in text.splitlines() if line.startswith("gamma"))
    assert all(b.label in header for b in BASELINES)
    row = next(line for line in text.splitlines() if line.startswith("1/16 "))
    assert row.count("51.0 / 80.0 0.310") == len(BASELINES)
    stats = summary([(c, None) for c in cells.values()])
    n = len(cells)
    assert stats["lensray"]["relacc"] == (90.0 + (n - 1) / 2, 90.0) and stats["lensray"]["cost"] == (0.2, 0.2)
    assert stats["ASHA rf=2"]["relacc_observed"] == (50.0 + (n - 1) / 2, 50.0)
    assert stats["ASHA rf=2"]["cost"] == (0.3, 0.3 + (n - 1) / 100) and "AtS" not in stats
    lines = text.splitlines()
    assert f"summary over {n} cells" in text
    for who in ("lensray", "AtS", *(b.label for b in BASELINES)):
        assert any(line.startswith(f"  {who} ") for line in lines), who


@pytest.mark.slow
def test_tune_schedulers_run_through_the_hook_and_stop_trials(tmp_path):
    # 6 candidates, best first, 4 sizes up to B and the truth at T. Two probes at a time: Tune
    # starts the trials in this order, so the later, worse ones meet a rung or a median they
    # lose to (with all six at once, which reports first is a race and may stop none).
    import numpy as np

    from lensray.pipeline import run_select

    path = tmp_path / "tiny.csv"
    rows = [f"m{i}," + ",".join(f"{(1 + i / 2) * (d / 100) ** -0.1:.4f}" for d in (*SIZES, 6400)) for i in range(6)]
    path.write_text("config name," + ",".join(map(str, (*SIZES, 6400))) + "\n" + "\n".join(rows) + "\n")
    curves = read_curves(path)
    truth, index = curves.losses[:, -1], {c: i for i, c in enumerate(curves.candidates)}
    for base in (BASELINES[0], BASELINES[-1]):  # ASHA rf=2, the median stopping rule
        cfg = replay_config(path, curves, 800, tmp_path / "out", sleep=0.0, name=f"tiny-{base.key}",
                            resources={"cpus_per_worker": 0.25, "max_concurrent": 2})
        sel = run_select(cfg, quiet=True, scheduler=base.scheduler(len(SIZES)))
        stopped = [e for e in sel.doc["ranking"] if e["status"] == Status.STOPPED]
        assert stopped and all(e["reason"].startswith("stopped by ") for e in stopped), base.label
        cell = baseline_cell(sel, truth, index)
        assert 0 < cell["fraction_of_all_probes"] < 1 and all(cell[k] is not None for k in PICKS), cell
        assert cell["reached_budget"] == len(curves.candidates) - len(stopped)
        assert np.isclose(sel.doc["cost"]["flops_spent"], sum(e["flops"] for e in sel.doc["ranking"]))
