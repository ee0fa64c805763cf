"""``cordfuse report RUN_DIR``: one self-contained HTML page for a demo or a study folder.

Every picture is embedded (base64 PNG), so ``report.html`` opens in any browser with no server
and can be mailed as one file. The results come first, the subject by subject detail after them.
Sections (HTML ids in brackets):

* **overview** [``overview``]: what ran, when, how long;
* **metrics** [``tables``]: Table 1 (model x sequences at inference) and Table 2 (T2Sag only,
  Wilcoxon marks), from ``per_image.csv``;
* **what the extra sequences add** [``extra``]: lesion by lesion, from ``per_lesion.csv``: each
  multi-sequence model with every sequence against the best T2Sag-only answer, then each model
  with more sequences against itself with T2Sag alone;
* **box plots** [``boxplots``]: per-image F1 and Dice per cohort;
* **dataset** [``availability``]: counts of each sequence per cohort, subjects that failed
  pre-processing, and, folded (``<details>``), which sequences each subject has with its role
  (train/validation/test) and cohort;
* **per-subject QC** [``qc``]: for every test subject, the sagittal T2Sag with the ground truth
  (green) and prediction outlines, and the straightened crops of every sequence;
* **training curves** [``curves``]: loss and validation Dice of every trained model;
* **configuration and versions** [``configuration``]: the run's settings, each model's training
  configuration, the pre-processing configuration and the package versions used.

The run folder describes itself in ``cordfuse_run.json`` (written by ``demo`` and ``study``).
"""

from __future__ import annotations

import base64
import datetime
import json
import platform
import sys
from html import escape
from pathlib import Path

import numpy as np

from cordfuse.errors import CordfuseError
from cordfuse.io import atomic_write_text
from cordfuse.sequences import SEQUENCES
from cordfuse.training import describe_validation

MANIFEST = "cordfuse_run.json"
REPORT = "report.html"
#: Marks a file as a cordfuse report: the only kind of existing file ``report`` replaces.
GENERATOR_META = '<meta name="generator" content="cordfuse report">'
PACKAGES = (
    "cordfuse",
    "torch",
    "numpy",
    "scipy",
    "nibabel",
    "SimpleITK",
    "dynamic_network_architectures",
    "connected-components-3d",
    "matplotlib",
)
PREDICTION_COLOURS = ("red", "orange", "deepskyblue", "magenta")


def versions() -> dict[str, str]:
    """The software a run was made with, for its reproduction.

    Returns:
        Python, the platform and the version of every package cordfuse depends on.
    """
    from importlib import metadata

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_manifest(
    out: Path,
    *,
    kind: str,
    data: Path,
    settings: dict,
    experiments: list[str],
    labels: dict[str, str],
    inferences: list[str],
    qc_predictions: list[tuple[str, str]],
    minutes: float,
) -> Path:
    """Describe a finished run for :func:`write_report` (paths relative to ``out``).

    Args:
        out: The run folder.
        kind: ``study`` or ``demo``.
        data: The BIDS dataset the run was made from.
        settings: The run's settings (shown in the report's configuration).
        experiments: The experiments, in table order.
        labels: Display name of each experiment.
        inferences: The inference columns (sequence sets), in table order.
        qc_predictions: ``(caption, folder)`` of the predictions outlined in the QC pictures.
        minutes: How long the run took.

    Returns:
        The manifest's path (``cordfuse_run.json``).
    """
    document = {
        "kind": kind,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": str(Path(data).resolve()),
        "minutes": round(minutes, 2),
        "settings": settings,
        "experiments": experiments,
        "labels": labels,
        "inferences": inferences,
        "qc_predictions": [list(p) for p in qc_predictions],
        "versions": versions(),
    }
    path = Path(out) / MANIFEST
    atomic_write_text(path, json.dumps(document, indent=2, default=str) + "\n")
    return path


# -- pictures ------------------------------------------------------------------------------------


def _img(data: bytes, alt: str, css: str = "") -> str:
    encoded = base64.b64encode(data).decode()
    return f'<img class="{css}" alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def subject_qc_png(
    prepared,
    image: np.ndarray,
    affine: np.ndarray,
    truth: np.ndarray | None,
    predictions: list[tuple[str, np.ndarray]],
) -> bytes:
    """Sagittal T2Sag (native) with outlines, then the straightened crop of every sequence.

    Args:
        prepared: The prepared subject (its crops).
        image: The fused native T2Sag.
        affine: Its affine.
        truth: The ground truth on that grid, if any.
        predictions: ``(caption, mask)`` of each prediction to outline, on that grid.

    Returns:
        The PNG.
    """
    from matplotlib.lines import Line2D

    from cordfuse.figures import png_bytes, pyplot
    from cordfuse.io import voxel_sizes
    from cordfuse.qc import busiest_slice, canonical, draw_image, draw_outline, view

    plt = pyplot()
    data, canon_affine = canonical(np.asarray(image, np.float32), affine)
    spacing = voxel_sizes(canon_affine)
    layers = ([("ground truth", truth, "lime")] if truth is not None else []) + [
        (label, mask, PREDICTION_COLOURS[k % len(PREDICTION_COLOURS)])
        for k, (label, mask) in enumerate(predictions)
    ]
    outlines = [
        (label, canonical(np.asarray(volume, np.float32), affine)[0], colour)
        for label, volume, colour in layers
    ]
    x = busiest_slice(sum((o[1] for o in outlines), np.zeros(data.shape, np.float32)))
    seqs = prepared.sequences
    fig, axes = plt.subplots(
        1,
        1 + len(seqs),
        figsize=(3.2 + 1.3 * len(seqs), 6.5),
        facecolor="black",
        squeeze=False,
        gridspec_kw={"width_ratios": [3] + [1] * len(seqs)},
    )
    ax = axes[0, 0]
    shown, aspect = view(data, spacing, "sagittal", x)
    draw_image(ax, shown, aspect=aspect)
    handles = []
    for label, volume, colour in outlines:
        draw_outline(ax, view(volume, spacing, "sagittal", x)[0], colour)
        handles.append(Line2D([], [], color=colour, label=f"{label} ({int(volume.sum())} vox)"))
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=6, framealpha=0.6)
    ax.set_title(f"{prepared.subject}: T2Sag, sagittal x={x}", color="white", fontsize=8)
    c = int(round(prepared.geometry.centre_index))
    for ax, seq in zip(axes[0, 1:], seqs, strict=True):
        draw_image(ax, prepared.images[seq][c].T, aspect="auto")
        if prepared.label is not None:
            draw_outline(ax, prepared.label[c].T, "lime", linewidth=0.6)
        ax.set_title(f"{seq}\nstraightened", color="white", fontsize=7)
    fig.tight_layout()
    return png_bytes(fig, dpi=90)


# -- sections --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def derivative_section(run: Path) -> str:
    """The demo's hand-on step: the exported model zip (name, SHA-256, card) and the BIDS
    derivative dataset its predictions went to (who made it, and each subject's lesion count and
    volume from its ``lesions.tsv``), with links to open both.

    Args:
        run: The run folder.

    Returns:
        The HTML, or a line saying this run has none.
    """
    import csv

    from cordfuse.derivatives import SUMMARY

    derivative = run / "derivative"
    description = derivative / "dataset_description.json"
    if not description.exists():
        return "<p>Not in this folder (the demo writes it; <code>cordfuse predict</code> on a "
        "BIDS dataset makes one).</p>"
    document = json.loads(description.read_text())
    tool = (document.get("GeneratedBy") or [{}])[0]
    models = tool.get("Models") or []
    parts = []
    for zip_path in sorted(run.glob("*.zip")):
        parts.append(
            f'<p>Model: <a href="{escape(zip_path.name)}"><code>{escape(zip_path.name)}</code></a>'
            " (<code>cordfuse model install</code> it, or give it to <code>cordfuse predict -m"
            "</code>); its card is <code>MODEL.md</code> inside.</p>"
        )
    # a packaged model is named with its SHA-256, a training folder by its checkpoint
    named = ", ".join(
        escape(
            f"{m['model']} (SHA-256 {m['sha256'][:12]})"
            if "sha256" in m
            else str(m.get("checkpoint", m))
        )
        for m in models
    )
    parts.append(
        f'<p>Predictions: <a href="derivative/"><code>derivative/</code></a>, a BIDS derivative '
        f"dataset ({escape(str(document.get('DatasetType', '')))}) generated by "
        f"{escape(str(tool.get('Name', '')))} {escape(str(tool.get('Version', '')))}"
        + (f" with {named}" if named else "")
        + ": <code>sub-XX/anat/sub-XX_acq-sag_desc-lesion_mask.nii.gz</code> per subject, "
        "a JSON sidecar per file, the lesion statistics as TSV.</p>"
    )
    summary = derivative / SUMMARY
    if summary.exists():
        rows = list(csv.DictReader(summary.read_text().splitlines(), delimiter="\t"))
        if rows:
            header = list(rows[0])
            parts.append(_table(header, [[escape(r[h]) for h in header] for r in rows]))
    return "".join(parts)


def availability_section(document: dict, fold: dict | None) -> str:
    """The counts per cohort, then the subjects x sequences matrix with each subject's role,
    folded (one row per subject: a long table for a study).

    Args:
        document: The prepared dataset's ``dataset.json``.
        fold: The run's ``fold.json`` (None: no roles).

    Returns:
        The section's HTML.
    """
    roles = {}
    for role in ("train", "val", "test"):
        for subject in (fold or {}).get(role, []):
            roles[subject] = {"val": "validation"}.get(role, role)
    rows = []
    for s in document["subjects"]:
        cells = [escape(s["id"]), escape(s["cohort"] or "-"), escape(roles.get(s["id"], "-"))]
        fallbacks = s.get("centerline_fallbacks", {})
        cells += [_available_cell(seq, s["sequences"], fallbacks) for seq in SEQUENCES]
        rows.append(cells)
    matrix = _table(["subject", "cohort", "role", *SEQUENCES], rows, "availability")
    cohorts = sorted({s["cohort"] or "-" for s in document["subjects"]})
    counts = []
    for cohort in cohorts:
        members = [s for s in document["subjects"] if (s["cohort"] or "-") == cohort]
        counts.append(
            [escape(cohort), str(len(members))]
            + [str(sum(seq in s["sequences"] for s in members)) for seq in SEQUENCES]
        )
    summary = _table(["cohort", "subjects", *SEQUENCES], counts, "counts")
    failed = "".join(
        f"<li>{escape(f['id'])}: {escape(f['reason'])}</li>" for f in document.get("failed", [])
    )
    failed = f"<p>Failed pre-processing:</p><ul>{failed}</ul>" if failed else ""
    fallbacks = "".join(
        f"<li>{escape(s['id'])} {escape(seq)}: {escape(reason)}</li>"
        for s in document["subjects"]
        for seq, reason in s.get("centerline_fallbacks", {}).items()
    )
    if fallbacks:
        fallbacks = (
            '<p>Centreline fallbacks (<span class="fallback">&#10003;*</span>: the '
            "sequence's own centreline was missing, too short or implausible, and the "
            "T2Sag centreline refined in its image was used):</p>"
            f"<ul>{fallbacks}</ul>"
        )
    matrix = (
        f"<details><summary>Every subject: its sequences, cohort and role "
        f"({len(document['subjects'])} subjects)</summary>{matrix}</details>"
    )
    return summary + failed + fallbacks + matrix


def _available_cell(seq: str, sequences: list[str], fallbacks: dict[str, str]) -> str:
    if seq not in sequences:
        return ""
    if seq in fallbacks:
        return f'<span class="fallback" title="{escape(fallbacks[seq])}">&#10003;*</span>'
    return '<span class="yes">&#10003;</span>'


def tables_section(records: list, manifest: dict) -> str:
    """Tables 1 and 2 (pooled and per cohort) of the run.

    Args:
        records: The per-image metrics (``per_image.csv``).
        manifest: The run's manifest (experiments, labels, inferences).

    Returns:
        The section's HTML.
    """
    from cordfuse.evaluation.tables import table1, table2, table2_per_cohort

    if not records:
        return "<p>No evaluated prediction in this run.</p>"
    labels, order = manifest["labels"], manifest["experiments"]
    reference = "baseline" if "baseline" in order else order[0]
    t1 = table1(records, experiments=order, labels=labels, inferences=manifest["inferences"])
    t2 = table2(records, reference=reference, experiments=order, labels=labels)
    t2c = table2_per_cohort(records, reference=reference, experiments=order, labels=labels)
    return t1.to_html() + t2.to_html() + t2c.to_html()


def extra_sequences_section(run: Path, manifest: dict, records: list) -> str:
    """Lesion by lesion, what the sequences beyond T2Sag add (from ``per_lesion.csv``): each
    multi-sequence model with every sequence against the best T2Sag-only answer (what a user
    gets), then each model against itself with T2Sag alone.

    Args:
        run: The run folder.
        manifest: The run's manifest (experiments, labels).
        records: The run's per-image records (the product comparison's F1 and Dice).

    Returns:
        The section's HTML.
    """
    from cordfuse.evaluation.lesions import extra_sequences_tables, product_table, rows_from_csv

    path = run / "per_lesion.csv"
    if not path.exists():
        return "<p>No per-lesion results in this run (per_lesion.csv).</p>"
    rows = rows_from_csv(path.read_text())
    experiments, labels = manifest["experiments"], manifest["labels"]
    summary, changed = extra_sequences_tables(rows, experiments=experiments, labels=labels)
    if not summary.rows:
        return (
            "<p>No model here was run with more sequences than T2Sag on a test subject "
            "that has them.</p>"
        )
    product = product_table(rows, records, experiments=experiments, labels=labels).to_html()
    if not changed.rows:
        return (
            product
            + summary.to_html()
            + "<p>No lesion's detection changes with the extra sequences."
        )
    return product + summary.to_html() + changed.to_html()


def boxplots_section(records: list, manifest: dict) -> str:
    """One box-plot picture per cohort: per-image F1 and Dice of every model and inference.

    Args:
        records: The per-image metrics.
        manifest: The run's manifest (experiments, labels, inferences).

    Returns:
        The section's HTML.
    """
    from cordfuse.evaluation.tables import boxplot_png

    if not records:
        return "<p>No evaluated prediction in this run.</p>"
    present = {(r.experiment, r.inference) for r in records}
    rows = [
        (e, i) for e in manifest["experiments"] for i in manifest["inferences"] if (e, i) in present
    ]
    return "".join(
        _img(
            boxplot_png(records, cohort, rows, manifest["labels"]),
            f"box plots, cohort {cohort}",
            "wide",
        )
        for cohort in sorted({r.cohort for r in records})
    )


def qc_section(run: Path, manifest: dict, fold: dict | None) -> str:
    """One QC picture per test subject: ground truth and predictions on the native T2Sag, and
    the straightened crops (read from the prepared subjects, never the raw scans).

    Args:
        run: The run folder.
        manifest: The run's manifest (which predictions to outline).
        fold: The run's ``fold.json`` (its test subjects).

    Returns:
        The section's HTML.
    """
    from cordfuse.derivatives import find_prediction
    from cordfuse.io import read_volume
    from cordfuse.preprocess.pipeline import PreparedSubject

    test = set((fold or {}).get("test", []))
    if not test:
        return "<p>No test subject in this run.</p>"
    blocks = []
    for name in sorted(test):
        path = run / "prepared" / name
        if not (path / "prepared.npz").exists():
            continue
        # the prepared subject holds the native T2Sag and ground truth: no raw scan is read
        prepared = PreparedSubject.load(path, native=True)
        native = prepared.native
        if native is None:  # load(native=True) reads it or raises: never here
            continue
        image, affine, truth = native.image, native.affine, native.lesion
        predictions = []
        for label, folder in manifest["qc_predictions"]:
            mask_path = find_prediction(run / folder, prepared.subject)  # either predict layout
            if mask_path is not None:
                predictions.append((label, read_volume(mask_path)[0]))
        picture = subject_qc_png(prepared, image, affine, truth, predictions)
        blocks.append(
            f'<figure class="qc" id="qc-{escape(name)}">'
            f"{_img(picture, f'QC of {name}', 'qc')}"
            f"<figcaption>{escape(name)} (cohort {escape(prepared.cohort or '-')}, "
            f"{', '.join(prepared.sequences)})</figcaption></figure>"
        )
    return "".join(blocks) or "<p>No prepared test subject found.</p>"


def _run_folders(run: Path) -> list[Path]:
    """Every training folder in the run (a folder with ``log.jsonl``; the run itself for the
    output of ``cordfuse train``)."""
    return sorted(p.parent for p in run.glob("**/log.jsonl"))


def _run_name(run: Path, folder: Path) -> str:
    name = str(folder.relative_to(run))
    return name.removeprefix("runs/") if name != "." else run.resolve().name


def curves_section(run: Path) -> str:
    """The training curves of every training folder of the run, with its best validation.

    Args:
        run: The run folder (or one training folder).

    Returns:
        The section's HTML.
    """
    blocks = []
    for folder in _run_folders(run):
        name = _run_name(run, folder)
        summary = {}
        if (folder / "summary.json").exists():
            summary = json.loads((folder / "summary.json").read_text())
        caption = escape(name)
        if summary:
            caption += (
                f": {describe_validation(summary)}, "
                f"{summary['epochs']} epochs in {summary['seconds']:.0f} s"
            )
        picture = (
            _img((folder / "curves.png").read_bytes(), f"training curves of {name}", "curve")
            if (folder / "curves.png").exists()
            else ""
        )
        blocks.append(f'<figure class="curve">{picture}<figcaption>{caption}</figcaption></figure>')
    return "".join(blocks) or "<p>No training in this run.</p>"


def _pre(data) -> str:
    text = data if isinstance(data, str) else json.dumps(data, indent=2, default=str)
    return f"<pre>{escape(text)}</pre>"


def configuration_section(run: Path, manifest: dict, document: dict | None) -> str:
    """Everything needed to reproduce the run: its settings and study file, the pre-processing
    and every training configuration, and the software versions.

    Args:
        run: The run folder.
        manifest: The run's manifest.
        document: The prepared dataset's ``dataset.json``, if any.

    Returns:
        The section's HTML.
    """
    parts = ["<h3>Run settings</h3>", _pre(manifest["settings"])] if manifest["settings"] else []
    for name in ("study.yaml", "study.yml", "study.json"):
        if (run / name).exists():
            parts += [f"<h3>{escape(name)}</h3>", _pre((run / name).read_text())]
    if document:
        parts += ["<h3>Pre-processing</h3>", _pre(document.get("config", {}))]
    for folder in _run_folders(run):
        summary_path = folder / "summary.json"
        if summary_path.exists():
            config = json.loads(summary_path.read_text()).get("config")
            if config:
                parts += [f"<h3>Training: {escape(_run_name(run, folder))}</h3>", _pre(config)]
    rows = [[escape(k), escape(str(v))] for k, v in manifest["versions"].items()]
    when = (
        "used by the run"
        if manifest["kind"] != "folder"
        else "of this report (the run recorded none)"
    )
    parts += [f"<h3>Versions {when}</h3>", _table(["package", "version"], rows, "versions")]
    return "".join(parts)


def _default_manifest(run: Path, records) -> dict:
    """What a folder without ``cordfuse_run.json`` (e.g. a ``cordfuse train`` output) implies."""
    experiments = list(dict.fromkeys(r.experiment for r in records))
    inferences = list(dict.fromkeys(r.inference for r in records))
    created = datetime.datetime.fromtimestamp(run.stat().st_mtime).isoformat(timespec="seconds")
    return {
        "kind": "folder",
        "created": created,
        "data": "",
        "minutes": None,
        "settings": {},
        "experiments": experiments,
        "labels": {},
        "inferences": inferences,
        "qc_predictions": [],
        "versions": versions(),
    }


STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222}
header{background:#1d3557;color:#fff;padding:12px 24px}
nav a{color:#fff;margin-right:14px;font-size:14px}
main{padding:0 24px 40px}
section{margin-top:28px}
table{border-collapse:collapse;margin:10px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{font-weight:600;text-align:left;padding:4px 0}
.yes{color:#2a9d8f;font-weight:700}
.fallback{color:#e76f51;font-weight:700}
.note{font-size:12px;color:#555}
img.wide{max-width:100%}
figure.qc,figure.curve{display:inline-block;margin:8px;vertical-align:top}
img.qc{height:420px}
img.curve{height:260px}
pre{background:#f5f5f5;padding:8px;font-size:12px;overflow-x:auto}
summary{cursor:pointer;margin:10px 0}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + images.length);
});
"""

#: The report's sections in order: the results first, the detail of every subject after them.
SECTIONS = (
    ("overview", "Overview"),
    ("tables", "Metrics"),
    ("extra", "What the extra sequences add"),
    ("boxplots", "Box plots"),
    ("derivative", "The model handed on, and its predictions as a BIDS derivative"),
    ("availability", "Dataset"),
    ("qc", "Per-subject QC"),
    ("curves", "Training curves"),
    ("configuration", "Configuration and versions"),
)


def build_report(run_dir: str | Path, progress=None) -> str:
    """The HTML text of the report of one run folder (demo, study, or a training folder).

    Args:
        run_dir: The run folder.
        progress: Called with each section's title as it is built (None: silent).

    Returns:
        The self-contained HTML.

    Raises:
        CordfuseError: No such folder, an unreadable manifest, or nothing to report.
    """
    from cordfuse.evaluation.tables import records_from_csv

    run = Path(run_dir)
    if not run.is_dir():
        raise CordfuseError(f"{run}: no such folder")
    records = (
        records_from_csv((run / "per_image.csv").read_text())
        if (run / "per_image.csv").exists()
        else []
    )
    if (run / MANIFEST).exists():
        try:
            manifest = json.loads((run / MANIFEST).read_text())
        except ValueError as exc:
            raise CordfuseError(f"{run / MANIFEST}: unreadable ({exc})") from exc
    elif records or _run_folders(run) or (run / "prepared" / "dataset.json").exists():
        manifest = _default_manifest(run, records)
    else:
        raise CordfuseError(
            f"{run}: not a cordfuse run folder (no {MANIFEST}, training log, "
            "prepared dataset or per_image.csv); give the folder of cordfuse "
            "demo, study or train"
        )
    document = None
    if (run / "prepared" / "dataset.json").exists():
        try:
            document = json.loads((run / "prepared" / "dataset.json").read_text())
        except ValueError as exc:
            raise CordfuseError(f"{run}/prepared/dataset.json: unreadable ({exc})") from exc
    fold = json.loads((run / "fold.json").read_text()) if (run / "fold.json").exists() else None
    minutes = manifest.get("minutes")
    overview = (
        f"<p>cordfuse {escape(manifest['kind'])} run of {escape(manifest['created'])}"
        + (f", {minutes:.1f} min" if minutes is not None else "")
        + ". "
        + (f"Data: <code>{escape(manifest['data'])}</code>. " if manifest["data"] else "")
        + (f"{len(document['subjects'])} subjects prepared." if document else "")
        + "</p><p>Results on synthetic data check the pipeline; they are not a clinical "
        "validation.</p>"
    )
    absent = "<p>Not in this folder.</p>"
    builders = {
        "overview": lambda: overview,
        "availability": lambda: availability_section(document, fold) if document else absent,
        "tables": lambda: tables_section(records, manifest),
        "extra": lambda: extra_sequences_section(run, manifest, records),
        "boxplots": lambda: boxplots_section(records, manifest),
        "derivative": lambda: derivative_section(run),
        "qc": lambda: qc_section(run, manifest, fold) if document else absent,
        "curves": lambda: curves_section(run),
        "configuration": lambda: configuration_section(run, manifest, document),
    }
    body = []
    for key, title in SECTIONS:
        if progress:
            progress(title)
        body.append(f'<section id="{key}"><h2>{escape(title)}</h2>{builders[key]()}</section>')
    nav = "".join(f'<a href="#{k}">{escape(t)}</a>' for k, t in SECTIONS)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"{GENERATOR_META}"
        f"<title>cordfuse report: {escape(run.resolve().name)}</title>"
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>"
        f"<header><h1>cordfuse report</h1><nav>{nav}</nav></header>"
        f"<main>{''.join(body)}</main></body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, progress=None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``RUN_DIR/report.html``).

    Args:
        run_dir: A demo, study or training folder.
        out: The HTML file; an existing file is replaced only when it is a cordfuse report.
        progress: Called with each section's title as it is built.

    Returns:
        The path written.

    Raises:
        CordfuseError: not a run folder, or ``out`` is a file cordfuse did not write.
    """
    path = Path(out) if out else Path(run_dir) / REPORT
    if path.is_dir():
        raise CordfuseError(f"{path}: is a folder; give the report's file name")
    if path.exists():
        with open(path, "rb") as handle:
            head = handle.read(1024)
        if GENERATOR_META.encode() not in head:
            raise CordfuseError(
                f"{path}: exists and is not a cordfuse report; refusing to "
                "overwrite it (choose another -o)"
            )
    atomic_write_text(path, build_report(run_dir, progress))
    return path
