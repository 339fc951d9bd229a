"""curves.png: each shown candidate's probed points, its fitted extrapolation to T with the
interval there, and where candidates were stopped (matplotlib, imported inside).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lensray.core.types import Selection, Status


def plot_curves(selection: Selection, path: Path, most: int = 12) -> None:
    """Draw the finished and the first stopped candidates (at most `most`) into `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranking = selection.doc["ranking"]
    shown = [e for e in ranking if e["status"] == Status.FINISHED][: most // 2 + 1]
    shown += [e for e in ranking if e["status"] == Status.STOPPED][: most - len(shown)]
    target = selection.doc["target"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, e in enumerate(shown):
        color = plt.cm.tab20(i % 20)
        ax.plot(e["sizes"], e["losses"], "o", color=color, ms=4)
        f = selection.fits.get(e["candidate"])
        if f is not None and math.isfinite(f.predicted_loss) and e["sizes"][-1] < target:
            # a straight line in log-log from the last probe to the prediction at T
            x0, y0 = e["sizes"][-1], e["losses"][-1]
            xs = np.geomspace(x0, target, 30)
            ys = y0 * (xs / x0) ** (math.log(f.predicted_loss / y0) / math.log(target / x0))
            if e["status"] == Status.STOPPED:
                style, note = ":", " (stopped)"
            elif not e["reliable"]:
                style, note = "--", " (fit not reliable)"
            else:
                style, note = "-", ""
            ax.plot(xs, ys, style, color=color, lw=1.2, label=f"{e['candidate']}{note}")
            ax.errorbar([target], [f.predicted_loss], yerr=[[f.predicted_loss - f.interval[0]], [f.interval[1] - f.predicted_loss]],
                        fmt="s", color=color, ms=4, capsize=2)
        if e["status"] == Status.STOPPED:
            ax.plot([e["sizes"][-1]], [e["losses"][-1]], "x", color="black", ms=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fine-tuning examples D")
    ax.set_ylabel(f"held-out {selection.doc['ranked_by']}")
    ax.set_title(f"Probed curves and extrapolation to T={target:,} (x = stopped early)")
    if ax.get_legend_handles_labels()[0]:  # no fitted candidate: nothing to label
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
