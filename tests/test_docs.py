"""The documentation stays true to the code: its marked examples run, every verb is documented."""

from __future__ import annotations

import glob
import re
import shlex
from pathlib import Path

import pytest

from cordfuse.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"<!-- doctest -->\s*```(bash|python)\n(.*?)```", re.S)


def doctest_blocks(path: Path) -> list[tuple[str, str]]:
    """The page's marked examples in order: ``("bash", one cordfuse command)`` per command line,
    ``("python", the whole block)``."""
    blocks = []
    for language, block in BLOCK.findall(path.read_text()):
        if language == "python":
            blocks.append((language, block))
            continue
        blocks += [
            (language, line.strip())
            for line in block.splitlines()
            if line.strip().startswith("cordfuse ")
        ]
    return blocks


def expand(argument: str) -> list[str]:
    """Glob expansion as a shell does it (sorted; a pattern with no match stays as is)."""
    return sorted(glob.glob(argument)) or [argument] if "*" in argument else [argument]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in DOCS if doctest_blocks(p)], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for language, example in doctest_blocks(page):
        if language == "python":
            exec(compile(example, f"{page.name} example", "exec"), {"__name__": "__doc__"})
            continue
        argv = [a for token in shlex.split(example)[1:] for a in expand(token)]
        status = main(argv)
        captured = capsys.readouterr()
        assert status == 0, f"{page.name}: `{example}` exited {status}: {captured.err[-500:]}"


def test_the_readme_shows_the_python_call():
    readme = (ROOT / "README.md").read_text()
    assert "cordfuse.segment(" in readme and "docs/inference.md" in readme


def test_every_verb_is_documented_in_the_reference():
    """docs/cli.md, the command reference the README links to, has a section for every verb."""
    reference = (ROOT / "docs" / "cli.md").read_text()
    verbs = build_parser()._subparsers._group_actions[0].choices
    missing = [v for v in verbs if f"### `cordfuse {v}" not in reference]
    assert not missing, f"docs/cli.md lacks a section for: {missing}"
    assert "docs/cli.md" in (ROOT / "README.md").read_text(), "the README must link docs/cli.md"


def test_docs_index_links_resolve():
    index = (ROOT / "docs" / "index.md").read_text()
    links = re.findall(r"\]\(([^)#]+\.md)\)", index)
    assert len(links) >= 7 and all((ROOT / "docs" / link).exists() for link in links)
    for page in DOCS:
        for link in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / link).exists(), f"{page.name}: broken link {link}"
