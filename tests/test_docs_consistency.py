"""The docs name only what the code has: every ``--option`` the README and docs/ show with a verb
is that verb's (with a value among its choices), every benchmark flag is its script's, every
output file they list for ``study`` and ``predict`` is one the code writes, and every study
experiment they name is one ``cordfuse study`` runs."""

from __future__ import annotations

import argparse
import re
from functools import cache
from pathlib import Path

import pytest

from cordfuse.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^(#+) (.*)$", re.M)
#: The end of one shell command on a line: a pipe, a list, a comment or a redirection.
COMMAND_END = re.compile(r"[|;&#>]")
#: Options of other tools the docs mention in passing, by the tool's name.
FOREIGN = {
    "--cpus": "docker run",
    "--nproc_per_node": "torchrun",
    "--nnodes": "torchrun",
    "--rdzv_backend": "torchrun",
    "--rdzv_endpoint": "torchrun",
    "--verify_dataset_integrity": "nnUNetv2_plan_and_preprocess",
    "--maxprocesses": "pytest-xdist",
    "--dist": "pytest-xdist",
}


@cache
def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every verb's parser, by name, and those of a verb's own verbs (``model install``)."""
    found = {}
    for verb, parser in build_parser()._subparsers._group_actions[0].choices.items():
        found[verb] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                found |= {f"{verb} {name}": sub for name, sub in action.choices.items()}
    return found


def verb_of(words: str) -> tuple[str, str] | None:
    """``("model install", rest)`` or ``("train", rest)`` for ``words`` that start with a verb."""
    match = re.match(r"([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?(.*)", words, re.S)
    if not match or match.group(1) not in parsers():
        return None
    nested = f"{match.group(1)} {match.group(2)}"
    if match.group(2) and nested in parsers():
        return nested, match.group(3)
    return match.group(1), words[len(match.group(1)) :]


def actions(verb: str) -> dict[str, argparse.Action]:
    """A verb's options, by every spelling (``-o`` and ``--output``)."""
    return {flag: a for a in parsers()[verb]._actions for flag in a.option_strings}


@cache
def every_option() -> set[str]:
    """The options of every verb, and of ``cordfuse`` itself (``--version``)."""
    options = {flag for a in build_parser()._actions for flag in a.option_strings}
    return options.union(*(actions(verb) for verb in parsers()))


@cache
def benchmark_flags() -> dict[str, set[str]]:
    """The flags of each script in benchmarks/, by file name, read from its source."""
    return {
        path.name: set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", path.read_text()))
        for path in (ROOT / "benchmarks").glob("*.py")
    }


def prose(text: str) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", text)


def cordfuse_commands(text: str) -> list[tuple[str, str]]:
    """``(verb, the rest of the command)`` of each ``cordfuse VERB ...`` in shell text (also after
    ``torchrun ... -m``)."""
    text = text.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for match in re.finditer(r"(?:^|[\s`(])cordfuse[ \t]+([a-z].*)", line):
            command = COMMAND_END.split(match.group(1), 1)[0]
            command = re.split(r"(?:^|\s)cordfuse\s", command)[0]
            verb = verb_of(command)
            commands.append(verb if verb else (command.split()[0], command))
    return commands


def mentions() -> list[tuple[str, str | None, str, str]]:
    """Every option the docs show: ``(page, verb or None, option and what follows, where)``.

    The verb is the command's (``cordfuse VERB ...`` in a code block or a code span, or a span
    that starts with a verb's name, ``train --resume``), else that of the section whose heading
    names ``cordfuse VERB``; None for an option shown alone outside such a section.
    """
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.findall(text):
            for verb, rest in cordfuse_commands(block):
                found += [(page.name, verb, m, "code block") for m in option_uses(rest)]
            for line in block.replace("\\\n", " ").splitlines():
                script = re.search(r"benchmarks/(\w+\.py)(.*)", line)
                if script:
                    found += [
                        (page.name, f"benchmark {script.group(1)}", m, "code block")
                        for m in option_uses(script.group(2))
                    ]
        body = prose(text)
        headings = list(HEADING.finditer(body))
        for paragraph_start in _paragraph_starts(body):
            paragraph = body[paragraph_start : _paragraph_end(body, paragraph_start)]
            section = _section_verb(headings, paragraph_start)
            scripts = re.findall(r"(bench_\w+\.py)", paragraph)
            for span in SPAN.findall(paragraph):
                spoken = _span_verb(span)
                if spoken is not None:
                    verb, rest = spoken
                    found += [(page.name, verb, m, f"`{span}`") for m in option_uses(rest)]
                    continue
                if span.startswith(("torchrun", "docker", "nnUNetv2")):
                    continue
                for use in option_uses(span):
                    flag = use.split()[0]
                    script = next(
                        (s for s in scripts if flag in benchmark_flags().get(s, ())), None
                    )
                    # a flag of a benchmark the paragraph names is that script's
                    owner = f"benchmark {script}" if script and flag not in every_option() else None
                    found.append((page.name, owner or section, use, f"`{span}`"))
    return found


def _paragraph_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer(r"\n\s*\n", text))]


def _paragraph_end(text: str, start: int) -> int:
    match = re.compile(r"\n\s*\n").search(text, start)
    return match.start() if match else len(text)


def _section_verb(headings: list[re.Match], position: int) -> str | None:
    """The verb of the innermost section at ``position`` whose heading names ``cordfuse VERB``."""
    open_sections: list[tuple[int, str | None]] = []
    for heading in headings:
        if heading.start() > position:
            break
        level = len(heading.group(1))
        open_sections = [s for s in open_sections if s[0] < level]
        named = re.search(r"`cordfuse ([a-z][a-z-]*)", heading.group(2))
        open_sections.append((level, named.group(1) if named else None))
    return next((verb for _, verb in reversed(open_sections) if verb), None)


def _span_verb(span: str) -> tuple[str, str] | None:
    """``(verb, the rest)`` of a code span whose options are a verb's: ``cordfuse VERB ...`` or
    ``VERB --...``; None for another span."""
    spoken = verb_of(span.removeprefix("cordfuse").strip())
    if spoken is None:
        return None
    if span.startswith("cordfuse ") or spoken[1].strip().startswith("-"):
        return spoken
    return None


def option_uses(text: str) -> list[str]:
    """Each option in ``text`` with the word that follows it (``--preset small``)."""
    return [
        m.group(0).strip()
        for m in re.finditer(r"(?<![\w-])--[a-z][a-z0-9_-]*(?:[ =]+(?!-)[^\s`,;)\]]+)?", text)
    ]


def test_the_option_extraction_sees_what_a_reader_sees():
    """The extraction itself: commands, spans, sections and benchmark scripts."""
    assert cordfuse_commands("cordfuse train p o --epochs 2 | tee log  # --x\n") == [
        ("train", " p o --epochs 2 ")
    ]
    assert cordfuse_commands("torchrun --nproc_per_node 4 -m cordfuse train p o --seed 0") == [
        ("train", " p o --seed 0")
    ]
    assert _span_verb("predict --per-slab") == ("predict", " --per-slab")
    assert _span_verb("cordfuse evaluate -o m.csv") == ("evaluate", " -o m.csv")
    assert _span_verb("cordfuse model install M.zip --name x")[0] == "model install"
    assert _span_verb("study") is None and _span_verb("--preset small") is None
    assert option_uses("--preset paper|small, `--qc`") == ["--preset paper|small", "--qc"]
    assert option_uses("[--qc] --overwrite --amp bf16") == ["--qc", "--overwrite", "--amp bf16"]
    uses = {(page, verb, use) for page, verb, use, _ in mentions()}
    assert (
        "cli.md",
        "train",
        "--model baseline|specific|mean-imputation|early-fusion|anchored",
    ) in (uses)
    assert any(verb == "benchmark bench_sharing.py" for _, verb, _ in uses)


def test_every_option_the_docs_show_exists():
    wrong = []
    for page, verb, use, where in mentions():
        flag = use.split()[0].split("=")[0]
        if verb is not None and verb.startswith("benchmark "):
            script = verb.split()[1]
            if flag not in benchmark_flags().get(script, set()):
                wrong.append(f"{page}: {where}: {flag} is not a flag of benchmarks/{script}")
        elif verb is not None:
            if verb not in parsers():
                wrong.append(f"{page}: {where}: no verb {verb}")
            elif flag not in actions(verb):
                wrong.append(f"{page}: {where}: cordfuse {verb} has no {flag}")
        elif flag not in every_option() and flag not in FOREIGN:
            wrong.append(f"{page}: {where}: no verb has {flag}")
    assert not wrong, "\n".join(wrong)


def test_every_option_value_the_docs_show_is_a_choice():
    """``--preset paper|small``, ``--model anchored``, ``--amp {auto,bf16}``: each value shown for
    an option with choices is one of them."""
    wrong = []
    for page, verb, use, where in mentions():
        flag, _, value = use.partition(" ")
        value = value.strip().strip("{}")
        if not value or not re.fullmatch(r"[a-z0-9][\w.-]*(?:[|,][\w.-]+)*", value):
            continue  # no value, or a placeholder (P, N, FILE)
        owners = [verb] if verb in parsers() else [v for v in parsers() if flag in actions(v)]
        choices = [
            {str(c) for c in actions(v)[flag].choices}
            for v in owners
            if flag in actions(v) and actions(v)[flag].choices
        ]
        if not choices:
            continue
        for part in re.split(r"[|,]", value):
            if not any(part in c for c in choices):
                wrong.append(f"{page}: {where}: {part!r} is not a choice of {flag}")
    assert not wrong, "\n".join(wrong)


# -- files ------------------------------------------------------------------------------------


def study_outputs() -> set[str]:
    """What ``cordfuse study`` and ``cordfuse demo`` write at the top of their folder."""
    from cordfuse.demo import ENTRIES
    from cordfuse.study import OUTPUTS

    # the config as given (``study`` + its suffix) and one box plot per cohort
    return {*OUTPUTS, *ENTRIES, "study.yaml", "boxplot_<cohort>.png"}


def expand_name(name: str, known: set[str]) -> set[str]:
    """``table1.*`` and ``product.{md,csv}`` as the names they stand for among ``known``."""
    braces = re.fullmatch(r"(.+)\.\{(.+)\}", name)
    if braces:
        return {f"{braces.group(1)}.{suffix}" for suffix in braces.group(2).split(",")}
    if name.endswith(".*"):
        return {k for k in known if k.startswith(name[:-1])} or {name}
    return {name}


def test_the_study_folder_in_the_docs_is_what_study_writes():
    """docs/study.md's layout of the study folder names every top-level entry the code writes,
    and nothing else."""
    from cordfuse.study import OUTPUTS

    text = (ROOT / "docs" / "study.md").read_text()
    layout = next(b for b in FENCE.findall(text) if "runs/<experiment>/seed-<n>/" in b)
    shown: set[str] = set()
    for line in layout.splitlines():
        listed = re.split(r"\s{2,}", line.strip())[0]  # the names, before their description
        for entry in filter(None, (e.strip() for e in listed.split(","))):
            shown |= expand_name(entry.split("/")[0], set(OUTPUTS))
    # besides OUTPUTS: the config as given (``study`` + its suffix), one box plot per cohort
    assert shown - set(OUTPUTS) == {"study.yaml", "boxplot_<cohort>.png"}
    assert not set(OUTPUTS) - shown, f"the study folder lacks {sorted(set(OUTPUTS) - shown)}"


STUDY_FILE = re.compile(
    r"\b((?:table|per_|product|extra_sequences|lesions_changed|boxplot|status|results|"
    r"cordfuse_run|fold|check)[\w<>-]*\.(?:\*|\{[\w,]+\}|md|csv|tex|json|png|html|txt))"
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_study_output_the_docs_name_is_written(page):
    """``table1.md``, ``per_lesion.csv``, ``extra_sequences.*``...: each study or demo output a
    page names is one the code writes."""
    known = study_outputs()
    wrong = []
    for span in SPAN.findall(page.read_text()) + FENCE.findall(page.read_text()):
        for name in STUDY_FILE.findall(span):
            for expanded in expand_name(name, known):
                if expanded not in known:
                    wrong.append(expanded)
    assert not wrong, f"{page.name} names study outputs the code does not write: {wrong}"


def test_every_per_subject_file_the_docs_name_is_written():
    """``<subject>_lesion.nii.gz``, ``<subject>_slab-N_lesion.nii.gz``...: each per-subject file
    name the docs give is spelled somewhere in the code that writes it."""
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "cordfuse").rglob("*.py"))
    wrong = set()
    for page in PAGES:
        for suffix in re.findall(r"<subject>(_[\w.{}-]+)", page.read_text()):
            suffix = suffix.rstrip(".")
            pattern = re.escape(suffix).replace("\\-N_", r"-(?:N|\{\w+\})_")
            if not re.search(r"(?:\{\w+\}|<\w+>|\bsub-\d+)" + pattern, source):
                wrong.add(f"{page.name}: <subject>{suffix}")
    assert not wrong, f"per-subject files the code does not write: {sorted(wrong)}"


def test_evaluate_names_its_per_lesion_table_as_the_code_does():
    """``evaluate -o metrics.csv`` writes ``metrics_lesions.csv`` (``study`` writes
    ``per_lesion.csv``): a sentence that shows a per-lesion table beside ``evaluate -o X.csv``
    uses X's name."""
    from cordfuse.evaluation.evaluate import lesions_beside

    wrong = []
    for page in PAGES:
        for sentence in re.split(r"\.\s", page.read_text()):
            for stem in re.findall(r"evaluate [^`]*?-o\s+(\S+?)\.csv", sentence):
                beside = lesions_beside(f"{stem}.csv").name
                for name in re.findall(r"`([\w<>-]+_lesions?\.csv)`", sentence):
                    if name != beside and not name.startswith("<subject>"):
                        wrong.append(
                            f"{page.name}: evaluate -o {stem}.csv writes {beside}, not {name}"
                        )
    assert not wrong, "\n".join(wrong)
    evaluation = (ROOT / "docs" / "evaluation.md").read_text()
    assert f"`{lesions_beside('metrics.csv').name}`" in evaluation


# -- experiments ------------------------------------------------------------------------------


def test_the_study_page_lists_every_experiment_in_order():
    from cordfuse.study.config import EXPERIMENTS

    text = (ROOT / "docs" / "study.md").read_text()
    table = re.findall(r"^\| `([\w-]+)` \|", text, re.M)
    assert table == list(EXPERIMENTS)


def test_the_command_reference_names_every_experiment():
    from cordfuse.study.config import EXPERIMENTS

    text = (ROOT / "docs" / "cli.md").read_text()
    section = text[text.index("### `cordfuse study") :]
    section = section[: section.index("\n### ")]
    named = set(re.findall(r"`([\w-]+)`", section))
    paper = {"baseline", "specific-stir", "specific-t2s-t1", "specific-t2s-t2ax", "mi"}
    paper |= {"mi-frozen", "mi-distill", "feature-aug"}
    assert paper <= set(EXPERIMENTS)
    missing = set(EXPERIMENTS) - paper - named
    assert not missing, f"docs/cli.md's study section does not name {sorted(missing)}"


def test_every_experiment_the_docs_name_exists():
    """A name shaped like an experiment (``mi-...``, ``specific-...``, ``anchored-...``), or in
    a YAML ``experiments:`` list, is one of :data:`cordfuse.study.config.EXPERIMENTS`."""
    from cordfuse.study.config import EXPERIMENTS

    wrong = set()
    for page in PAGES:
        text = page.read_text()
        names = re.findall(r"`((?:mi|specific|anchored)-[\w-]+)`", text)
        for listed in re.findall(r"experiments:\s*\[([^\]]*)\]", text):
            names += [n.strip() for n in listed.split(",") if n.strip()]
        wrong |= {f"{page.name}: {n}" for n in names if n not in EXPERIMENTS}
        for count in re.findall(r"(\d+) experiments per seed", text):
            if int(count) != len(EXPERIMENTS):
                wrong.add(f"{page.name}: {count} experiments per seed, not {len(EXPERIMENTS)}")
    assert not wrong, f"experiments study does not have: {sorted(wrong)}"
