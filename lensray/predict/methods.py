"""Selection methods: score every candidate from its observations up to a budget B, and the
predictors among them, looked up by name from the config (`fit.method`).

Each method looks only at sizes <= B (a `Curves` already cut with `Curves.upto(B)`) and returns a
`Prediction`: one score per candidate and the order it implies. Lower score = better, except for
ModelSize whose score is log(parameters) with larger = better (PearCorr is then computed on log N,
as in Lin et al. 2024, so a negative value means larger models do better).

| method       | score                                                                 |
|--------------|-----------------------------------------------------------------------|
| ZeroShot     | loss of the pretrained model (column `0`)                             |
| SubTuning    | loss after fine-tuning on B examples                                  |
| ModelSize    | log parameter count (larger = better)                                 |
| AtS          | Accept-then-Stop (k=3, delta=5): log-log line on the power phase      |
| VanillaFit   | vanilla power law fitted to all sizes <= B, predicted at T            |
| RectifiedFit | rectified law (Lin et al.) fitted per candidate, predicted at T       |
| LensLLM      | LensLLM law, beta shared by the pool (or measured NTK term F)         |
| local        | local log-log slope at B extrapolated to T (predict/local.py)         |
| blend        | robust local slope and AtS's line averaged, calibrated intervals (the default; predict/blend.py) |

The last five are `Predictor`s: they fit each candidate's partial curve (a `CurveFit` with an
interval and the s.d. of its log prediction), so the sweep's stopping rule, the report, the
benchmarks and `lensray verify` can all run on them. The config's `fit.method` names one.
Adding a predictor is one module with a fit function and one `register_predictor` call::

    from lensray.predict.methods import Predictor, predict, register_predictor
    register_predictor(Predictor("mine", fit=my_fit, min_points=3))
    pred = predict("blend", curves.upto(3200), target=1638400)
    pred.candidates[pred.selected]
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lensray.core.curves import Curves
from lensray.core.errors import ConfigError, CurveError
from lensray.core.types import CurveFit
from lensray.predict.ats import ats_log_predictions
from lensray.predict.blend import blend_pool, fit_blend
from lensray.predict.fit import LAW_PARAMS, FitConfig
from lensray.predict.grid import fit_law
from lensray.predict.local import LOCAL_MIN_POINTS, fit_local, local_noise

FitFn = Callable[..., list[CurveFit]]
"""fit(sizes (n,), losses (m, n), target, names (m,), config: FitConfig, context) -> m CurveFits."""
PoolFn = Callable[..., Any]
"""pool(sizes (n,), losses (k, n), config: FitConfig) -> context shared by fits at these sizes."""

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


@dataclass(frozen=True)
class Predictor:
    """A method that fits each candidate's partial curve and predicts its loss at the target."""

    name: str
    """The name `fit.method` and the benchmarks use."""
    fit: FitFn
    """Fits m curves observed at the same sizes (see FitFn); a fit it cannot trust has ok=False."""
    min_points: int
    """Fewest sizes it predicts from."""
    pool: PoolFn | None = None
    """Estimates pooled over every candidate observed at the same sizes (the local fit's noise and
    extrapolation error), passed to `fit` as `context`; None: `fit` gets context=None."""

    def fit_pool(self, sizes, losses, target: int, names: list[str], config: FitConfig,
                 context: Any = None) -> list[CurveFit]:
        """Fit the rows of `losses`, pooling estimates over these rows unless `context` is given."""
        if context is None and self.pool is not None and len(sizes) >= self.min_points:
            context = self.pool(sizes, losses, config)
        return self.fit(sizes, losses, target, names, config, context)


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


def _ats(c: Curves, target: int, cfg: FitConfig) -> Prediction:
    return Prediction("AtS", c.candidates, np.exp(ats_log_predictions(np.log(c.sizes), np.log(c.losses), np.log(target))))


Method = Callable[[Curves, int, FitConfig], Prediction]
METHODS: dict[str, Method] = {"ZeroShot": _zero_shot, "SubTuning": _subtuning, "ModelSize": _model_size, "AtS": _ats}
"""Every selection method by name, the predictors included (what `lensray bench curves` compares)."""
PREDICTORS: dict[str, Predictor] = {}
"""The methods that fit curves, by name: what `fit.method` may name."""
DEFAULT_PREDICTOR = "blend"


def _scores(predictor: Predictor) -> Method:
    def run(c: Curves, target: int, cfg: FitConfig) -> Prediction:
        if c.sizes.size < predictor.min_points:
            raise CurveError(
                f"{c.name}: {predictor.name} needs at least {predictor.min_points} sizes up to the budget, got "
                f"{c.sizes.size} ({c.sizes.astype(int).tolist()}); raise the budget"
            )
        fits = predictor.fit_pool(c.sizes, c.losses, target, c.candidates, cfg)
        return Prediction(predictor.name, c.candidates, np.array([f.predicted_loss for f in fits]), fits=fits)

    return run


def register_predictor(predictor: Predictor) -> Predictor:
    """Make `predictor` available to `fit.method`, the sweep, the report and the benchmarks."""
    if predictor.name in METHODS and predictor.name not in PREDICTORS:
        raise ValueError(f"{predictor.name!r} already names a method that fits no curves")
    PREDICTORS[predictor.name] = predictor
    METHODS[predictor.name] = _scores(predictor)
    return predictor


def _law(law: str) -> FitFn:
    def fit(sizes, losses, target, names, config, context=None) -> list[CurveFit]:
        return fit_law(law, sizes, losses, target, names, config)

    return fit


for _name, _law_name in (("VanillaFit", "vanilla"), ("RectifiedFit", "rectified"), ("LensLLM", "lensllm")):
    register_predictor(Predictor(_name, _law(_law_name), LAW_PARAMS[_law_name] + 1))
register_predictor(Predictor("local", fit_local, LOCAL_MIN_POINTS, pool=local_noise))
register_predictor(Predictor(DEFAULT_PREDICTOR, fit_blend, LOCAL_MIN_POINTS, pool=blend_pool))


def _lookup(kind: str, name: str, options: dict) -> Any:
    if name in options:
        return options[name]
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown {kind} {name!r}; choose one of {', '.join(options)}.{hint}")


def get_method(name: str) -> Method:
    """Look a method up by name; an unknown name lists the options and the closest match."""
    return _lookup("method", name, METHODS)


def get_predictor(name: str) -> Predictor:
    """Look a predictor up by name (`fit.method`); an unknown name lists the options."""
    return _lookup("fit.method", name, PREDICTORS)


def predict(method: str, curves: Curves, target: int, config: FitConfig | None = None) -> Prediction:
    """Score `curves` (already cut to the budget) with `method`, predicting at size `target`."""
    run = get_method(method)
    if target < curves.sizes[-1]:
        raise CurveError(
            f"{curves.name}: target {target} is below the largest observed size "
            f"{int(curves.sizes[-1])}; the target must be >= the budget"
        )
    return run(curves, int(target), config or FitConfig())
