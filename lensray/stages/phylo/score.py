"""PhyloLM's score prediction: a model's benchmark score from its genetic distances to models
whose scores are known.

A model is described by its row of distances x = (d(m, r_1), ..., d(m, r_n)) to the n
reference models r with known scores. The regressor is PhyloLM's: FastICA down to
K = min(15, n samples - 1, n features) independent components z (n centred samples span at
most n - 1 directions), then one linear layer with a sigmoid, trained on the mean squared
error with Adam (lr 1e-3, L2 weight decay 0.01 on the gradient as torch's Adam does, 1000
full-batch epochs)::

    u        = 0.05 + 0.9 (y - y_min) / (y_max - y_min)         scores scaled into (0, 1)
    u_hat    = sigmoid(z . w + b)
    y_hat    = y_min + (u_hat - 0.05) / 0.9 (y_max - y_min)      and back

so predictions stay within the training scores' range widened by 1/18 of it on each side.
With PhyloLM's settings (the defaults) the layer is strongly regularised: its predictions keep
the order of the scores (what Pearson r measures) but are pulled toward their mean; for
calibrated scores raise `lr` (1e-2) and set `weight_decay` to 0.

`leave_one_family_out` is PhyloLM's evaluation: each family's scores predicted by a regressor
fitted on the other families, then the Pearson r of all predictions against the scores.

    from lensray.stages.phylo.score import PhyloRegressor
    reg = PhyloRegressor().fit(d[known][:, known], scores)     # (n, n) distances, (n,) scores
    predicted = reg.predict(d[new][:, known])                  # (m, n) -> (m,)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import FastICA
from sklearn.utils.validation import check_is_fitted, validate_data

from lensray.core.errors import DataError

MARGIN = 0.05
"""Scaled scores lie in [MARGIN, 1 - MARGIN], clear of the sigmoid's flat tails."""


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class PhyloRegressor(RegressorMixin, BaseEstimator):
    """FastICA then a sigmoid linear layer, on rows of distances to the reference models.

    Parameters
    ----------
    n_components : int
        Most independent components kept (PhyloLM: 15); fewer when there are fewer samples
        (n - 1) or reference models.
    epochs : int
        Full-batch Adam steps.
    lr : float
        Adam's learning rate.
    weight_decay : float
        L2 penalty added to the gradient.
    random_state : int
        Seed of FastICA.
    """

    def __init__(self, n_components: int = 15, epochs: int = 1000, lr: float = 1e-3, weight_decay: float = 0.01,
                 random_state: int = 0):
        self.n_components = n_components
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.random_state = random_state

    def fit(self, X, y) -> "PhyloRegressor":
        """Fit on X, the (n, n_ref) distances of n models to the references, and their (n,) scores y."""
        X, y = validate_data(self, X, y, y_numeric=True)
        if len(y) < 2:
            raise DataError(f"score prediction needs at least 2 models with known scores; {len(y)} given")
        self.y_min_, self.y_max_ = float(y.min()), float(y.max())
        scale = (self.y_max_ - self.y_min_) or 1.0
        u = MARGIN + (1 - 2 * MARGIN) * (y - self.y_min_) / scale
        k = min(self.n_components, X.shape[0] - 1, X.shape[1])
        self.ica_ = FastICA(n_components=k, whiten="unit-variance", max_iter=1000, random_state=self.random_state)
        z = self.ica_.fit_transform(X)
        params = np.zeros(k + 1)
        m, v = np.zeros_like(params), np.zeros_like(params)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        design = np.column_stack([z, np.ones(len(z))])
        for t in range(1, self.epochs + 1):
            p = _sigmoid(design @ params)
            grad = design.T @ (2 * (p - u) * p * (1 - p)) / len(u) + self.weight_decay * params
            m = beta1 * m + (1 - beta1) * grad
            v = beta2 * v + (1 - beta2) * grad**2
            params -= self.lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
        self.coef_, self.intercept_ = params[:-1], float(params[-1])
        return self

    def predict(self, X) -> np.ndarray:
        """The (m,) predicted scores of the models whose (m, n_ref) distances are X."""
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, reset=False)
        u = _sigmoid(self.ica_.transform(X) @ self.coef_ + self.intercept_)
        return self.y_min_ + (u - MARGIN) / (1 - 2 * MARGIN) * (self.y_max_ - self.y_min_)


def leave_one_family_out(distances: np.ndarray, scores: Sequence[float], families: Sequence[str], **params) -> float:
    """Pearson r between the (M,) `scores` and their predictions, each family's predicted by a
    PhyloRegressor(**params) fitted on the other families (from the (M, M) `distances`)."""
    d = np.asarray(distances, dtype=float)
    y = np.asarray(scores, dtype=float)
    fam = np.asarray(families)
    if d.shape != (len(y), len(y)) or len(fam) != len(y):
        raise DataError(f"need an (M, M) distance matrix, M scores and M families; got {d.shape}, {len(y)}, {len(fam)}")
    if len(set(fam)) < 2:
        raise DataError("leave-one-family-out needs models of at least 2 families")
    predicted = np.empty_like(y)
    for f in dict.fromkeys(fam):
        held, train = fam == f, fam != f
        predicted[held] = PhyloRegressor(**params).fit(d[train][:, train], y[train]).predict(d[held][:, train])
    return float(np.corrcoef(y, predicted)[0, 1])
