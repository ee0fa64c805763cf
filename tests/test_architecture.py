"""The import rules docs/architecture.md states hold in the code (its layer table is read here)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cordfuse"


def layers() -> dict[str, int]:
    """``module (or package) -> layer`` from the table of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = {}
    for layer, modules in re.findall(r"^\| (\d+) \| ([^|]+) \|", text, re.M):
        for name in re.findall(r"`([\w.]+)`", modules):
            table["cordfuse" if name == "cordfuse" else f"cordfuse.{name}"] = int(layer)
    return table


def imports() -> dict[str, set[str]]:
    """Every cordfuse module and what it imports (module level and inside functions)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(("cordfuse", *parts)).removesuffix(".__init__")
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
        found[module] = names - {module}
    return found


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """The layer of a module: its own row, else its package's."""
    while module:
        if module in table:
            return table[module]
        module = module.rpartition(".")[0]
    return None


def test_every_module_has_a_layer():
    table = layers()
    assert len(table) >= 20
    missing = [m for m in imports() if layer_of(m, table) is None]
    assert not missing, f"docs/architecture.md places no layer for {missing}"


def test_imports_only_point_down():
    table = layers()
    upward = [
        f"{module} ({layer_of(module, table)}) imports {name} ({layer_of(name, table)})"
        for module, names in imports().items()
        for name in names
        if name.startswith("cordfuse") and layer_of(name, table) > layer_of(module, table)
    ]
    assert not upward, "\n".join(upward)


def in_cli(module: str) -> bool:
    """The CLI package or one of its verb modules (``cordfuse.cli.train``)."""
    return module == "cordfuse.cli" or module.startswith("cordfuse.cli.")


def test_the_four_rules():
    found = imports()
    assert [m for m, names in found.items() if not in_cli(m) and any(map(in_cli, names))] == [
        "cordfuse.__main__"
    ]
    for module, names in found.items():
        if module.startswith("cordfuse.evaluation"):
            assert not any(n == "torch" or n.startswith("torch.") for n in names), module
        if module.startswith("cordfuse.nn"):
            assert not names & {"cordfuse.io", "nibabel"}, module
        if module in ("cordfuse.checkpoint", "cordfuse.inference", "cordfuse.models"):
            assert "cordfuse.training.trainer" not in names, module
