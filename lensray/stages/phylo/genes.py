"""Genes: the G prompts every model is fingerprinted on (PhyloLM's "genes").

A gene is the start of one of the user's texts, cut at a random length of `min_chars` to
`max_chars` characters (inclusive), or to at most the text's own length when it is shorter
(the whole text when it is shorter than `min_chars`): a gene that is a whole record mostly
asks what follows its end, where many models say the same (nothing). Texts are the records of
the fine-tuning data set (`texts_from_data`) or the lines of a text file (`texts_from_file`);
empty ones are skipped. The draw is seeded: the same texts and seed give the same genes.

    from lensray.stages.phylo.genes import draw_genes, texts_from_file
    genes = draw_genes(texts_from_file("corpus.txt"), n=128, seed=0)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lensray.core.errors import DataError
from lensray.data.dataset import DataConfig, load_raw


def draw_genes(texts: Iterable[str], n: int = 128, seed: int = 0, min_chars: int = 20, max_chars: int = 100) -> list[str]:
    """`n` genes from `texts`: distinct texts drawn at random (each text again, at a new length,
    only once all were used), each cut to a random length in [min_chars, max_chars], that
    range capped at the text's length.

    Raises DataError when no text is left once the empty ones are skipped.
    """
    pool = [t for t in texts if t and t.strip()]
    if not pool:
        raise DataError("the texts for the genes are all empty: give a data set or text file with text in it")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(pool)) for _ in range(-(-n // len(pool)))])[:n]
    genes = []
    for i in order:
        longest = min(max_chars, len(pool[i]))
        genes.append(pool[i][: rng.integers(min(min_chars, longest), longest + 1)])
    return genes


def texts_from_file(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (a DataError names the file when it cannot be read)."""
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"phylo.genes_path={str(path)!r}: cannot be read ({type(e).__name__}: {e})") from None


def texts_from_data(cfg: DataConfig) -> list[str]:
    """The records of the data set `cfg` names, each as the model would read it: the `text`
    field of structured records (with a schema), else the prompt and response written with the
    data's plain formats (missing fields count as empty)."""
    ds = load_raw(cfg)
    if cfg.schema is not None:
        return [str(t or "") for t in ds["text"]]
    return [
        cfg.prompt_format.format(prompt=p or "") + cfg.response_format.format(response=r or "")
        for p, r in zip(ds[cfg.prompt_field], ds[cfg.response_field])
    ]
