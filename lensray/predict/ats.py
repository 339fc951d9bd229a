"""Accept-then-Stop (AtS; Zeng et al. 2025): the log-log line through a candidate's power phase,
found by walking back from the largest sizes while the points stay on the line. A method of its
own (`AtS` in `lensray bench curves`) and half of the default predictor (predict/blend.py)::

    log L(T) = a + b * log T,   (a, b): least squares on the power phase's points
"""

from __future__ import annotations

import numpy as np


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
        slope, icept = _line(tx, ty)
        spread = float(np.std(ty - (slope * tx + icept)))
        miss = abs(log_y[-p - 1] - (slope * log_x[-p - 1] + icept))
        if miss > delta * spread:
            return n - p
    return 1


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through (x, y); slope 0 through a single size."""
    x_mean, y_mean = float(x.sum()) / x.size, float(y.sum()) / y.size  # not .mean(): its overhead is most of a fit
    dx = x - x_mean
    var = float(dx @ dx)
    slope = float(dx @ (y - y_mean)) / var if var > 0 else 0.0
    return slope, y_mean - slope * x_mean


def ats_lines(log_x: np.ndarray, log_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slopes, intercepts) of AtS's log-log line for every row of `log_y` (shape (m, n))."""
    slopes, icepts = np.empty(log_y.shape[0]), np.empty(log_y.shape[0])
    for i in range(log_y.shape[0]):
        start = ats_window(log_x, log_y[i])
        slopes[i], icepts[i] = _line(log_x[start:], log_y[i, start:])
    return slopes, icepts


def ats_log_predictions(log_x: np.ndarray, log_y: np.ndarray, log_target: float) -> np.ndarray:
    """AtS's predicted log-loss at the target for every row of `log_y` (shape (m, n))."""
    slopes, icepts = ats_lines(log_x, log_y)
    return slopes * log_target + icepts
