"""lensray: pick the pretrained model (and sample design) to fine-tune from small fine-tunes.

One pipeline (lensray.pipeline): config -> Pool -> pre-sweep stages -> sweep (one Ray Tune trial
per Candidate, probed with DeepSpeed under Ray Train or replayed from recorded curves, stopped
early by a scaling-curve rule) -> ranking -> post-sweep stages -> report files.

The light half (core, config, predict, the stopping rule, the ranking and the report) imports
numpy, scipy and pyarrow only; Ray, torch, transformers and deepspeed are imported inside the
probe backends and the sweep's Ray code, so the predictors and the report import anywhere.
"""

__version__ = "0.1.0"
