"""The LensLLM NTK term F(Theta, t), measured on the live pretrained model.

LensLLM (Zeng et al., ICML 2025, arXiv 2505.03793) replaces the "pre-learned data size" D_l of
the rectified scaling law by a term computed from the model itself::

    L(D) = B / (F(Theta, t) + D^beta) + E
    F(Theta, t) = || exp(-eta * Theta * t) (f0(X) - y) ||^2

This module computes F from a handful of probe examples x_1..x_n with the diagonal empirical
NTK, the approximation the paper's practice uses. For a causal LM we take the network's scalar
output on example i to be its mean response-token cross-entropy, so that the target is y_i = 0
(a perfect prediction) and the initial residual is the pretrained loss::

    r_i     = f0(x_i) - y_i = l_i(theta_0)             l_i: mean token CE on x_i's response
    Theta_ii = || grad_theta l_i(theta_0) ||^2          diagonal empirical NTK (trainable params)

Gradient flow on sum_i r_i^2 / 2 in the linearised (NTK) regime with a diagonal kernel gives
dr_i/dt = -eta * Theta_ii * r_i, so r_i(t) = exp(-eta * Theta_ii * t) r_i, and::

    F(Theta, t) = (1/n) sum_i exp(-2 * eta * Theta_ii * t) * r_i^2

with t the optimizer steps of the fine-tune on a subset and eta its learning rate. We divide by
n (a mean, not the paper's sum) so F does not grow with the number of probe examples. Because
F underflows to 0 for large eta * Theta * t, we also return log F computed stably
(log-sum-exp), which stays finite and model-specific. "Trainable params" are all weights for a
full fine-tune and the adapter weights for LoRA (the ones whose dynamics the kernel describes).

`diag_ntk` needs torch (imported inside); `ntk_term` is plain numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NTKStats:
    """Per-example diagonal NTK entries and initial residuals of one pretrained model."""

    theta: tuple[float, ...]
    """Theta_ii = ||grad l_i||^2 for each probe example."""
    residual: tuple[float, ...]
    """r_i = l_i(theta_0), the pretrained mean response-token cross-entropy of each example."""


def ntk_term(stats: NTKStats, eta: float, t: float) -> tuple[float, float]:
    """(F, log F) for learning rate `eta` after `t` steps; see the module docstring."""
    theta = np.asarray(stats.theta, dtype=np.float64)
    r = np.asarray(stats.residual, dtype=np.float64)
    if theta.size == 0 or theta.shape != r.shape:
        raise ValueError("NTKStats needs one theta and one residual per probe example")
    # log of each summand: -2 eta Theta_ii t + 2 log|r_i|; a zero residual contributes nothing.
    with np.errstate(divide="ignore"):
        logs = -2.0 * eta * theta * t + 2.0 * np.log(np.abs(r))
    top = np.max(logs)
    if not np.isfinite(top):
        return 0.0, float("-inf")
    log_f = float(top + np.log(np.mean(np.exp(logs - top))))
    return float(np.exp(log_f)), log_f


def diag_ntk(model, rows: list[tuple[list[int], list[int]]], device=None) -> NTKStats:
    """Measure NTKStats of `model` on `rows` = [(input_ids, labels)], one backward per example.

    Labels use -100 on prompt tokens; rows without a response token are skipped. The model is
    put in eval mode (no dropout) for the measurement and returned to its previous mode.
    """
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    theta, resid = [], []
    try:
        for ids, labels in rows:
            if all(label == -100 for label in labels[1:]):
                continue
            x = torch.tensor([ids], device=device)
            y = torch.tensor([labels], device=device)
            loss = model(input_ids=x, labels=y).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            theta.append(float(sum(g.detach().float().pow(2).sum() for g in grads if g is not None)))
            resid.append(float(loss.detach()))
    finally:
        model.train(was_training)
    if not theta:
        raise ValueError("no probe example has a response token to measure the NTK on")
    return NTKStats(theta=tuple(theta), residual=tuple(resid))
