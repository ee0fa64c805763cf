"""``cordfuse check``: the availability matrix of a dataset and every problem in it.

Every image and label is opened and read in full, so that truncated files, NaNs and label/image
grid mismatches are found before a long pre-processing or training run; every image's header is
inspected (:mod:`cordfuse.headers`) for geometry that is unusable, or that nibabel, ITK and FSL
read differently (a warning: the exit status stays 0). A problem in one subject never stops the
others. Nothing is written into the dataset.

Example:
    A subject whose only scan, a T2Sag, is blank:

    >>> import tempfile
    >>> from cordfuse.dataset import discover
    >>> from cordfuse.io import make_nifti, save_nifti
    >>> with tempfile.TemporaryDirectory() as root:
    ...     blank = make_nifti(np.zeros((4, 4, 4), np.float32), np.eye(4))
    ...     save_nifti(blank, Path(root, "sub-01", "anat", "sub-01_acq-sag_T2w.nii.gz"))
    ...     report = check_dataset(discover(root))
    >>> report.ok, [problem.reason for problem in report.problems]
    (False, ['empty image (every voxel is 0)'])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cordfuse.dataset import Dataset, Scan, Subject
from cordfuse.errors import CordfuseError
from cordfuse.headers import inspect_header, read_header
from cordfuse.io import read_volume, same_grid
from cordfuse.sequences import REFERENCE_SEQUENCE, SEQUENCES


@dataclass(frozen=True)
class Problem:
    """Something wrong (or, as a warning, doubtful) in one file, or one subject when ``file`` is
    None."""

    subject: str
    file: Path | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file is not None else ""
        return f"{self.subject}: {where}{self.reason}"


@dataclass
class CheckReport:
    """What ``cordfuse check`` found in a dataset.

    Attributes:
        dataset: The discovered dataset.
        problems: Everything that would make pre-processing or training fail or go wrong.
        warnings: Headers the field's tools read differently; cordfuse goes on with the matrix
            each line names.
        notes: What is ignored or missing but harmless (files no rule matches, no cohort).
    """

    dataset: Dataset
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no problem was found (warnings and notes do not count)."""
        return not self.problems

    def counts(self, subject: Subject) -> dict[str, int]:
        """How many scans (slabs) a subject has of each sequence.

        Args:
            subject: A subject of the dataset.

        Returns:
            ``{sequence: number of scans}`` for the six sequences, in channel order.
        """
        return {seq: len(subject.scans.get(seq, [])) for seq in SEQUENCES}

    def cohort_table(self) -> dict[str, dict[str, int]]:
        """Per cohort: number of subjects, and of subjects having each sequence."""
        keys = [*sorted({s.cohort or "n/a" for s in self.dataset.subjects}), "all"]
        table = {key: {"subjects": 0, **dict.fromkeys(SEQUENCES, 0)} for key in keys}
        for subject in self.dataset.subjects:
            for key in (subject.cohort or "n/a", "all"):
                row = table[key]
                row["subjects"] += 1
                for seq in subject.sequences:
                    row[seq] += 1
        return table

    def to_json(self) -> dict:
        """The report as plain JSON (``cordfuse check --json``).

        Returns:
            The root, ``ok``, every subject's scans and counts, the cohort table, the problems,
            the warnings and the notes.
        """
        return {
            "root": str(self.dataset.root),
            "ok": self.ok,
            "subjects": [
                {
                    "id": s.subject_id,
                    "session": s.session,
                    "cohort": s.cohort,
                    "counts": self.counts(s),
                    "scans": {seq: [str(x.path) for x in scans] for seq, scans in s.scans.items()},
                    "lesion_labels": s.has_lesion_labels,
                }
                for s in self.dataset.subjects
            ],
            "cohorts": self.cohort_table(),
            "problems": [_problem_json(p) for p in self.problems],
            "warnings": [_problem_json(w) for w in self.warnings],
            "notes": self.notes,
        }

    def format_text(self) -> str:
        """The report for a terminal: the availability matrix, the cohort table, then notes,
        warnings and problems.

        Returns:
            The text, lines joined by newlines.
        """
        ds = self.dataset
        cohorts = ", ".join(ds.cohorts()) or "none (no 'cohort' column in participants.tsv)"
        lines = [f"Dataset {ds.root}: {len(ds.subjects)} subjects; cohorts: {cohorts}", ""]
        header = ["subject", "cohort", *SEQUENCES, "lesion labels"]
        rows = [
            [
                s.name,
                s.cohort or "-",
                *[str(n) if n else "." for n in self.counts(s).values()],
                "yes" if s.has_lesion_labels else "no",
            ]
            for s in ds.subjects
        ]
        lines += _table(header, rows)
        lines += ["", "Subjects with each sequence, per cohort:"]
        lines += _table(
            ["cohort", "subjects", *SEQUENCES],
            [[name, *map(str, row.values())] for name, row in self.cohort_table().items()],
        )
        if self.notes:
            lines += ["", f"Notes ({len(self.notes)}):", *[f"  {n}" for n in self.notes]]
        if self.warnings:
            lines += ["", f"Warnings ({len(self.warnings)}, the exit status ignores them):"]
            lines += [f"  {w}" for w in self.warnings]
        lines.append("")
        if self.problems:
            bad = len({p.subject for p in self.problems})
            lines += [f"Problems ({len(self.problems)} in {bad} subjects):"]
            lines += [f"  {p}" for p in self.problems]
        else:
            lines.append("OK: no problems found.")
        return "\n".join(lines)


def _problem_json(problem: Problem) -> dict:
    file = str(problem.file) if problem.file else None
    return {"subject": problem.subject, "file": file, "reason": problem.reason}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*row).rstrip() for row in (header, *rows)]


def check_image(path: Path) -> tuple[list[str], list[str], tuple | None]:
    """Problems and header warnings of one image, and its ``(shape, affine)`` when readable.

    Args:
        path: The image file.

    Returns:
        ``(problems, warnings, grid)``: one phrase per problem (unreadable, NaN/Inf, empty,
        unusable geometry) and per header field other tools read differently
        (:func:`cordfuse.headers.inspect_header`), and the grid or None when the file cannot be
        read.
    """
    try:
        data, affine = read_volume(path)
        header = inspect_header(read_header(path))
    except CordfuseError as exc:
        return [str(exc).removeprefix(f"{path}: ")], [], None
    problems = list(header.problems)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        problems.append(f"NaN/Inf voxels ({bad} of {data.size})")
    finite = data[np.isfinite(data)]
    if finite.size == 0 or finite.min() == finite.max():
        value = "no finite voxel" if finite.size == 0 else f"every voxel is {finite.min():g}"
        problems.append(f"empty image ({value})")
    return problems, header.warnings, (data.shape, affine)


def check_label(path: Path, grid: tuple | None) -> list[str]:
    """Problems of one label file, compared with the grid of its image (if known).

    Args:
        path: The label file.
        grid: Its image's ``(shape, affine)``, or None.

    Returns:
        One phrase per problem: unreadable, another grid, NaN/Inf or values other than 0 and 1.
    """
    try:
        data, affine = read_volume(path)
    except CordfuseError as exc:
        return [str(exc).removeprefix(f"{path}: ")]
    problems = []
    if grid is not None and not same_grid(grid[0], grid[1], data.shape, affine):
        shape_note = "" if tuple(grid[0]) == data.shape else f": shape {data.shape} vs {grid[0]}"
        problems.append(f"label grid differs from its image's grid{shape_note or ' (affine)'}")
    if not np.all(np.isfinite(data)):
        problems.append("label has NaN/Inf voxels")
    else:
        values = np.unique(data)
        if not np.all(np.isin(values, (0, 1))):
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
            problems.append(f"label not binary (values: {shown})")
    return problems


def check_subject(subject: Subject) -> tuple[list[Problem], list[Problem], list[str]]:
    """Open every image and label of one subject.

    Args:
        subject: A discovered subject.

    Returns:
        ``(problems, warnings, notes)``: a missing T2Sag, duplicate or ambiguous matches,
        unreadable or empty images, unusable geometry, bad labels and labels without image;
        warnings for headers other tools read differently; notes for unmatched files.
    """
    problems: list[Problem] = []
    warnings: list[Problem] = []
    notes: list[str] = []

    def add(file, reason):
        problems.append(Problem(subject.name, file, reason))

    if not subject.scans.get(REFERENCE_SEQUENCE):
        add(None, f"no {REFERENCE_SEQUENCE} scan (required: lesions are defined on it)")
    for path, matches in subject.ambiguous:
        add(path, f"duplicate match: file matches several sequences ({', '.join(matches)})")
    for seq, scans in subject.scans.items():
        _check_duplicates(seq, scans, add)
        for scan in scans:
            image_problems, image_warnings, grid = check_image(scan.path)
            for reason in image_problems:
                add(scan.path, reason)
            warnings += [Problem(subject.name, scan.path, reason) for reason in image_warnings]
            for label in (scan.lesion_label, scan.cord_label):
                if label is not None:
                    for reason in check_label(label, grid):
                        add(label, reason)
    if subject.fused_lesion_label is not None:
        for reason in check_label(subject.fused_lesion_label, None):
            add(subject.fused_lesion_label, reason)
    for label in subject.orphan_labels:
        add(label, "label has no matching image (its stem names no image of this subject)")
    for path in subject.unmatched:
        notes.append(f"{subject.name}: {path.name} matches no sequence rule (ignored)")
    return problems, warnings, notes


def _check_duplicates(sequence: str, scans: list[Scan], add) -> None:
    by_chunk: dict[int | None, list[Scan]] = {}
    for scan in scans:
        by_chunk.setdefault(scan.chunk, []).append(scan)
    for chunk, group in by_chunk.items():
        if len(group) > 1:
            which = f" chunk {chunk}" if chunk is not None else ""
            names = ", ".join(s.path.name for s in group)
            add(
                group[0].path,
                f"duplicate match: {len(group)} files for {sequence}{which} ({names})",
            )
    if None in by_chunk and len(by_chunk) > 1:
        add(
            by_chunk[None][0].path,
            f"duplicate match: {sequence} has files with and without a chunk entity",
        )


def check_dataset(
    dataset: Dataset, *, progress: Callable[[str], None] | None = None
) -> CheckReport:
    """Open every file of every subject and report all problems.

    Args:
        dataset: A discovered dataset.
        progress: Called with each subject's name once it is checked.

    Returns:
        The report.
    """
    report = CheckReport(dataset)
    for subject in dataset.subjects:
        problems, warnings, notes = check_subject(subject)
        report.problems += problems
        report.warnings += warnings
        report.notes += notes
        if progress is not None:
            progress(subject.name)
    if dataset.cohorts_from is not None:
        missing = [s.subject_id for s in dataset.subjects if s.cohort is None]
        if missing:
            report.notes.append(f"participants.tsv gives no cohort for: {', '.join(missing)}")
    return report
