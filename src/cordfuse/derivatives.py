"""Where ``predict`` puts a prediction: a BIDS derivative dataset for BIDS input, a simple layout
for explicit files; and where ``evaluate`` and ``report`` find a subject's mask in either.

For a BIDS dataset (or one of its subject folders), ``predict -o OUT`` writes::

    OUT/dataset_description.json  DatasetType derivative; GeneratedBy: cordfuse and its models
    OUT/README, OUT/.bidsignore
    OUT/lesions.tsv + lesions.json        per subject (and session): lesion count, total volume
    OUT/logs/<subject>_prediction.json    models, options, files; written last (the done mark)
    OUT/sub-XX/[ses-YY/]anat/
        sub-XX_[ses-YY_]acq-sag_desc-lesion_mask.nii.gz     the mask, fused T2Sag grid
        sub-XX_[ses-YY_]acq-sag_desc-lesion_probseg.nii.gz  its probabilities
        <slab>_desc-lesion_mask.nii.gz    each slab of a T2Sag of several, on its own grid, named
                                          by the slab's entities (acq-sag_chunk-2)
        sub-XX_[ses-YY_]acq-sag_desc-lesion_stats.tsv       one row per lesion
        a JSON sidecar beside each file: its sources, threshold, models and sequences (the
        TSV's: its columns)
    OUT/sub-XX/figures/sub-XX_[ses-YY_]acq-sag_desc-lesion_mask.png  the QC picture

The fused T2Sag is cordfuse's own image (the slabs registered and fused), so its files carry
``acq-sag`` and no ``chunk``, whatever the slabs are called. For explicit files (``predict
--t2sag ...``) the layout stays flat: ``OUT/<subject>_lesion.nii.gz``, ``_lesion_prob.nii.gz``,
``_slab-N_lesion.nii.gz``, ``_lesions.csv``, ``_qc.png`` and ``_prediction.json``; earlier
versions wrote that layout for BIDS input too, and :func:`find_prediction` reads both.

Example:
    >>> files = prediction_files("sub-01_ses-02", ["sub-01_ses-02_acq-sag_chunk-1_T2w.nii.gz",
    ...     "sub-01_ses-02_acq-sag_chunk-2_T2w.nii.gz"], [1, 2], bids=True, per_slab=True,
    ...     save_probabilities=False, qc=False)
    >>> print(files["mask"].as_posix())
    sub-01/ses-02/anat/sub-01_ses-02_acq-sag_desc-lesion_mask.nii.gz
    >>> print(files["slab1"].name)
    sub-01_ses-02_acq-sag_chunk-2_desc-lesion_mask.nii.gz
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from cordfuse import __version__
from cordfuse.io import atomic_write_text
from cordfuse.ownership import locked
from cordfuse.sequences import parse_bids_name

#: The entities of the fused T2Sag in every derivative name.
FUSED = "acq-sag"
#: What the derivative files hold.
DESC = "desc-lesion"
#: The folder of the per-subject records (cordfuse's bookkeeping, not BIDS).
RECORDS = "logs"
#: The per-dataset summary and its data dictionary.
SUMMARY = "lesions.tsv"
SUMMARY_DICTIONARY = "lesions.json"
#: The dataset name the sidecars' BIDS URIs (``bids:raw:...``) refer to.
RAW = "raw"
#: The dataset-level files of a prediction derivative (the summary is filled subject by subject).
DATASET_FILES = ("dataset_description.json", "README", ".bidsignore", SUMMARY, SUMMARY_DICTIONARY)

#: bids-validator 1.x knows the names of raw datasets only: the derivative files, the summary,
#: the records and the figures are listed here so that it checks the rest.
BIDSIGNORE = f"""\
*_{DESC}_*
/{SUMMARY}
/{SUMMARY_DICTIONARY}
/{RECORDS}/
figures/
"""

README = f"""\
MS lesion masks predicted by cordfuse {__version__} (cordfuse predict), a BIDS derivative
dataset of the raw dataset its DatasetLinks name "raw".

sub-XX/[ses-YY/]anat/*_acq-sag_{DESC}_mask.nii.gz: the lesion mask on the fused sagittal T2 grid
(the T2Sag slabs registered and fused), *_{DESC}_probseg.nii.gz its probabilities,
*_chunk-N_{DESC}_mask.nii.gz the mask on each slab's grid, *_{DESC}_stats.tsv one row per lesion.
Each file's JSON sidecar names its sources, the threshold, the models and the sequences used.
{SUMMARY}: lesion count and total volume per subject and session. sub-XX/figures: QC pictures.
{RECORDS}/: what each subject was predicted with (cordfuse reruns skip finished subjects).
"""


def split_name(name: str) -> tuple[str, str | None]:
    """A subject's name split into its subject and session (``Subject.name``'s inverse).

    Args:
        name: ``sub-XX`` or ``sub-XX_ses-YY``.

    Returns:
        ``(sub-XX, ses-YY or None)``.

    Example:
        >>> split_name("sub-01_ses-02"), split_name("sub-01")
        (('sub-01', 'ses-02'), ('sub-01', None))
    """
    subject, found, session = name.partition("_ses-")
    return subject, f"ses-{session}" if found else None


def anat_folder(name: str) -> Path:
    """``sub-XX/[ses-YY/]anat``: where a subject's derivative images go.

    Args:
        name: The subject's name (``sub-XX`` or ``sub-XX_ses-YY``).

    Returns:
        The folder, relative to the derivative dataset.
    """
    subject, session = split_name(name)
    return Path(subject, session, "anat") if session else Path(subject, "anat")


def slab_stem(name: str, slab: str | Path, number: int) -> str:
    """The stem a slab's derivative files start with: the subject, then the slab's own entities
    (its ``chunk-N``, added from ``number`` when its name has none).

    Args:
        name: The subject's name.
        slab: The slab's image file.
        number: The slab's number (:func:`cordfuse.preprocess.pipeline.slab_numbers`).

    Returns:
        The stem, e.g. ``sub-01_acq-sag_chunk-2``.

    Example:
        >>> slab_stem("sub-01", "sub-01_acq-sag_run-1_T2w.nii.gz", 2)
        'sub-01_acq-sag_run-1_chunk-2'
    """
    entities = {
        key: value
        for key, value in parse_bids_name(Path(slab).name).entities.items()
        if value and key not in ("sub", "ses", "desc")
    }
    entities.setdefault("chunk", str(number))
    return "_".join([name, *(f"{key}-{value}" for key, value in entities.items())])


def sidecar(path: Path) -> Path:
    """The JSON sidecar of a NIfTI or TSV file.

    Args:
        path: The file.

    Returns:
        The same name ending in ``.json``.

    Example:
        >>> sidecar(Path("a/sub-01_desc-lesion_mask.nii.gz")).as_posix()
        'a/sub-01_desc-lesion_mask.json'
    """
    stem = path.name.removesuffix(".gz").removesuffix(".nii").removesuffix(".tsv")
    return path.with_name(f"{stem}.json")


def prediction_files(
    name: str,
    slabs: Sequence[str | Path],
    numbers: Sequence[int],
    *,
    bids: bool,
    per_slab: bool,
    save_probabilities: bool,
    qc: bool,
) -> dict[str, Path]:
    """The files ``predict`` writes for one subject, by kind (see the module docstring).

    Args:
        name: The subject's name (``sub-XX`` or ``sub-XX_ses-YY``; any name for explicit files).
        slabs: Its T2Sag slab files, superior first.
        numbers: The slabs' numbers (:func:`cordfuse.preprocess.pipeline.slab_numbers`).
        bids: The derivative layout (BIDS input); else the simple one.
        per_slab: Also one mask per slab (in the derivative layout only for a T2Sag of several
            slabs: one slab's grid is the fused grid, and its mask the fused mask).
        save_probabilities: Also the probability map.
        qc: Also the QC picture.

    Returns:
        ``mask``, ``table`` and with the options ``prob``, ``qc``, ``slab<k>`` (k from 0, superior
        first); in the derivative layout also ``<kind>.json``, each image's and the table's
        sidecar. Paths relative to the output folder, the mask first.
    """
    if not bids:
        files = {"mask": Path(f"{name}_lesion.nii.gz")}
        if save_probabilities:
            files["prob"] = Path(f"{name}_lesion_prob.nii.gz")
        files["table"] = Path(f"{name}_lesions.csv")
        if qc:
            files["qc"] = Path(f"{name}_qc.png")
        if per_slab:  # named by the user's slab numbers (the BIDS chunk), as restore --slab takes
            for k, number in enumerate(numbers):
                files[f"slab{k}"] = Path(f"{name}_slab-{number}_lesion.nii.gz")
        return files
    anat, prefix = anat_folder(name), f"{name}_{FUSED}_{DESC}"
    files = {"mask": anat / f"{prefix}_mask.nii.gz"}
    if save_probabilities:
        files["prob"] = anat / f"{prefix}_probseg.nii.gz"
    if per_slab and len(slabs) > 1:
        for k, (slab, number) in enumerate(zip(slabs, numbers, strict=True)):
            files[f"slab{k}"] = anat / f"{slab_stem(name, slab, number)}_{DESC}_mask.nii.gz"
    files["table"] = anat / f"{prefix}_stats.tsv"
    files.update({f"{kind}.json": sidecar(path) for kind, path in list(files.items())})
    if qc:
        files["qc"] = Path(split_name(name)[0], "figures", f"{prefix}_mask.png")
    return files


def record_file(name: str, *, bids: bool) -> Path:
    """The record of a finished subject: the models, options and files it was predicted with,
    written last, so that its presence marks the subject done.

    Args:
        name: The subject's name.
        bids: The derivative layout (records under ``logs/``, which ``.bidsignore`` lists).

    Returns:
        ``[logs/]<subject>_prediction.json``, relative to the output folder.
    """
    record = Path(f"{name}_prediction.json")
    return RECORDS / record if bids else record


def find_prediction(folder: Path, name: str) -> Path | None:
    """A subject's mask on the fused T2Sag grid in a ``predict`` output of either layout.

    Args:
        folder: The output folder (a derivative dataset, or a flat folder of masks).
        name: The subject's name (``sub-XX`` or ``sub-XX_ses-YY``).

    Returns:
        The mask, or None when the folder has none for the subject.
    """
    for path in (
        folder / anat_folder(name) / f"{name}_{FUSED}_{DESC}_mask.nii.gz",
        folder / f"{name}_lesion.nii.gz",
    ):
        if path.is_file():
            return path
    return None


def find_slab_prediction(folder: Path, name: str, slab: Path, number: int) -> Path | None:
    """A subject's mask on one of its T2Sag slabs (``predict --per-slab``), in either layout.

    Args:
        folder: The output folder.
        name: The subject's name.
        slab: The slab's image file.
        number: The slab's number (its ``chunk``, else its place from the top, from 1).

    Returns:
        The mask, or None.
    """
    for path in (
        folder / anat_folder(name) / f"{slab_stem(name, slab, number)}_{DESC}_mask.nii.gz",
        folder / f"{name}_slab-{number}_lesion.nii.gz",
    ):
        if path.is_file():
            return path
    return None


def derivative_masks(folder: Path) -> dict[str, Path]:
    """Every subject's mask on the fused T2Sag grid in a derivative dataset, by subject name.

    Args:
        folder: A ``predict`` output (a folder of the simple layout gives none).

    Returns:
        ``{sub-XX[_ses-YY]: mask}``.
    """
    masks = {}
    for path in sorted(folder.glob(f"sub-*/**/anat/*_{FUSED}_{DESC}_mask.nii.gz")):
        name = path.name.removesuffix(f"_{FUSED}_{DESC}_mask.nii.gz")
        if path.parent == folder / anat_folder(name):  # a slab's mask carries more entities
            masks[name] = path
    return masks


def data_dictionary(columns: Mapping[str, tuple[str, str]]) -> dict[str, dict[str, str]]:
    """A BIDS data dictionary (a TSV's JSON sidecar) from ``{column: (description, units)}``.

    Args:
        columns: Each column's description and units (empty: none).

    Returns:
        ``{column: {"Description": ..., "Units": ...}}``, units only where there are some.

    Example:
        >>> data_dictionary({"volume": ("lesion volume", "mm^3"), "n": ("how many", "")})["volume"]
        {'Description': 'lesion volume', 'Units': 'mm^3'}
    """
    return {
        column: {"Description": description, **({"Units": units} if units else {})}
        for column, (description, units) in columns.items()
    }


def tsv_text(columns: Sequence[str], rows: Sequence[Mapping]) -> str:
    """A BIDS TSV: a header, tab-separated rows, ``n/a`` for a missing value.

    Args:
        columns: The columns, in order.
        rows: The rows.

    Returns:
        The text.

    Example:
        >>> [line.split() for line in tsv_text(["a", "b"], [{"a": 1, "b": None}]).splitlines()]
        [['a', 'b'], ['1', 'n/a']]
    """
    lines = ["\t".join(columns)]
    for row in rows:
        values = (row.get(column) for column in columns)
        lines.append("\t".join("n/a" if v is None or v == "" else str(v) for v in values))
    return "\n".join(lines) + "\n"


def json_text(document: object) -> str:
    """JSON as every derivative file holds it: indented, one final newline.

    Args:
        document: The JSON document.

    Returns:
        The text.
    """
    return json.dumps(document, indent=2) + "\n"


def bids_uri(path: str | Path, root: Path) -> str:
    """A raw input file as a BIDS URI (``bids:raw:sub-01/anat/...``), or a ``file:`` URI when
    it lies outside the raw dataset.

    Args:
        path: The file.
        root: The raw BIDS dataset.

    Returns:
        The URI.
    """
    path = Path(path).resolve()
    try:
        return f"bids:{RAW}:{path.relative_to(root.resolve()).as_posix()}"
    except ValueError:
        return path.as_uri()


def dataset_description(source: Path, models: list[dict]) -> dict:
    """The ``dataset_description.json`` of a prediction derivative.

    Args:
        source: The raw BIDS dataset predicted.
        models: The models' identity (:func:`cordfuse.inference.model_identity`).

    Returns:
        The document: ``DatasetType`` derivative, ``GeneratedBy`` cordfuse with its version and
        models, the raw dataset as ``SourceDatasets`` and as the ``raw`` of ``DatasetLinks``.
    """
    uri = source.resolve().as_uri()
    return {
        "Name": "cordfuse lesion predictions",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [
            {
                "Name": "cordfuse",
                "Version": __version__,
                "Description": "cordfuse predict: MS lesion masks on the fused sagittal T2 grid",
                "Models": models,
            }
        ],
        "SourceDatasets": [{"URL": uri}],
        "DatasetLinks": {RAW: uri},
    }


def write_dataset_files(
    out: Path, source: Path, models: list[dict], summary_columns: Mapping[str, tuple[str, str]]
) -> None:
    """The dataset-level files of a prediction derivative (:data:`DATASET_FILES`): its
    description, README, ``.bidsignore`` and the summary's data dictionary.

    Args:
        out: The output folder.
        source: The raw BIDS dataset predicted.
        models: The models' identity.
        summary_columns: The summary's columns: ``(description, units)`` each.
    """
    files = {
        "dataset_description.json": json_text(dataset_description(source, models)),
        "README": README,
        ".bidsignore": BIDSIGNORE,
        SUMMARY_DICTIONARY: json_text(data_dictionary(summary_columns)),
    }
    for name, text in files.items():
        atomic_write_text(out / name, text)


def update_summary(out: Path, columns: Sequence[str], row: Mapping) -> None:
    """Put a subject's row into the dataset summary (replacing its earlier one), under a lock:
    several processes (``--jobs``, cluster jobs) may finish subjects at once.

    Args:
        out: The output folder.
        columns: The summary's columns (the first two name the subject and session).
        row: The subject's row.
    """
    path = out / SUMMARY
    key = [str(row[column]) for column in columns[:2]]
    with locked(out):
        rows: list[Mapping] = []
        if path.is_file():
            with path.open(newline="") as handle:
                rows = list(csv.DictReader(handle, delimiter="\t"))
        rows = [r for r in rows if [r.get(column) for column in columns[:2]] != key] + [row]
        rows.sort(key=lambda r: [str(r[column]) for column in columns[:2]])
        atomic_write_text(path, tsv_text(columns, rows))
