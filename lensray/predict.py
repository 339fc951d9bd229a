"""Selection methods: score every candidate from its observations up to a budget B.

Each method looks only at sizes <= B (a `Curves` already cut with `Curves.upto(B)`) and returns a
`Prediction`: one score per candidate and the order it implies. Lower score = better, except for
ModelSize whose score is log(parameters) with larger = better (PearCorr is then computed on log N,
as in Lin et al. 2024, so a negative value means larger models do better).

| method       | score                                                                 |
|--------------|-----------------------------------------------------------------------|
| ZeroShot     | loss of the pretrained model (column `0`)                             |
| SubTuning    | loss after fine-tuning on B examples                                  |
| ModelSize    | log parameter count (larger = better)                                 |
| VanillaFit   | vanilla power law fitted to all sizes <= B, predicted at T            |
| RectifiedFit | rectified law (Lin et al.) fitted per candidate, predicted at T       |
| AtS          | Accept-then-Stop (k=3, delta=5): log-log line on the power phase      |
| LensLLM      | LensLLM law, beta shared by the pool (or measured NTK term F)         |
| lensray      | local log-log slope at B extrapolated to T (the default; see fit.py)  |

    from lensray.predict import predict
    pred = predict("lensray", curves.upto(3200), target=1638400)
    pred.candidates[pred.selected]
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lensray.curves import CurveError, Curves
from lensray.fit import LAW_PARAMS, LOCAL_MIN_POINTS, CurveFit, FitConfig, fit_law, fit_local


@dataclass(frozen=True)
class Prediction:
    """The scores one method gives a pool, and the fits behind them when it fits curves."""

    method: str
    candidates: list[str]
    scores: np.ndarray
    """One score per candidate; lower = better unless `larger_is_better`."""
    larger_is_better: bool = False
    fits: list[CurveFit] = field(default_factory=list)
    """Per-candidate fits (empty for methods that fit nothing)."""

    @property
    def ranking(self) -> np.ndarray:
        """Candidate indices, best first (ties keep the input order)."""
        key = -self.scores if self.larger_is_better else self.scores
        return np.argsort(key, kind="stable")

    @property
    def selected(self) -> int:
        """Index of the candidate this method picks."""
        return int(self.ranking[0])


def _zero_shot(c: Curves, target: int, cfg: FitConfig) -> Prediction:
    if c.zero_shot is None:
        raise CurveError(f"{c.name}: ZeroShot needs the zero-shot loss, column '0'; add it or drop the method")
    return Prediction("ZeroShot", c.candidates, c.zero_shot.copy())


def _subtuning(c: Curves, target: int, cfg: FitConfig) -> Prediction:
    return Prediction("SubTuning", c.candidates, c.losses[:, -1].copy())


def _model_size(c: Curves, target: int, cfg: FitConfig) -> Prediction:
    if c.n_params is None:
        raise CurveError(f"{c.name}: ModelSize needs the parameter count, column 'size'; add it or drop the method")
    return Prediction("ModelSize", c.candidates, np.log(c.n_params), larger_is_better=True)


def _from_fits(method: str, c: Curves, fits: list[CurveFit], need: int) -> Prediction:
    if c.sizes.size < need:
        raise CurveError(
            f"{c.name}: {method} needs at least {need} sizes up to the budget, got "
            f"{c.sizes.size} ({c.sizes.astype(int).tolist()}); raise the budget"
        )
    return Prediction(method, c.candidates, np.array([f.predicted_loss for f in fits]), fits=fits)


def _law_method(method: str, law: str) -> Callable[[Curves, int, FitConfig], Prediction]:
    def run(c: Curves, target: int, cfg: FitConfig) -> Prediction:
        fits = fit_law(law, c.sizes, c.losses, target, c.candidates, cfg)  # type: ignore[arg-type]
        return _from_fits(method, c, fits, LAW_PARAMS[law] + 1)

    return run


def _lensray(c: Curves, target: int, cfg: FitConfig) -> Prediction:
    return _from_fits("lensray", c, fit_local(c.sizes, c.losses, target, c.candidates, cfg), LOCAL_MIN_POINTS)


def ats_window(log_x: np.ndarray, log_y: np.ndarray, k: int = 3, delta: float = 5.0) -> int:
    """Index of the first point of the power phase found by Accept-then-Stop.

    Starting from a log-log line through the last k points, walk towards smaller sizes: the next
    point is accepted while its residual is within `delta` standard deviations (population std)
    of the fitted points' residuals. The first rejected point ends the pre-power phase. As in the
    authors' evaluation (whose numbers we reproduce), when every point is accepted the smallest
    size is still left out, and with k or fewer points all are used.
    """
    n = log_x.size
    if n <= k:
        return 0
    for p in range(k, n):
        tx, ty = log_x[-p:], log_y[-p:]
        slope, icept = np.polyfit(tx, ty, 1)
        spread = float(np.std(ty - (slope * tx + icept)))
        miss = abs(log_y[-p - 1] - (slope * log_x[-p - 1] + icept))
        if miss > delta * spread:
            return n - p
    return 1


def _ats(c: Curves, target: int, cfg: FitConfig) -> Prediction:
    lx, ly = np.log(c.sizes), np.log(c.losses)
    scores = np.empty(len(c.candidates))
    for i in range(len(c.candidates)):
        start = ats_window(lx, ly[i])
        slope, icept = np.polyfit(lx[start:], ly[i, start:], 1)
        scores[i] = np.exp(slope * np.log(target) + icept)
    return Prediction("AtS", c.candidates, scores)


METHODS: dict[str, Callable[[Curves, int, FitConfig], Prediction]] = {
    "ZeroShot": _zero_shot,
    "SubTuning": _subtuning,
    "ModelSize": _model_size,
    "VanillaFit": _law_method("VanillaFit", "vanilla"),
    "RectifiedFit": _law_method("RectifiedFit", "rectified"),
    "AtS": _ats,
    "LensLLM": _law_method("LensLLM", "lensllm"),
    "lensray": _lensray,
}
DEFAULT_METHOD = "lensray"


def get_method(name: str) -> Callable[[Curves, int, FitConfig], Prediction]:
    """Look a method up by name; an unknown name lists the options and the closest match."""
    if name in METHODS:
        return METHODS[name]
    close = difflib.get_close_matches(name, METHODS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}.{hint}")


def predict(method: str, curves: Curves, target: int, config: FitConfig | None = None) -> Prediction:
    """Score `curves` (already cut to the budget) with `method`, predicting at size `target`."""
    run = get_method(method)
    if target < curves.sizes[-1]:
        raise CurveError(
            f"{curves.name}: target {target} is below the largest observed size "
            f"{int(curves.sizes[-1])}; the target must be >= the budget"
        )
    return run(curves, int(target), config or FitConfig())
