"""Discovery of subjects, scans, labels and cohorts in a BIDS dataset.

Images: ``sub-*/[ses-*/]anat/*.nii[.gz]``, matched to sequences by :mod:`cordfuse.sequences`.
Labels: ``derivatives/labels/sub-*/[ses-*/]anat/<image stem>_lesion-manual.nii.gz`` (lesions) and
``<image stem>_seg-manual.nii.gz`` (cord), on the grid of the image they belong to. A lesion label
whose stem names the fused T2Sag (the T2Sag stem without its ``chunk`` entity) belongs to the fused
image. Cohorts come from the ``cohort`` column of ``participants.tsv`` when present.

Discovery only reads names; :mod:`cordfuse.check` opens the files.

Example:
    A dataset of one subject with two T2Sag slabs and a STIR (empty files: names suffice; STIR
    may also be named ``_STIR``, as in older data):

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     anat = Path(root, "sub-01", "anat")
    ...     anat.mkdir(parents=True)
    ...     for name in ("acq-sag_chunk-1_T2w", "acq-sag_chunk-2_T2w", "acq-stir_T2w"):
    ...         Path(anat, f"sub-01_{name}.nii.gz").touch()
    ...     ds = discover(root)
    >>> subject = ds.subjects[0]
    >>> subject.name, subject.sequences, [scan.chunk for scan in subject.scans["T2Sag"]]
    ('sub-01', ['T2Sag', 'STIR'], [1, 2])
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.sequences import (
    SEQUENCES,
    MatchRule,
    load_rules,
    match_sequence,
    parse_bids_name,
    strip_nifti_extension,
)

LESION_SUFFIX = "lesion-manual"
CORD_SUFFIX = "seg-manual"
SYNTH_TRUTH = Path("derivatives") / "synth"  # where cordfuse synth writes its truth


@dataclass(frozen=True)
class Scan:
    """One image file of one sequence, with its label files when they exist."""

    path: Path
    sequence: str
    chunk: int | None
    stem: str
    lesion_label: Path | None = None
    cord_label: Path | None = None


@dataclass
class Subject:
    """A subject (and session) with its scans grouped by sequence, in channel order."""

    subject_id: str
    session: str | None
    cohort: str | None
    scans: dict[str, list[Scan]] = field(default_factory=dict)
    fused_lesion_label: Path | None = None
    unmatched: list[Path] = field(default_factory=list)
    ambiguous: list[tuple[Path, list[str]]] = field(default_factory=list)
    orphan_labels: list[Path] = field(default_factory=list)
    #: The generator's truth of a synthetic subject (``derivatives/synth/<id>_truth.json``).
    synth_truth: Path | None = None
    #: The BIDS dataset it was found in; None for scans given as files (``predict --t2sag``).
    dataset: Path | None = None

    @property
    def name(self) -> str:
        """``sub-XX`` or ``sub-XX_ses-YY``: the subject's name in every output file."""
        return f"{self.subject_id}_{self.session}" if self.session else self.subject_id

    @property
    def sequences(self) -> list[str]:
        """The sequences the subject has, in channel order."""
        return [seq for seq in SEQUENCES if self.scans.get(seq)]

    @property
    def has_lesion_labels(self) -> bool:
        """Whether a lesion label exists for a T2Sag slab or for the fused T2Sag."""
        return self.fused_lesion_label is not None or any(
            s.lesion_label is not None for s in self.scans.get("T2Sag", [])
        )


@dataclass
class Dataset:
    """A discovered dataset: its root, the subjects found and dataset-level notes."""

    root: Path
    subjects: list[Subject]
    cohorts_from: Path | None = None

    def cohorts(self) -> list[str]:
        """The cohorts of the subjects (sorted; subjects without one are left out).

        Returns:
            The cohort names.
        """
        return sorted({s.cohort for s in self.subjects if s.cohort is not None})

    def select(self, labels: list[str] | None) -> Dataset:
        """The dataset restricted to some participants (BIDS-App ``--participant-label``: ``01``
        or ``sub-01``); all of them when ``labels`` is empty or None.

        Args:
            labels: Participant labels, with or without ``sub-``.

        Returns:
            The same dataset with only those subjects.

        Raises:
            CordfuseError: a label names no subject of the dataset.
        """
        if not labels:
            return self
        wanted = {label if label.startswith("sub-") else f"sub-{label}" for label in labels}
        unknown = sorted(wanted - {s.subject_id for s in self.subjects})
        if unknown:
            raise CordfuseError(f"{self.root}: no participant {', '.join(unknown)}")
        return replace(self, subjects=[s for s in self.subjects if s.subject_id in wanted])


def read_cohorts(root: Path) -> dict[str, str]:
    """``participant_id -> cohort`` from ``participants.tsv`` (empty when absent or no column).

    Args:
        root: The BIDS dataset's folder.

    Returns:
        Each participant's cohort (participants with an empty or ``n/a`` cohort left out).

    Raises:
        CordfuseError: an unreadable table.
    """
    tsv = root / "participants.tsv"
    if not tsv.exists():
        return {}
    try:
        with tsv.open(newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if reader.fieldnames is None or "cohort" not in reader.fieldnames:
                return {}
            return {
                row["participant_id"]: row["cohort"]
                for row in reader
                if row.get("participant_id") and row.get("cohort") not in (None, "", "n/a")
            }
    except (OSError, csv.Error, KeyError) as exc:
        raise CordfuseError(f"{tsv}: cannot read participants table ({exc})") from exc


def _anat_folders(root: Path):
    for subject_dir in sorted(root.glob("sub-*")):
        if not subject_dir.is_dir():
            continue
        sessions = sorted(p for p in subject_dir.glob("ses-*") if p.is_dir())
        if sessions:
            for session_dir in sessions:
                yield subject_dir.name, session_dir.name, session_dir / "anat"
        else:
            yield subject_dir.name, None, subject_dir / "anat"


def discover(root: str | Path, *, rules: dict[str, MatchRule] | None = None) -> Dataset:
    """Find every subject, scan and label of the BIDS dataset at ``root``.

    Args:
        root: The BIDS dataset's folder.
        rules: How file names map to sequences (default: :data:`cordfuse.sequences.DEFAULT_RULES`).

    Returns:
        The subjects with their scans, labels, cohorts and the files no rule matched.

    Raises:
        CordfuseError: ``root`` is not a folder or holds no ``sub-*`` folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise CordfuseError(f"{root}: not a folder")
    rules = rules if rules is not None else load_rules(None)
    cohorts = read_cohorts(root)
    subjects = []
    for subject_id, session, anat in _anat_folders(root):
        subject = Subject(subject_id, session, cohorts.get(subject_id), dataset=root)
        truth = root / SYNTH_TRUTH / f"{subject_id}_truth.json"
        subject.synth_truth = truth if truth.is_file() else None
        label_dir = root / "derivatives" / "labels" / subject_id
        if session:
            label_dir = label_dir / session
        label_dir = label_dir / "anat"
        labels = _label_files(label_dir)
        used_labels: set[Path] = set()
        for path in sorted(anat.glob("*.nii*")) if anat.is_dir() else []:
            stem = strip_nifti_extension(path.name)
            if stem is None:
                continue
            name = parse_bids_name(path.name)
            matches = match_sequence(name, rules)
            if not matches:
                subject.unmatched.append(path)
                continue
            if len(matches) > 1:
                subject.ambiguous.append((path, matches))
            lesion = labels.get((stem, LESION_SUFFIX))
            cord = labels.get((stem, CORD_SUFFIX))
            used_labels.update(p for p in (lesion, cord) if p is not None)
            scan = Scan(path, matches[0], name.chunk, stem, lesion, cord)
            subject.scans.setdefault(matches[0], []).append(scan)
        for scans in subject.scans.values():
            scans.sort(key=lambda s: (s.chunk if s.chunk is not None else 0, s.stem))
        for (stem, kind), path in labels.items():
            if path in used_labels:
                continue
            if kind == LESION_SUFFIX and _is_fused_t2sag_stem(stem, subject, rules):
                subject.fused_lesion_label = path
            else:
                subject.orphan_labels.append(path)
        subjects.append(subject)
    if not subjects:
        raise CordfuseError(f"{root}: no subject folders (sub-*) found; is this a BIDS dataset?")
    return Dataset(root, subjects, root / "participants.tsv" if cohorts else None)


def open_dataset(
    root: str | Path, *, mapping: str | Path | None = None, participants: list[str] | None = None
) -> Dataset:
    """The dataset a verb works on: :func:`discover` with the sequence rules of ``mapping``,
    restricted to ``participants``.

    Args:
        root: The BIDS dataset folder.
        mapping: A JSON/YAML file overriding the sequence matching rules (``--mapping``); None
            keeps the built-in rules.
        participants: Only these participants, ``01`` or ``sub-01`` (``--participant-label``);
            None or empty: all of them.

    Returns:
        The dataset.

    Raises:
        CordfuseError: ``root`` is not a dataset, the mapping is invalid, or a participant is not
            in the dataset.
    """
    return discover(root, rules=load_rules(mapping)).select(participants)


def _label_files(folder: Path) -> dict[tuple[str, str], Path]:
    found: dict[tuple[str, str], Path] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.nii*")):
        stem = strip_nifti_extension(path.name)
        if stem is None:
            continue
        for kind in (LESION_SUFFIX, CORD_SUFFIX):
            if stem.endswith("_" + kind):
                found[(stem[: -len(kind) - 1], kind)] = path
    return found


def _is_fused_t2sag_stem(stem: str, subject: Subject, rules) -> bool:
    name = parse_bids_name(stem + ".nii.gz")
    return (
        "chunk" not in name.entities
        and match_sequence(name, rules) == ["T2Sag"]
        and len(subject.scans.get("T2Sag", [])) > 1
    )


def synth_truth_document(subject: Subject) -> dict | None:
    """A synthetic subject's lesions and its scans' grids, as plain JSON (see
    :class:`cordfuse.evaluation.lesions.SynthTruth`); None for a subject without truth.

    Reads the truth file and the headers (not the voxels) of the subject's scans.

    Args:
        subject: A discovered subject.

    Returns:
        ``{"lesions": [...], "scans": {stem: {sequence, motion_world_to_anatomy, affine,
        shape}}}``, or None.

    Raises:
        CordfuseError: an unreadable truth file or scan header.
    """
    if subject.synth_truth is None:
        return None
    from cordfuse.io import load_nifti

    try:
        document = json.loads(subject.synth_truth.read_text())
    except (OSError, ValueError) as exc:
        raise CordfuseError(f"{subject.synth_truth}: unreadable synthetic truth ({exc})") from exc
    paths = {scan.stem: scan.path for scans in subject.scans.values() for scan in scans}
    scans = {}
    for stem, scan in document.get("scans", {}).items():
        if stem in paths:
            header = load_nifti(paths[stem])
            scans[stem] = {
                "sequence": scan["sequence"],
                "motion_world_to_anatomy": scan["motion_world_to_anatomy"],
                "affine": np.asarray(header.affine, dtype=np.float64).tolist(),
                "shape": [int(n) for n in header.shape[:3]],
            }
    return {"lesions": document.get("lesions", []), "scans": scans}
