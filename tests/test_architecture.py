"""The layer rules of DESIGN.md, read from the import graph (every import, lazy ones in functions included).

- ``slas.rl`` imports only ``slas.rl`` and the shared leaf helpers (config sections, errors, paths,
  images, torch utils): the engine never learns about a concrete model, reward, data set or platform.
- ``slas.t2i``, ``slas.editing``, ``slas.rewards`` and the product-in-hand world ``slas.handworld`` never import
  ``slas.platform``, ``slas.run`` or ``slas.cli`` (a world writes its files through the leaf ``slas.files``).
- ``slas.platform`` never imports ``slas.run`` or ``slas.cli``.
- None of those imports ``slas.ui`` (the review app sits on top, like the command line).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
LEAVES = {"slas.config", "slas.errors", "slas.paths", "slas.images", "slas.torch_utils"}
FORBIDDEN = {
    "slas.t2i": ("slas.platform", "slas.run", "slas.cli", "slas.ui"),
    "slas.editing": ("slas.platform", "slas.run", "slas.cli", "slas.ui"),
    "slas.rewards": ("slas.platform", "slas.run", "slas.cli", "slas.ui"),
    "slas.handworld": ("slas.platform", "slas.run", "slas.cli", "slas.ui"),
    "slas.platform": ("slas.run", "slas.cli", "slas.ui"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every ``slas`` module ``source`` imports, with ``from X import name`` counted as ``X`` (and ``X.name``
    when that is a submodule: both are checked, so ``from slas import platform`` is caught too)."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "slas" or m.startswith("slas.")}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    out = []
    if _within(module, "slas.rl"):
        for name in imports:
            if not (_within(name, "slas.rl") or any(_within(name, leaf) for leaf in LEAVES)) and name != "slas":
                out.append(f"{module} imports {name} (slas.rl may import only slas.rl and {sorted(LEAVES)})")
    for layer, banned in FORBIDDEN.items():
        if _within(module, layer):
            out += [f"{module} imports {name}" for name in imports if any(_within(name, b) for b in banned)]
    return out


def _all_modules() -> list[tuple[str, Path]]:
    return [(module_name(p), p) for p in sorted((SRC / "slas").rglob("*.py")) if "migrations" not in p.parts]


def test_the_import_graph_keeps_the_layers():
    problems = []
    for module, path in _all_modules():
        problems += violations(module, imported_modules(path.read_text(), module, path.name == "__init__.py"))
    assert not problems, "\n".join(problems)


def test_the_graph_reader_sees_real_imports():
    """The checker is not vacuous: it finds the imports the code really has."""
    modules = dict(_all_modules())
    trainer = imported_modules(modules["slas.rl.trainer"].read_text(), "slas.rl.trainer")
    assert {"slas.rl.protocols", "slas.rl.advantages", "slas.config"} <= trainer
    assert "slas.rl.protocols" in imported_modules(modules["slas.t2i.policy"].read_text(), "slas.t2i.policy")


@pytest.mark.parametrize(("module", "source"), [
    ("slas.rl.trainer", "from slas.platform.tracking import Tracker"),
    ("slas.rl.trainer", "def f():\n    from slas.t2i.prompts import PromptSource\n"),
    ("slas.rl.trainer", "import slas.rewards"),
    ("slas.rl.trainer", "from slas import platform"),
    ("slas.rl.trainer", "from ..t2i import prompts"),
    ("slas.t2i.flux", "from slas.platform.db import open_store"),
    ("slas.rewards.clip", "def f():\n    import slas.run\n"),
    ("slas.platform.sampling", "def f():\n    from slas.run import POLICIES\n"),
    ("slas.platform.jobs", "from slas.cli import app"),
    ("slas.platform.samplesets", "from slas.ui.handlers import next_pair"),
    ("slas.handworld.dataset", "def f():\n    from slas.platform.samplesets import write_atomic\n"),
])
def test_each_forbidden_import_is_caught(module, source):
    assert violations(module, imported_modules(source, module))


@pytest.mark.parametrize(("module", "source"), [
    ("slas.rl.trainer", "from slas.config import TrainerConfig\nfrom slas.rl import distributed\nimport torch"),
    ("slas.rl.trainer", "from .protocols import Callback"),
    ("slas.t2i.policy", "from slas.rl.protocols import Group\nfrom slas.preflight import resolve_model_path"),
    ("slas.platform.sampling", "from slas.policies import load_policy"),
])
def test_allowed_imports_pass(module, source):
    assert violations(module, imported_modules(source, module)) == []
