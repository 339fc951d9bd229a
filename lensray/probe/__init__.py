"""Probe backends: how one Candidate is fine-tuned (or replayed) on the plan's nested subsets, one
Observation per size. `base` holds the protocol and the registry; `hf` fine-tunes with
DeepSpeed under Ray Train; `replay` replays recorded curves.
"""
