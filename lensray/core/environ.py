"""Environment variables set for the length of a block, then restored.

    with environ(RAY_FOO="1", BAR=None):   # None leaves BAR as it is
        ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """The environment variables `values` set (None: left as they are) while the block runs."""
    saved = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
