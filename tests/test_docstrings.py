"""Every public function, class and method of src/cordfuse says what it does (Google style).

A public name is one without a leading underscore, at module level or a method of a public
class. It needs a docstring; a documented function that takes parameters (besides self/cls)
needs an ``Args:`` section, and a class whose ``__init__`` takes parameters needs
``Args:`` in the class or ``__init__`` docstring (as torchio documents its transforms).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cordfuse"

Function = ast.FunctionDef | ast.AsyncFunctionDef


def parameters(node: Function) -> list[str]:
    """Names a caller passes (not self/cls, not ``*args``/``**kwargs`` collectors)."""
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return [n for n in names if n not in ("self", "cls")]


def skipped(node: Function) -> bool:
    """Overload stubs and property setters/deleters share the documented definition."""
    for deco in node.decorator_list:
        name = ast.unparse(deco)
        if name in ("overload", "typing.overload") or name.endswith((".setter", ".deleter")):
            return True
    return False


def public_definitions(tree: ast.Module):
    """``(qualified name, node)`` for every public module-level def/class and public method."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name.startswith("_"):
                continue
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for member in node.body:
                    if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        if member.name == "__init__" or not member.name.startswith("_"):
                            yield f"{node.name}.{member.name}", member


def problems(path: Path) -> list[str]:
    """What a file's public API lacks, one line per name."""
    return problems_in(path.read_text(), path.relative_to(PACKAGE).as_posix())


def problems_in(source: str, where: str) -> list[str]:
    """What the public API of one module's source lacks, one line per name."""
    found = []
    for name, node in public_definitions(ast.parse(source)):
        doc = ast.get_docstring(node)
        if isinstance(node, ast.ClassDef):
            init = next(
                (m for m in node.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"),
                None,
            )
            if not doc:
                found.append(f"{where}: class {name} has no docstring")
            elif (
                init is not None
                and parameters(init)
                and "Args:" not in doc
                and "Args:" not in (ast.get_docstring(init) or "")
            ):
                found.append(f"{where}: class {name} takes {parameters(init)} but has no Args:")
            continue
        if skipped(node) or node.name == "__init__":
            continue
        if not doc:
            found.append(f"{where}: {name}() has no docstring")
        elif parameters(node) and "Args:" not in doc:
            found.append(f"{where}: {name}() takes {parameters(node)} but has no Args:")
    return found


def files() -> list[Path]:
    return [
        p
        for p in sorted(PACKAGE.rglob("*.py"))
        if not any(
            part.startswith("_") and part not in ("__init__.py", "__main__.py")
            for part in p.relative_to(PACKAGE).parts
        )
    ]


def test_public_api_is_documented():
    missing = [line for path in files() for line in problems(path)]
    assert not missing, "undocumented public API:\n" + "\n".join(missing)


def test_the_check_flags_what_it_should():
    source = '''
def documented(a):
    """Does it.

    Args:
        a: A thing.
    """

def no_args_section(a):
    """Does it."""

def bare(): pass

def _private(a): pass

class Thing:
    """A thing."""

    def __init__(self, size): pass

    def method(self): pass

    @property
    def area(self):
        """Its area."""
'''
    assert problems_in(source, "m.py") == [
        "m.py: no_args_section() takes ['a'] but has no Args:",
        "m.py: bare() has no docstring",
        "m.py: class Thing takes ['size'] but has no Args:",
        "m.py: Thing.method() has no docstring",
    ]
