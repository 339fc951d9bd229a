"""Shared fixtures: the offline zoo (built once, cached), its tokenizer, a local Ray.

The zoo is built into the repository's ignored `zoo/` directory (or $LENSRAY_TEST_ZOO) and
reused across sessions: `build_zoo` is a no-op while its config hash is unchanged, so only the
first session pays the ~1.5 minute build.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """A built zoo (lensray.zoo.build), shared by the whole session."""
    from lensray.zoo.build import build_zoo

    root = Path(os.environ.get("LENSRAY_TEST_ZOO", REPO / "zoo"))
    build_zoo(root)
    return root


@pytest.fixture(scope="session")
def zoo_manifest(zoo_dir: Path) -> dict:
    """The zoo's manifest with absolute paths; models by name under manifest["by_name"]."""
    from lensray.zoo.build import load_manifest

    manifest = load_manifest(zoo_dir)
    manifest["by_name"] = {m["name"]: m for m in manifest["models"]}
    return manifest


@pytest.fixture(scope="session")
def zoo_lineages(zoo_dir: Path) -> dict:
    """The zoo's lineages (lensray.zoo.lineages), built once on top of `zoo_dir` (a no-op while
    their config hash is unchanged): their manifest with absolute paths."""
    from lensray.zoo.lineages import build_lineages, load_lineages

    build_lineages(zoo_dir)
    return load_lineages(zoo_dir)


@pytest.fixture(scope="session")
def tokenizer():
    """The zoo's word-level tokenizer, trained in-process (no zoo build needed)."""
    from lensray.zoo.build import build_tokenizer

    return build_tokenizer(0)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for the module, shut down after it (2 logical CPUs; dashboard on 127.0.0.1, as `lensray select`
    starts it, so Ray Train can free a stopped probe's placement group)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()  # no module's Ray outlives it: the cluster tests start their own on this machine


@pytest.fixture(scope="module", autouse=True)
def _fresh_ray_per_module():
    """Shut down whatever Ray a module started (through `ray_local` or an in-process
    `run_select`), so no module inherits another's actors, placement groups or busy workers."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# Curves for the stopping rule's tests (test_rule, test_scheduler)
from lensray.core.types import Observation  # noqa: E402

SIZES = [200, 400, 800, 1600, 3200]
TARGET = 1638400


def curve(start: float, slope: float) -> list[float]:
    """A clean power law L = start * (D/200)^slope."""
    return [start * (d / 200) ** slope for d in SIZES]


def feed(rule, name: str, losses: list[float], upto: int | None = None) -> list:
    """Observe `name`'s first `upto` sizes of `losses` with `rule`; its actions."""
    return [rule.observe(Observation(name, d, l, flops=6e9 * d)) for d, l in list(zip(SIZES, losses))[:upto]]
