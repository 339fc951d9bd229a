"""The `hf` probe backend: transformers models fine-tuned with DeepSpeed under Ray Train V2
(`recipe`, `deepspeed`, `loading`, `driver` in the trial process, `worker` on each rank, `ntk`).
"""
