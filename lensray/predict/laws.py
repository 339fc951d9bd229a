"""Scaling-law curve forms for fine-tuning loss, as pure numpy.

Each law gives the held-out loss L after fine-tuning on D examples. Symbols::

    D      number of fine-tuning examples (D >= 0)
    L(D)   held-out loss after fine-tuning on D examples
    E      irreducible loss, 0 <= E < min observed loss
    beta   learning difficulty of the task (slope of the power phase in log-log), beta > 0
    B      scale of the reducible loss

Vanilla power law (Kaplan-style)::

    L(D) = B * D**(-beta) + E

Rectified law (Lin et al., ICML 2024, arXiv 2402.02314), with D_l the "pre-learned data size"::

    L(D) = B / (D_l + D**beta) + E

LensLLM law (Zeng et al., ICML 2025, arXiv 2505.03793): D_l is replaced by an NTK term F(Theta, t)
of the pretrained model, and beta is shared by every candidate of one task::

    L(D) = B / (F + D**beta) + E

For fitting, the rectified/LensLLM form is written with A = B / D_l (the reducible loss the model
starts from) and D* = D_l**(1/beta) (the data size where the power phase begins)::

    L(D) = A / (1 + (D / D*)**beta) + E      <=>  B = A * D_l,  D_l = D***beta

For fixed (beta, D*) this is linear in (A, E), which is what `fit.py` exploits. Both
parameterisations are exposed so a fitted curve can be reported in the paper's terms.
"""

from __future__ import annotations

import numpy as np

__all__ = ["vanilla", "rectified", "lensllm", "rectified_shape", "vanilla_shape", "rectified_params"]


def vanilla(d: np.ndarray | float, b: float, beta: float, e: float) -> np.ndarray:
    """L(D) = B * D**(-beta) + E (undefined at D = 0)."""
    d = np.asarray(d, dtype=float)
    return b * np.power(d, -beta) + e


def rectified(d: np.ndarray | float, b: float, d_l: float, beta: float, e: float) -> np.ndarray:
    """L(D) = B / (D_l + D**beta) + E; L(0) = B / D_l + E."""
    d = np.asarray(d, dtype=float)
    return b / (d_l + np.power(d, beta)) + e


def lensllm(d: np.ndarray | float, b: float, f: float, beta: float, e: float) -> np.ndarray:
    """L(D) = B / (F + D**beta) + E: the rectified law with the NTK term F in place of D_l."""
    return rectified(d, b, f, beta, e)


def rectified_shape(log_d: np.ndarray, beta: np.ndarray, log_d_star: np.ndarray) -> np.ndarray:
    """h(D) = 1 / (1 + (D/D*)**beta), broadcast over arrays of beta and log D*.

    Computed as a logistic in log D so that it neither overflows nor underflows to NaN.
    """
    z = np.asarray(beta) * (np.asarray(log_d) - np.asarray(log_d_star))
    return 0.5 * (1.0 - np.tanh(0.5 * z))


def vanilla_shape(log_d: np.ndarray, beta: np.ndarray, log_d_ref: float) -> np.ndarray:
    """h(D) = (D / D_ref)**(-beta): the vanilla law with B = A * D_ref**beta."""
    return np.exp(-np.asarray(beta) * (np.asarray(log_d) - log_d_ref))


def rectified_params(a: float, log_d_star: float, beta: float, e: float) -> dict[str, float]:
    """Convert the fitting parameters (A, D*, beta, E) to the paper's (B, D_l, beta, E)."""
    d_l = float(np.exp(beta * log_d_star))
    return {"B": float(a * d_l), "D_l": d_l, "beta": float(beta), "E": float(e)}
