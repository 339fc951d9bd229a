"""Selection methods on the recorded curves: the paper's baselines reproduced, bad input refused."""

import numpy as np
import pytest

from lensray.bench.curves import GAMMAS, bench_curves
from lensray.core.curves import packaged_curves, read_curves
from lensray.core.errors import CurveError
from lensray.core.types import CurveFit
from lensray.predict.methods import DEFAULT_PREDICTOR, METHODS, get_method, predict
from lensray.predict.metrics import pair_coverage, pearcorr, relacc

# Lin et al. 2024, as reproduced in shared/benchmarks/finetune-curves/README.md:
# (PearCorr, RelAcc) per gamma 1/8 ... 1/512.
PAPER = {
    "flan": {
        "AtS": [(90.9, 93.6), (73.1, 93.2), (65.5, 93.2), (61.1, 93.2), (52.2, 85.3), (50.5, 93.2), (45.6, 93.2)],
        "SubTuning": [(60.9, 93.2), (46.5, 93.2), (36.4, 93.2), (29.0, 93.2), (24.6, 59.6), (20.9, 59.6), (16.4, 59.6)],
        "ZeroShot": [(-10.7, 85.3)] * 7,
        "ModelSize": [(-20.9, 59.6)] * 7,
    },
    "wmt19": {
        "AtS": [(98.9, 99.1), (97.0, 99.1), (97.7, 99.6), (86.0, 99.1), (78.0, 99.1), (73.4, 99.1), (61.5, 99.1)],
        "SubTuning": [(93.5, 99.1), (87.1, 99.1), (77.7, 99.1), (64.5, 99.1), (51.7, 99.1), (41.6, 99.1), (34.5, 99.1)],
        "ZeroShot": [(7.1, 84.4)] * 7,
        "ModelSize": [(36.0, 22.5)] * 7,
    },
}


@pytest.fixture(scope="module")
def bench():
    return bench_curves(packaged_curves())


@pytest.mark.parametrize("dataset", ["flan", "wmt19"])
@pytest.mark.parametrize("method", ["AtS", "SubTuning", "ZeroShot", "ModelSize"])
def test_baselines_reproduce_the_paper_within_0_2(bench, dataset, method):
    got = bench.scores[dataset][method]
    for gamma, (pc, ra) in zip(GAMMAS, PAPER[dataset][method]):
        cell = got[f"1/{gamma}"]
        assert cell["pearcorr"] == pytest.approx(pc, abs=0.2), (method, gamma)
        assert cell["relacc"] == pytest.approx(ra, abs=0.2), (method, gamma)


@pytest.mark.parametrize("dataset", ["flan", "wmt19"])
def test_default_predictor_never_selects_worse_than_ats(bench, dataset):
    ours, ats = bench.scores[dataset][DEFAULT_PREDICTOR], bench.scores[dataset]["AtS"]
    for label in ours:
        assert ours[label]["relacc"] >= ats[label]["relacc"], label


def test_default_predictor_correlates_better_than_ats_on_average(bench):
    gains = [
        bench.scores[ds][DEFAULT_PREDICTOR][g]["pearcorr"] - bench.scores[ds]["AtS"][g]["pearcorr"]
        for ds in ("flan", "wmt19")
        for g in bench.scores[ds]["AtS"]
    ]
    assert np.mean(gains) > 0


def test_coverage_counts_true_losses_inside_the_intervals(bench):
    curves = read_curves(packaged_curves()[1])
    truth, target = curves.losses[:, -1], int(curves.sizes[-1])
    assert set(bench.coverage[curves.name]) == {"VanillaFit", "RectifiedFit", "LensLLM", "local", "blend"}
    for gamma in GAMMAS:
        fits = predict("local", curves.upto(target // gamma), target).fits
        inside = sum(lo <= t <= hi for (lo, hi), t in zip((f.interval for f in fits), truth))
        assert bench.coverage[curves.name]["local"][f"1/{gamma}"] == inside / len(fits)


def _fit(name: str, log_pred: float, sd: float, ok: bool = True) -> CurveFit:
    p = float(np.exp(log_pred))
    return CurveFit(name, "local", 1000, p, (p, p), ok, "" if ok else "flat", {}, 3, sd)


def test_a_miss_every_candidate_shares_cancels_in_the_coverage_of_differences():
    fits = [_fit(n, lp, 0.05) for n, lp in (("a", 0.0), ("b", 0.2), ("c", 0.5))]
    truth = np.exp(np.array([0.0, 0.2, 0.5]) - 1.0)  # every prediction 1.0 too high in log
    assert pair_coverage(fits, truth, 0.9) == 1.0
    # a miss one candidate alone makes is outside the intervals of its two differences
    truth = np.exp(np.array([0.0, 0.2, 0.5 - 1.0]))
    assert pair_coverage(fits, truth, 0.9) == pytest.approx(1 / 3)
    # within z = 1.645 s.d. of a difference (s.d. 0.05 * sqrt 2) is inside, beyond it is not
    assert pair_coverage(fits[:2], np.exp([0.0, 0.2 - 0.11]), 0.9) == 1.0
    assert pair_coverage(fits[:2], np.exp([0.0, 0.2 - 0.12]), 0.9) == 0.0


def test_the_coverage_of_differences_counts_only_pairs_of_reliable_fits():
    fits = [_fit("a", 0.0, 0.05), _fit("b", 0.2, 0.05), _fit("c", 0.5, 0.05, ok=False)]
    truth = np.exp(np.array([0.0, 0.2, 3.0]))  # the unreliable fit's miss is not counted
    assert pair_coverage(fits, truth, 0.9) == 1.0
    assert pair_coverage(fits[1:], truth[1:], 0.9) is None


def test_the_bench_gives_the_coverage_of_differences_for_the_fits_the_scheduler_compares(bench):
    curves = read_curves(packaged_curves()[1])
    truth, target = curves.losses[:, -1], int(curves.sizes[-1])
    assert {ds: set(m) for ds, m in bench.pair_coverage.items()} == {ds: {"VanillaFit", "RectifiedFit", "LensLLM", "local", "blend"} for ds in ("flan", "wmt19")}
    for gamma in GAMMAS:
        fits = predict("local", curves.upto(target // gamma), target).fits
        assert bench.pair_coverage[curves.name]["local"][f"1/{gamma}"] == pair_coverage(fits, truth, 0.9)


def test_methods_only_look_up_to_the_budget():
    curves = read_curves(packaged_curves()[0])
    seen = curves.upto(3200)
    poisoned = curves.losses.copy()
    poisoned[:, curves.sizes > 3200] = 100.0  # anything a method peeks at beyond B would show
    from dataclasses import replace

    bad = replace(curves, losses=poisoned).upto(3200)
    for name in METHODS:
        a = predict(name, seen, int(curves.sizes[-1])).scores
        b = predict(name, bad, int(curves.sizes[-1])).scores
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_metrics():
    truth = np.array([1.0, 2.0, 3.0])
    assert pearcorr(np.array([1.0, 2.0, 3.0]), truth) == pytest.approx(100.0)
    assert pearcorr(np.ones(3), truth) is None
    assert relacc(0, truth) == 100.0 and relacc(2, truth) == 0.0


def write(tmp_path, text, name="mine.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "config name,0,200,400,800,1600,size\na,4,3,2.9,2.8,2.6,100\nb,5,3.5,3.2,2.9,2.5,200\n"


def test_reads_a_user_csv_and_a_parquet(tmp_path):
    c = read_curves(write(tmp_path, GOOD))
    assert c.candidates == ["a", "b"] and c.sizes.tolist() == [200, 400, 800, 1600]
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    pq.write_table(pacsv.read_csv(tmp_path / "mine.csv"), tmp_path / "mine.parquet")
    p = read_curves(tmp_path / "mine.parquet")
    np.testing.assert_allclose(p.losses, c.losses)


def test_size_columns_written_as_floats_read_as_their_sizes(tmp_path):
    # pandas writes float column labels as '200.0'; they are the same sizes
    floats = GOOD.replace("0,200,400,800,1600", "0.0,200.0,400.0,800.0,1600.0")
    c, ref = read_curves(write(tmp_path, floats, "f.csv")), read_curves(write(tmp_path, GOOD))
    assert c.sizes.tolist() == [200, 400, 800, 1600]
    np.testing.assert_allclose(c.losses, ref.losses)
    np.testing.assert_allclose(c.zero_shot, ref.zero_shot)


@pytest.mark.parametrize(
    "text, message",
    [
        ("config name,size\na,1\n", "size column"),
        ("config name,200,400\na,3,x\n", "row 2, column '400'.*not a number"),
        ("config name,200,400\na,3,nan\n", "row 2, column '400'.*finite"),
        ("config name,200,400\na,3,-1\n", "row 2, column '400'.*not positive"),
        ("config name,200,400\na,3,2\na,3,2\n", "unique"),
        ("config name,200,400\n", "no data rows"),
        ("config name,200,400.5\na,3,2\n", "column '400.5'.*not a whole number"),
    ],
)
def test_bad_curves_name_the_problem(tmp_path, text, message):
    with pytest.raises(CurveError, match=message):
        read_curves(write(tmp_path, text))


def test_budget_below_the_smallest_size_is_refused(tmp_path):
    with pytest.raises(CurveError, match="smaller than the smallest size 200"):
        read_curves(write(tmp_path, GOOD)).upto(100)


def test_fewer_points_than_a_law_needs_is_refused(tmp_path):
    seen = read_curves(write(tmp_path, GOOD)).upto(400)
    with pytest.raises(CurveError, match="RectifiedFit needs at least 5 sizes"):
        predict("RectifiedFit", seen, 1600)
    with pytest.raises(CurveError, match="local needs at least 2 sizes"):
        predict("local", seen.upto(200), 1600)


def test_lensray_on_fewer_sizes_than_its_window_takes_the_slope_and_says_it_is_unreliable(tmp_path):
    # A user's file may have only 2 sizes up to a budget: lensray then extrapolates the line
    # through them (as AtS does with few points) instead of leaving the cell empty.
    seen = read_curves(write(tmp_path, GOOD)).upto(400)
    assert seen.sizes.size == 2
    ours, ats = predict("local", seen, 1600), predict("AtS", seen, 1600)
    np.testing.assert_allclose(ours.scores, ats.scores, rtol=1e-9)
    line = seen.losses[:, 1] * (seen.losses[:, 1] / seen.losses[:, 0]) ** 2  # 1600 = 400 * 2^2
    np.testing.assert_allclose(ours.scores, line, rtol=1e-9)
    assert all(not f.ok and "only 2 sizes" in f.reason for f in ours.fits)


def test_missing_optional_columns_are_named(tmp_path):
    seen = read_curves(write(tmp_path, "config name,200,400,800\na,3,2.9,2.8\nb,3,2.8,2.7\n"))
    with pytest.raises(CurveError, match="column '0'"):
        predict("ZeroShot", seen, 800)
    with pytest.raises(CurveError, match="column 'size'"):
        predict("ModelSize", seen, 800)


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'AtS'"):
        get_method("ATS")
