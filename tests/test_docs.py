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
BLOCK = re.compile(r"<!-- doctest -->\s*```bash\n(.*?)```", re.S)


def doctest_commands(path: Path) -> list[str]:
    return [
        line.strip()
        for block in BLOCK.findall(path.read_text())
        for line in block.splitlines()
        if line.strip().startswith("cordfuse ")
    ]


def expand(argument: str) -> list[str]:
    """Glob expansion as a shell does it (sorted; a pattern with no match stays as is)."""
    return sorted(glob.glob(argument)) or [argument] if "*" in argument else [argument]


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in DOCS if doctest_commands(p)], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for command in doctest_commands(page):
        argv = [a for token in shlex.split(command)[1:] for a in expand(token)]
        status = main(argv)
        captured = capsys.readouterr()
        assert status == 0, f"{page.name}: `{command}` exited {status}: {captured.err[-500:]}"


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
