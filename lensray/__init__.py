"""lensray: pick the pretrained model (and sample design) to fine-tune from small fine-tunes.

The light modules (laws, fit, predict, bench) import numpy/scipy only; torch, transformers,
deepspeed and ray are imported inside the probe and the sweep, so the predictor and the report
import on any machine in well under a second.
"""

__version__ = "0.1.0"
