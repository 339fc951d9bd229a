"""The package's shape: no import cycle between modules, and the light half (types, config,
predictors, stopping rule, ranking and report) imports where Ray, torch and transformers do not."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lensray"


def module_imports() -> dict[str, set[str]]:
    """Each lensray module -> the lensray modules it imports at module level (not inside a
    function, not under TYPE_CHECKING): the edges an import cycle would run along."""
    modules = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
               for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lensray"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("lensray")]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_in_the_package():
    edges = module_imports()
    assert len(edges) > 30 and "lensray.sweep.rule" in edges["lensray.sweep.scheduler"]
    assert find_cycle(edges) is None


LIGHT = [
    "lensray.core.types", "lensray.core.curves", "lensray.config.load", "lensray.config.schema",
    "lensray.predict.methods", "lensray.predict.metrics", "lensray.sweep.rule", "lensray.sweep.record",
    "lensray.report.rank", "lensray.report.files", "lensray.bench.curves", "lensray.pipeline",
]


def test_the_light_modules_import_without_ray_torch_or_transformers():
    """Run in a fresh interpreter where importing ray, torch or transformers raises."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'torch', 'transformers', 'deepspeed'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {LIGHT!r}:\n"
        "    __import__(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('lensray')).__len__())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) >= len(LIGHT)
