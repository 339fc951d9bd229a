"""`lensray verify`: check a selection against the truth by fine-tuning every candidate at T.

    lensray verify CONFIG [--json OUT]

Runs the same sweep as `lensray select` with one planned size, the target T, and no early
stopping (in `<output>/<name>-verify/`, resumable), then scores the selection made by the select
run of that CONFIG::

    relacc        = 100 * (L_worst - L_selected) / (L_worst - L_best),   L = the ranked quantity
                    at T (the loss, or the task error with probe.metric task)
    pearcorr      = 100 * Pearson(predicted loss, L) over the candidates with a prediction
    fraction_of_full = FLOPs the select run spent / FLOPs of fine-tuning every candidate at T
"""

from __future__ import annotations

import json
import numpy as np

from lensray.config.schema import SelectConfig
from lensray.core.errors import ConfigError
from lensray.pipeline import run_select
from lensray.predict.metrics import pearcorr, relacc


def verify_config(cfg: SelectConfig) -> SelectConfig:
    """The select config turned into its verification: every candidate fine-tuned at T."""
    return cfg.exhaustive("verify", [cfg.plan.target])


def run_verify(cfg: SelectConfig) -> dict:
    """Fine-tune every candidate at T (resuming a partial verification) and score the selection."""
    storage = cfg.storage()
    storage.pull("selection.json")
    path = storage.local / "selection.json"
    if not path.is_file():
        raise ConfigError(f"no selection at {storage.uri('selection.json')}: run `lensray select` with this config first")
    selection = json.loads(path.read_text())
    truth_run = run_select(verify_config(cfg), resume=True)
    truth = {e["candidate"]: e["losses"][0] for e in truth_run.doc["ranking"] if e["losses"]}
    if selection["selected"] not in truth:
        raise ConfigError(f"the selected candidate {selection['selected']!r} has no loss at T: see {truth_run.doc}")
    names = list(truth)
    losses = np.array([truth[n] for n in names])
    predicted = {e["candidate"]: e["predicted_loss"] for e in selection["ranking"] if e["predicted_loss"] is not None}
    both = [n for n in names if n in predicted]
    spent, full = selection["cost"]["flops_spent"], truth_run.doc["cost"]["flops_spent"]
    return {
        "relacc": relacc(names.index(selection["selected"]), losses),
        "pearcorr": pearcorr(np.array([predicted[n] for n in both]), np.array([truth[n] for n in both])),
        "fraction_of_full": spent / full if full else None,
        "selected": selection["selected"],
        "best": names[int(np.argmin(losses))],
        "loss_at_target": truth,
    }
