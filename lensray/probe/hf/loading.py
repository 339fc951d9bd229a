"""Loading a Candidate's model and tokenizer with transformers: a local save_pretrained folder or a
hub id, with errors that say which and why (a ProbeError). transformers and peft are imported
inside.
"""

from __future__ import annotations

from pathlib import Path

from lensray.core.errors import ProbeError, one_line
from lensray.probe.hf.recipe import ProbeSpec


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
"""tokenizer_config.json's names for a tokenizer that is its tokenizer.json and nothing else."""


def _tokenizer_class(folder: Path | None, auto):
    """The class to load a tokenizer with: the generic tokenizers backend for a local folder whose
    tokenizer_config.json names it, else `auto` (AutoTokenizer). AutoTokenizer would build a
    registered model type's own class instead (qwen2: Qwen2Tokenizer, which re-derives its
    pre-tokenizer and splits the zoo's word-level vocabulary into characters)."""
    import json

    config = folder / "tokenizer_config.json" if folder is not None else None
    try:
        named = json.loads(config.read_text()).get("tokenizer_class") if config is not None and config.is_file() else None
    except (OSError, ValueError):
        named = None
    if named in GENERIC_TOKENIZERS:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    return auto


def load_tokenizer(spec: ProbeSpec):
    """The candidate's tokenizer, with pad = eos when it has no pad token."""
    from transformers import AutoConfig, AutoTokenizer

    where = Path(spec.model).expanduser()
    looks_local = where.is_absolute() or spec.model.startswith((".", "~")) or where.exists()
    if looks_local and not where.is_dir():
        raise ProbeError(f"model path {spec.model!r} does not exist (build the zoo with `lensray zoo build`?)", spec.candidate)
    if looks_local and not any(where.glob("*.safetensors")):
        raise ProbeError(f"model directory {spec.model!r} has no .safetensors weights (save it with save_pretrained)", spec.candidate)
    try:
        config = AutoConfig.from_pretrained(spec.model, trust_remote_code=spec.trust_remote_code)
        tok = _tokenizer_class(where if looks_local else None, AutoTokenizer).from_pretrained(
            spec.model, trust_remote_code=spec.trust_remote_code)
    except Exception as e:  # OSError (missing/offline), ValueError (remote code), ...
        where_ = "local directory" if looks_local else "hub id (is the hub reachable from here?)"
        raise ProbeError(f"cannot load model {spec.model!r} as a {where_}: {one_line(e)}", spec.candidate) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ProbeError(
                f"tokenizer of {spec.model!r} has neither a pad nor an end (eos) token; add a pad token to it",
                spec.candidate,
            )
        tok.pad_token = tok.eos_token
    context = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if context and spec.data.max_length > context:
        raise ProbeError(
            f"DataConfig.max_length={spec.data.max_length} exceeds the context of {spec.model!r} "
            f"({context} tokens); lower max_length",
            spec.candidate,
        )
    return tok


def save_model(model, tokenizer, dest: str) -> None:
    """Save a fine-tuned `model` (LoRA adapters merged into its weights) and its tokenizer as a
    save_pretrained folder at `dest`, a path or a URI (lensray.cluster.storage.put_folder)."""
    import tempfile
    from pathlib import Path

    from lensray.cluster.storage import put_folder

    if hasattr(model, "merge_and_unload"):  # a peft model: serve loads plain weights
        model = model.merge_and_unload()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        put_folder(Path(folder), dest)


def load_model(spec: ProbeSpec, torch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        spec.model, use_safetensors=True, trust_remote_code=spec.trust_remote_code, dtype=torch.float32
    )
    n_params = sum(p.numel() for p in model.parameters())
    if spec.probe.lora:
        from peft import LoraConfig, get_peft_model

        cfg = spec.probe
        targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
        model = get_peft_model(
            model,
            LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                       target_modules=targets, task_type="CAUSAL_LM"),
        )
    return model, n_params
