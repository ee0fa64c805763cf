"""``cordfuse prepare``: every subject of a dataset, in parallel, resumable, with a summary.

Output layout::

    OUT/dataset.json                 spacing, crop size, sequences, cohorts, subjects, version
    OUT/<subject>/prepared.npz       one compressed file per subject (atomic)
    OUT/<subject>/qc.png             with --qc: straightened crops side by side

A subject either prepares or fails with one line (file, reason); the others go on. A second run
into the same OUT skips subjects already prepared with the same settings.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cordfuse import __version__
from cordfuse.dataset import Dataset, Subject
from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_text
from cordfuse.ownership import claim, locked
from cordfuse.preprocess.pipeline import (
    PREPARED_NAME,
    PreparedSubject,
    PrepConfig,
    is_prepared_with,
    prepare_subject,
)
from cordfuse.sequences import SEQUENCES
from cordfuse.threads import set_threads, threads_budget


@dataclass
class SubjectResult:
    """How one subject's preparation went (a line of ``dataset.json``).

    Attributes:
        name: The subject's name.
        status: ``prepared``, ``skipped`` (already prepared with these settings) or ``failed``.
        message: Why it failed (empty otherwise).
        cohort: The subject's cohort.
        sequences: The sequences its crops hold.
        nz: The crop's length along S-I, in voxels.
        has_label: Whether it has a lesion label.
        warnings: What went wrong but did not stop it.
        fallbacks: Sequences that used the T2Sag centreline instead of their own, and why.
    """

    name: str
    status: str  # prepared | skipped | failed
    message: str = ""
    cohort: str | None = None
    sequences: list[str] = field(default_factory=list)
    nz: int = 0
    has_label: bool = False
    warnings: list[str] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)  # sequence -> why (T2Sag centreline)


def _result(prepared: PreparedSubject, status: str) -> SubjectResult:
    return SubjectResult(
        prepared.subject,
        status,
        cohort=prepared.cohort,
        sequences=prepared.sequences,
        nz=prepared.geometry.nz,
        has_label=prepared.label is not None,
        warnings=prepared.warnings,
        fallbacks=prepared.fallbacks,
    )


def prepare_one(
    subject: Subject, out: Path, config: PrepConfig, *, overwrite: bool, qc: bool
) -> SubjectResult:
    """Prepare one subject into ``out/<subject>/``; never raises for a user-data problem.

    Args:
        subject: A discovered subject.
        out: The ``prepare`` output folder.
        config: The pre-processing settings.
        overwrite: Prepare it again even when it is already prepared with these settings.
        qc: Also write its QC picture.

    Returns:
        The result (``failed`` with the reason for a user-data problem).
    """
    folder = out / subject.name
    target = folder / PREPARED_NAME
    if not overwrite and is_prepared_with(target, config):
        return _result(PreparedSubject.load(target), "skipped")
    try:
        prepared = prepare_subject(subject, config)
        prepared.save(target)
        if qc:
            from cordfuse.preprocess.qc import write_prepared_qc

            write_prepared_qc(prepared, folder / "qc.png")
    except CordfuseError as exc:
        return SubjectResult(subject.name, "failed", str(exc), cohort=subject.cohort)
    return _result(prepared, "prepared")


def prepare_dataset(
    dataset: Dataset,
    out: str | Path,
    config: PrepConfig,
    *,
    jobs: int = 1,
    overwrite: bool = False,
    qc: bool = False,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[SubjectResult]:
    """Prepare every subject (``jobs`` processes) and write ``OUT/dataset.json``.

    Args:
        dataset: The discovered dataset (read only).
        out: A new or empty folder, or an earlier ``prepare`` output (finished subjects with the
            same settings are skipped).
        config: The pre-processing settings.
        jobs: Subjects prepared in parallel (processes).
        overwrite: Prepare finished subjects again.
        qc: Also write a QC picture per subject.
        threads: Threads of each worker process (default: :func:`cordfuse.threads.threads_budget`
            shared by the ``jobs`` processes).
        progress: Called with each subject's name when it is done.

    Returns:
        One result per subject, in the dataset's order.

    Raises:
        CordfuseError: ``out`` lies inside the dataset, or holds files ``prepare`` did not write.
    """
    out = Path(out)
    root = dataset.root.resolve()
    if out.resolve() == root or root in out.resolve().parents:
        raise CordfuseError(
            f"{out}: output inside the dataset; cordfuse never writes into "
            f"{dataset.root} (choose a folder outside it)"
        )
    claim(out, "prepare").own("dataset.json", *(s.name for s in dataset.subjects))
    results: list[SubjectResult] = []
    if jobs <= 1:
        for subject in dataset.subjects:
            results.append(prepare_one(subject, out, config, overwrite=overwrite, qc=qc))
            if progress:
                progress(subject.name)
    else:
        # spawn, not fork: the caller may have torch thread pools running (demo, tests); the
        # workers share the cores, so that jobs x threads never exceeds them
        with ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=set_threads,
            initargs=(threads_budget(threads, processes=jobs),),
        ) as pool:
            futures = [
                pool.submit(prepare_one, s, out, config, overwrite=overwrite, qc=qc)
                for s in dataset.subjects
            ]
            for future in as_completed(futures):
                results.append(future.result())
                if progress:
                    progress(results[-1].name)
        order = {s.name: i for i, s in enumerate(dataset.subjects)}
        results.sort(key=lambda r: order[r.name])
    write_dataset_json(out, config, results)
    return results


def write_dataset_json(out: Path, config: PrepConfig, results: list[SubjectResult]) -> None:
    """Write (or update) ``OUT/dataset.json`` with these subjects' results.

    Subjects of an earlier run into ``out`` that this run did not touch keep their entries, so
    one job per participant (``--participant-label``) can share an output folder; the update
    runs under the folder's lock, so concurrent jobs never lose each other's entries.

    Args:
        out: The ``prepare`` output folder.
        config: The pre-processing settings (earlier entries with other settings are dropped).
        results: This run's results.
    """
    with locked(out):
        try:
            previous = json.loads((out / "dataset.json").read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("config") != asdict(config):  # other settings: those subjects are stale
            previous = {}
        mine = {r.name for r in results}
        kept = [r for r in _results_from(previous) if r.name not in mine]
        _write_document(out, config, kept + list(results))


def _results_from(document: dict) -> list[SubjectResult]:
    """The results an earlier ``dataset.json`` records (prepared and failed subjects)."""
    done = [
        SubjectResult(
            s["id"],
            "prepared",
            cohort=s.get("cohort"),
            sequences=s.get("sequences", []),
            nz=s.get("nz", 0),
            has_label=s.get("has_label", False),
            warnings=s.get("warnings", []),
            fallbacks=s.get("centerline_fallbacks", {}),
        )
        for s in document.get("subjects", [])
    ]
    return done + [
        SubjectResult(f["id"], "failed", f.get("reason", "")) for f in document.get("failed", [])
    ]


def _write_document(out: Path, config: PrepConfig, results: list[SubjectResult]) -> None:
    results = sorted(results, key=lambda r: r.name)
    done = [r for r in results if r.status != "failed"]
    document = {
        "cordfuse_version": __version__,
        "spacing_mm": config.spacing,
        "crop_size": config.crop_size,
        "margin_mm": config.margin_mm,
        "orientation": "RPI (SCT/ITK convention: R->L, P->A, I->S; nibabel axis codes LAS)",
        "sequences": list(SEQUENCES),
        "config": asdict(config),
        "cohorts": sorted({r.cohort for r in done if r.cohort}),
        "subjects": [
            {
                "id": r.name,
                "cohort": r.cohort,
                "sequences": r.sequences,
                "nz": r.nz,
                "has_label": r.has_label,
                "warnings": r.warnings,
                "centerline_fallbacks": r.fallbacks,
            }
            for r in done
        ],
        "failed": [{"id": r.name, "reason": r.message} for r in results if r.status == "failed"],
    }
    atomic_write_text(out / "dataset.json", json.dumps(document, indent=2) + "\n")


def load_prepared_dataset(folder: str | Path) -> tuple[dict, list[Path]]:
    """``dataset.json`` of a prepared folder and the paths of its prepared subjects.

    Args:
        folder: A ``cordfuse prepare`` output folder.

    Returns:
        ``(document, paths)``: the parsed ``dataset.json`` and one ``prepared.npz`` per
        prepared subject.

    Raises:
        CordfuseError: no readable ``dataset.json``.
    """
    folder = Path(folder)
    try:
        document = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise CordfuseError(f"{folder}: not a prepared dataset (no readable dataset.json)") from exc
    return document, [folder / s["id"] / PREPARED_NAME for s in document["subjects"]]
