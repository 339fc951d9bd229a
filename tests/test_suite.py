"""The predictor suite: the synthetic pools' generator (lensray/bench/synth.py), the suite's
scoring and JSON, and its targets (lensray/bench/suite.py). Fast, no Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lensray.bench.suite as suite_module
from lensray.bench.curves import GAMMAS, budgets
from lensray.bench.suite import check_targets, format_suite, run_suite, suite_json
from lensray.bench.synth import SUITE_PARTS, SUITE_SIZES, suite_pool, suite_pool_truth
from lensray.cli import main
from lensray.predict.methods import DEFAULT_PREDICTOR, predict

LABELS = [f"1/{g}" for g in GAMMAS]


@pytest.fixture(scope="module")
def dev():
    return [suite_pool_truth(seed) for seed in SUITE_PARTS["dev"]]


def column(pool, budget: int) -> int:
    return int(np.flatnonzero(pool.curves.sizes == budget)[0])


def test_the_split_is_fixed_and_disjoint():
    assert list(SUITE_PARTS["dev"]) == list(range(40)) and list(SUITE_PARTS["held-out"]) == list(range(1000, 1120))
    assert not set(SUITE_PARTS["dev"]) & set(SUITE_PARTS["held-out"])


def test_a_seed_gives_the_same_pool_and_another_seed_another():
    a, b, c = suite_pool(7), suite_pool(7), suite_pool(8)
    assert a.candidates == b.candidates and a.family == b.family
    for x, y in ((a.losses, b.losses), (a.zero_shot, b.zero_shot), (a.n_params, b.n_params)):
        np.testing.assert_array_equal(x, y)
    assert a.name != c.name and (a.losses.shape != c.losses.shape or not np.allclose(a.losses, c.losses))


def test_pools_have_the_packaged_files_shape(dev):
    for pool in dev:
        c = pool.curves
        assert 15 <= len(c.candidates) <= 40 and c.losses.shape == (len(c.candidates), 14)
        np.testing.assert_array_equal(c.sizes, SUITE_SIZES)
        assert c.sizes[0] == 200 and c.sizes[-1] == 1_638_400
        assert (c.losses > 0).all() and (c.zero_shot > 0).all() and len(c.family) == len(c.candidates)
        assert [t.name for t in pool.truth] == c.candidates and [t.family for t in pool.truth] == c.family
    assert {len(p.curves.candidates) for p in dev} != {len(dev[0].curves.candidates)}  # sizes vary


def test_steps_are_abrupt_drops_at_any_size_then_the_old_slope(dev):
    stepped = [(p, i, t) for p in dev for i, t in enumerate(p.truth) if t.step_at is not None]
    share = len(stepped) / sum(len(p.truth) for p in dev)
    assert 0.1 < share < 0.5
    assert {t.step_at for _, _, t in stepped} == set(range(1, 14))  # every pair of sizes, e.g. 10: just before B at 1/8
    for pool, i, t in stepped:
        d = np.diff(np.log(pool.clean[i]))  # log-loss change from one size to the next
        j = t.step_at - 1  # across the step
        # the smooth change there, from the pairs either side (the old slope before and after)
        smooth = (d[j - 1] + d[j + 1]) / 2 if 0 < j < d.size - 1 else 2 * d[1] - d[2] if j == 0 else 2 * d[-2] - d[-3]
        assert d[j] - smooth == pytest.approx(-t.step_drop, abs=0.05)  # the curvature of the knee aside


def test_noise_levels_differ_by_pool_and_outliers_occur_below_t(dev):
    levels = [p.knobs.noise for p in dev]
    assert min(levels) < 0.004 and max(levels) > 0.015 and all(0.002 <= v <= 0.03 for v in levels)
    for pool in dev[:10]:
        resid = np.log(pool.curves.losses / pool.clean)
        clean = np.ones_like(resid, bool)
        for i, t in enumerate(pool.truth):
            clean[i, list(t.outliers)] = False
        assert np.std(resid[clean]) == pytest.approx(pool.knobs.noise, rel=0.5)
    hits = [(p, i, j) for p in dev for i, t in enumerate(p.truth) for j in t.outliers]
    assert hits and all(j < 13 for _, _, j in hits)  # never at T
    assert max(abs(np.log(p.curves.losses[i, j] / p.clean[i, j])) for p, i, j in hits) > 0.04


def test_pre_power_phases_end_anywhere_and_some_are_flat_at_the_budget(dev):
    d_star = np.array([t.d_star for p in dev for t in p.truth])
    assert d_star.min() < 200 and d_star.max() > 204_800  # before the first size, past the 1/8 budget
    b = dict(budgets(dev[0].curves))["1/64"]
    flat = 0
    for pool in dev:
        k = column(pool, b)
        ly, lx = np.log(pool.clean), np.log(pool.curves.sizes)
        at_b = (ly[:, k] - ly[:, k - 2]) / (lx[k] - lx[k - 2])
        later = (ly[:, -1] - ly[:, k]) / (lx[-1] - lx[k])
        flat += int(((at_b > -0.02) & (later < -0.05)).sum())  # flat at B, falling after it
    assert flat >= 10


def test_floors_differ_and_curves_both_bend_and_keep_steepening(dev):
    floors = np.array([t.floor for p in dev for t in p.truth])
    assert floors.max() / floors.min() > 20
    ly = np.log(np.concatenate([p.clean for p in dev]))
    slope = np.diff(ly, axis=1) / np.log(2)
    mid, last = slope[:, 6], slope[:, -1]  # at 12,800 and at T
    assert ((last < mid - 0.03) & (last < -0.1)).sum() >= 20  # steepening late in log-log
    assert ((last > mid + 0.03) & (last > -0.05)).sum() >= 20  # bent towards the floor before T
    # a bent curve is near its floor at T
    e = np.array([t.floor for p in dev for t in p.truth])
    near = np.exp(ly[:, -1]) < 1.5 * e
    assert near.sum() >= 20


def test_curves_cross(dev):
    b = dict(budgets(dev[0].curves))["1/64"]
    differ = best_moves = 0
    for pool in dev:
        early, final = pool.curves.losses[:, column(pool, b)], pool.curves.losses[:, -1]
        differ += not np.array_equal(np.argsort(early), np.argsort(final))
        best_moves += int(np.argmin(early) != np.argmin(final))
    assert differ == len(dev) and best_moves >= len(dev) // 4


def test_families_share_the_data_exponent(dev):
    for pool in dev:
        fams = {}
        for t in pool.truth:
            fams.setdefault(t.family, []).append(t)
        assert len(fams) == pool.knobs.families >= 2 and max(len(v) for v in fams.values()) >= 2
        for members in fams.values():
            assert len({t.beta for t in members}) == 1
        if pool.knobs.shared_transition:
            for members in fams.values():
                spread = np.ptp(np.log([t.d_star for t in members])) if len(members) > 1 else 0.0
                assert spread < 3.0  # within exp(N(0, 0.3)) of the family's D*
    assert any(p.knobs.shared_transition for p in dev) and not all(p.knobs.shared_transition for p in dev)


def test_model_sizes_spread_100x_and_go_with_lower_floors(dev):
    for pool in dev:
        n = pool.curves.n_params
        assert n.max() / n.min() >= 100 - 1e-6
    n = np.log([t.n_params for p in dev for t in p.truth])
    e = np.log([t.floor for p in dev for t in p.truth])
    assert np.corrcoef(n, e)[0, 1] < -0.1  # loosely: larger models, lower floors
    zero = np.concatenate([p.curves.zero_shot for p in dev])
    first = np.concatenate([p.clean[:, 0] for p in dev])
    assert (zero > first).mean() > 0.9


# --- the targets, on hand-made numbers ----------------------------------------------------------


COVER_OK = dict.fromkeys(LABELS, 0.9)


def by_what(targets):
    return {t.what: t for t in targets}


def test_synthetic_targets_met():
    ats = [(60.0, 90.0)] * 100
    mine = [(66.0, 92.0)] * 99 + [(66.0, 79.0)]  # one cell in 100 more than 10 below AtS
    t = by_what(check_targets("synthetic", "synthetic held-out", mine, ats, COVER_OK, COVER_OK))
    assert all(x.met and x.miss == 0 for x in t.values()) and len(t) == 6
    assert t["mean PearCorr >= AtS's + 5"].figure == "66.0 vs AtS 60.0, +6.0"
    assert t["cells with RelAcc > 10 below AtS's < 2%"].figure == "1.0% of 100 cells"


def test_synthetic_targets_missed_say_by_how_much():
    ats = [(60.0, 90.0)] * 10
    mine = [(62.0, 70.0)] * 2 + [(62.0, 91.0)] * 8  # mean RelAcc 86.8, p10 70
    cover = dict(COVER_OK) | {"1/64": 0.70, "1/512": 0.97}
    pairs = dict(COVER_OK) | {"1/8": None}
    t = by_what(check_targets("synthetic", "g", mine, ats, cover, pairs))
    assert not t["mean PearCorr >= AtS's + 5"].met and t["mean PearCorr >= AtS's + 5"].miss == pytest.approx(3.0)
    assert t["mean RelAcc >= AtS's"].miss == pytest.approx(90 - 86.8)
    assert t["10th-percentile RelAcc >= AtS's"].miss == pytest.approx(20.0)
    assert t["cells with RelAcc > 10 below AtS's < 2%"].miss == pytest.approx(18.0)  # 20% of the cells
    single = t["single coverage in [80, 95]% at every budget"]
    assert not single.met and single.miss == pytest.approx(10.0) and "1/64: 70" in single.figure
    pair = t["pairwise coverage in [80, 95]% at every budget"]
    assert not pair.met and "1/8: n/a" in pair.figure  # not measured misses
    assert "MISSED by 10.00" in single.line()


def test_real_targets():
    ats = [(70.0, 93.2)] * 7
    t = by_what(check_targets("real", "flan", [(70.5, 90.0)] * 7, ats, COVER_OK, COVER_OK))
    assert t["mean PearCorr > AtS's"].met and t["no cell with RelAcc > 10 below AtS's"].met
    assert "10th-percentile RelAcc >= AtS's" not in t  # synthetic only
    mine = [(70.0, 93.2)] * 6 + [(70.0, 80.0)]
    t = by_what(check_targets("real", "flan", mine, ats, COVER_OK, dict(COVER_OK) | {"1/8": 0.96}))
    assert not t["mean PearCorr > AtS's"].met  # equal is not above
    assert t["no cell with RelAcc > 10 below AtS's"].miss == pytest.approx(3.2)
    assert t["pairwise coverage in [80, 95]% at every budget"].miss == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kind"):
        check_targets("mine", "g", [], [], {}, {})


# --- the suite itself ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_pools():
    return run_suite("dev", [DEFAULT_PREDICTOR, "AtS", "SubTuning"], pools=2, quiet=True)


def test_the_suite_scores_each_group_on_its_own(two_pools):
    r = two_pools
    assert r.groups["real"] == ["flan", "wmt19"] and r.groups["synthetic dev"] == ["synth-0", "synth-1"]
    s = r.summary["synthetic dev"][DEFAULT_PREDICTOR]
    cells = [r.bench.scores[ds][DEFAULT_PREDICTOR][lab] | r.bench.regret[ds][DEFAULT_PREDICTOR][lab]
             for ds in ("synth-0", "synth-1") for lab in LABELS]
    pc = [c["pearcorr"] for c in cells]
    assert s["overall"]["pearcorr"]["mean"] == pytest.approx(np.mean(pc))
    assert s["overall"]["pearcorr"]["worst"] == min(pc) and s["overall"]["cells"] == 14
    assert s["overall"]["relacc"]["p10"] == pytest.approx(np.percentile([c["relacc"] for c in cells], 10))
    pool = suite_pool(0)  # regret: the pick's true loss at T - the best's, and their log ratio
    truth, b = pool.losses[:, -1], dict(budgets(pool))["1/8"]
    pick = truth[predict(DEFAULT_PREDICTOR, pool.upto(b), int(pool.sizes[-1])).selected]
    cell = r.bench.regret["synth-0"][DEFAULT_PREDICTOR]["1/8"]
    assert cell["regret"] == pytest.approx(pick - truth.min(), abs=1e-6)
    assert cell["log_regret"] == pytest.approx(np.log(pick / truth.min()), abs=1e-6)
    assert all(c["regret"] >= 0 for c in cells)
    assert s["by_budget"]["1/8"]["coverage"] == pytest.approx(
        np.mean([r.bench.coverage[ds][DEFAULT_PREDICTOR]["1/8"] for ds in ("synth-0", "synth-1")]))
    assert r.summary["synthetic dev"]["AtS"]["overall"]["coverage"] is None  # AtS fits no interval
    assert {t.group for t in r.targets} == {"synthetic dev", "flan", "wmt19"}
    text = format_suite(r)
    assert f"Predictor suite, part dev (dev: 2 pools, seeds 0..1), methods: {DEFAULT_PREDICTOR}, AtS, SubTuning" in text
    assert "== synthetic dev: 2 data set(s) x 7 budgets ==" in text and "== real: 2 data set(s)" in text
    assert f"targets of {DEFAULT_PREDICTOR} against AtS" in text and "wall time:" in text


def test_the_suite_json_has_what_the_docs_need(two_pools):
    doc = json.loads(json.dumps(suite_json(two_pools)))  # plain JSON all the way down
    assert {"part", "seeds", "groups", "summary", "targets", "cells", "coverage", "pair_coverage", "level",
            "wall_s", "machine"} <= set(doc)
    assert doc["seeds"] == {"dev": [0, 1]} and doc["part"] == "dev"
    o = doc["summary"]["synthetic dev"][DEFAULT_PREDICTOR]["overall"]
    assert set(o) == {"pearcorr", "relacc", "regret", "log_regret", "coverage", "pair_coverage", "cells"}
    assert set(o["pearcorr"]) == {"mean", "p10", "worst"}
    assert list(doc["summary"]["real"][DEFAULT_PREDICTOR]["by_budget"]) == LABELS
    assert set(doc["targets"][0]) == {"group", "what", "met", "miss", "figure"}
    b = two_pools.bench
    assert doc["cells"]["flan"]["AtS"]["1/8"] == b.scores["flan"]["AtS"]["1/8"] | b.regret["flan"]["AtS"]["1/8"]


def test_targets_need_the_default_predictor_and_ats():
    r = run_suite("dev", ["SubTuning"], pools=1, quiet=True)
    assert not r.targets and any("targets not checked" in n for n in r.notes)


def test_the_cli_runs_the_suite_and_refuses_data_with_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(suite_module, "SUITE_PARTS", {"dev": range(0, 1), "held-out": range(1000, 1001)})
    out = tmp_path / "suite.json"
    assert main(["bench", "curves", "--suite", "--methods", DEFAULT_PREDICTOR, "AtS", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["part"] == "held-out" and doc["groups"]["synthetic held-out"] == ["synth-1000"]
    captured = capsys.readouterr()
    assert "synthetic held-out: 1/1 pools scored" in captured.err and "wall time:" in captured.out
    assert main(["bench", "curves", "--suite", "--data", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["bench", "curves", "--part", "dev"]) == 2
    assert "add --suite" in capsys.readouterr().err
    assert main(["bench", "curves", "--suite", "--methods", "Local"]) == 2
    assert "did you mean 'local'" in capsys.readouterr().err.lower()
