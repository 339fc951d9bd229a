"""Synthetic pools of curves for benchmarks: rectified-law curves with random onset, slope, floor
and model size, written in the curves schema.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def synthetic_curves(n: int, path: Path, seed: int = 0) -> Path:
    """n candidates with rectified-law curves (random onset, slope, floor, size) as a curves CSV."""
    from lensray.predict.laws import rectified

    rng = np.random.default_rng(seed)
    sizes = [200 * 2**i for i in range(14)]
    beta = rng.uniform(0.2, 0.6, n)
    d_star = np.exp(rng.uniform(np.log(300), np.log(3e5), n))
    amp, floor = rng.uniform(1.0, 3.0, n), rng.uniform(0.5, 1.5, n)
    params = np.exp(rng.uniform(np.log(1e8), np.log(7e9), n))
    lines = ["config name," + ",".join(map(str, [0, *sizes])) + ",size"]
    for i in range(n):
        d_l = d_star[i] ** beta[i]
        losses = rectified(np.array([0, *sizes], float), amp[i] * d_l, d_l, beta[i], floor[i])
        losses *= np.exp(rng.normal(0, 0.005, losses.size))
        lines.append(f"synthetic-{i:05d}," + ",".join(f"{v:.5f}" for v in losses) + f",{params[i]:.0f}")
    path.write_text("\n".join(lines) + "\n")
    return path
