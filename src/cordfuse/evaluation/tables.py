"""The paper's Tables 1 and 2 from per-image results, as Markdown, CSV and LaTeX, and box plots.

The input is a list of :class:`Record`: one image, evaluated for one model (``experiment``),
one training seed and one set of sequences at inference (``inference``).

* **Table 1** (model x sequences at inference): one row per ``(experiment, inference)`` pair that
  occurs; columns lesion-wise F1 and Dice per test cohort. A cell is the mean over seeds of the
  per-seed cohort mean; blank where no image of that cohort was evaluated with that combination;
  the best value of each column is bold.
* **Table 2** (T2Sag-only inference), as the paper: every test cohort pooled, one lesion-wise F1
  and one Dice per model, ``mean ± std`` over seeds of the per-seed mean over images (sample
  std), with the Wilcoxon signed-rank mark against the reference model (``*`` p < 0.1, ``**``
  p < 0.05). The test has one pair per test image, each side the image's value averaged over
  seeds: seeds are repeated trainings on the same images, not more images. Images where either
  value is undefined (NaN) are left out. :func:`table2_per_cohort` is the same per cohort.

No torch import: tables can be rebuilt anywhere from the study's ``per_image.csv``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from cordfuse.evaluation.stats import significance_mark, summarise, wilcoxon_vs_reference

T2SAG_ONLY = "T2Sag"
#: The row label of a prediction with every sequence the test subject has (here, not in
#: :mod:`cordfuse.study.grid`, so that the product comparison of
#: :mod:`cordfuse.evaluation.lesions` needs nothing from the study).
ALL_AVAILABLE = "all available"
TABLE_METRICS = (("lesion_f1", "F1"), ("dice", "Dice"))


@dataclass(frozen=True)
class Record:
    """One image's metrics, for one model, training seed and set of sequences at inference.

    Attributes:
        experiment: The model (a study experiment's name).
        seed: The training seed.
        inference: The sequences given at inference (e.g. ``T2Sag`` or ``T2Sag+STIR``).
        image: The test image (its subject).
        cohort: The subject's cohort.
        values: Each metric (``dice``, ``lesion_f1``, ...); NaN where undefined.
    """

    experiment: str
    seed: int
    inference: str
    image: str
    cohort: str
    values: dict[str, float]


@dataclass
class Cell:
    """A table cell: the number CSV gets and "best" compares, the text shown, bold or not."""

    value: float | None = None  # what CSV gets and what "best" compares
    text: str = ""
    bold: bool = False


@dataclass
class Table:
    """A titled table of label cells (``str``) and numeric :class:`Cell`, with notes under it.

    Example:
        >>> table = Table("Dice", ["model", "Dice"], [["baseline", Cell(0.61, "0.610", True)]])
        >>> print(table.to_markdown(), end="")
        ### Dice
        <BLANKLINE>
        | model | Dice |
        |---|---|
        | baseline | **0.610** |
        >>> print(table.to_csv(), end="")
        model,Dice
        baseline,0.61
    """

    title: str
    header: list[str]
    rows: list[list[Cell | str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    # -- renderers ------------------------------------------------------------------------------

    def to_markdown(self) -> str:
        """The table in Markdown (title as a heading, bold cells in ``**``, notes below).

        Returns:
            The text.
        """

        def show(cell) -> str:
            if isinstance(cell, str):
                return cell
            return f"**{cell.text}**" if cell.bold and cell.text else cell.text

        lines = [
            f"### {self.title}",
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        lines += ["| " + " | ".join(show(c) for c in row) + " |" for row in self.rows]
        lines += [""] + self.notes if self.notes else []
        return "\n".join(lines) + "\n"

    def to_html(self) -> str:
        """The table as an HTML ``<table>`` (title as caption), notes as paragraphs after it.

        Returns:
            The HTML fragment, text escaped.
        """
        from html import escape

        def show(cell, tag="td") -> str:
            if isinstance(cell, str):
                return f"<{tag}>{escape(cell)}</{tag}>"
            text = escape(cell.text)
            return (
                f'<{tag} class="num">'
                + (f"<b>{text}</b>" if cell.bold and text else text)
                + f"</{tag}>"
            )

        head = "".join(f"<th>{escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(show(c) for c in row) + "</tr>" for row in self.rows)
        notes = "".join(f'<p class="note">{escape(n)}</p>' for n in self.notes)
        return (
            f'<table class="metrics"><caption>{escape(self.title)}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{notes}"
        )

    def to_csv(self) -> str:
        """The table as CSV: the header, then numeric cells as their value (6 significant digits).

        Returns:
            The CSV text.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        for row in self.rows:
            writer.writerow(
                [
                    c if isinstance(c, str) else ("" if c.value is None else f"{c.value:.6g}")
                    for c in row
                ]
            )
        return buffer.getvalue()

    def to_latex(self) -> str:
        """The table as a LaTeX ``table`` float (label columns left-aligned, numbers centred).

        Returns:
            The LaTeX source.
        """

        def escape(text: str) -> str:
            for a, b in (
                ("\\", r"\textbackslash{}"),
                ("&", r"\&"),
                ("%", r"\%"),
                ("_", r"\_"),
                ("#", r"\#"),
                ("±", r"$\pm$"),
                ("*", r"$^{*}$"),
            ):
                text = text.replace(a, b)
            return text.replace(r"$^{*}$$^{*}$", r"$^{**}$")

        def show(cell) -> str:
            if isinstance(cell, str):
                return escape(cell)
            text = escape(cell.text)
            return rf"\textbf{{{text}}}" if cell.bold and text else text

        labels = sum(1 for c in self.rows[0] if isinstance(c, str)) if self.rows else 1
        spec = "l" * labels + "c" * (len(self.header) - labels)
        lines = [
            r"\begin{table}",
            r"\centering",
            rf"\caption{{{escape(self.title)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\hline",
            " & ".join(escape(h) for h in self.header) + r" \\",
            r"\hline",
        ]
        lines += [" & ".join(show(c) for c in row) + r" \\" for row in self.rows]
        lines += [r"\hline", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


# -- grouping -----------------------------------------------------------------------------------


def cohorts_of(records: Sequence[Record]) -> list[str]:
    """The cohorts the records cover.

    Args:
        records: Per-image records.

    Returns:
        The cohort names, sorted.
    """
    return sorted({r.cohort for r in records})


def _per_seed_means(records: Sequence[Record], metric: str) -> dict[int, float]:
    """Cohort mean of ``metric`` for each seed (undefined values left out)."""
    by_seed: dict[int, list[float]] = {}
    for r in records:
        by_seed.setdefault(r.seed, []).append(r.values[metric])
    return {seed: summarise(values).mean for seed, values in sorted(by_seed.items())}


def _select(records, experiment, inference, cohort) -> list[Record]:
    return [
        r
        for r in records
        if r.experiment == experiment and r.inference == inference and r.cohort == cohort
    ]


def _columns(cohorts: list[str]) -> list[tuple[str, str, str]]:
    """``(metric key, header, cohort)`` for each numeric column: F1 per cohort, then Dice."""
    return [(key, f"{name} {c}", c) for key, name in TABLE_METRICS for c in cohorts]


def _mark_best(rows: list[list[Cell | str]], first: int) -> None:
    """Bold the highest value of each numeric column (ties all bold)."""
    if not rows:
        return
    for j in range(first, len(rows[0])):
        numeric: list[tuple[Cell, float]] = []
        for row in rows:
            cell = row[j]
            if isinstance(cell, Cell) and cell.value is not None and not math.isnan(cell.value):
                numeric.append((cell, cell.value))
        if not numeric:
            continue
        best = max(value for _, value in numeric)
        for cell, value in numeric:
            if math.isclose(value, best, abs_tol=1e-12):
                cell.bold = True


def _order(
    records: Sequence[Record], experiments: Sequence[str] | None, inferences: Sequence[str] | None
) -> list[tuple[str, str]]:
    present = {(r.experiment, r.inference) for r in records}
    exp_order = list(experiments or sorted({e for e, _ in present}))
    inf_order = list(inferences or [])

    def key(pair):
        e, i = pair
        return (
            exp_order.index(e) if e in exp_order else len(exp_order),
            inf_order.index(i) if i in inf_order else len(inf_order),
            i,
        )

    return sorted(present, key=key)


def table1(
    records: Sequence[Record],
    *,
    experiments: Sequence[str] | None = None,
    inferences: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
    cohorts: Sequence[str] | None = None,
) -> Table:
    """Table 1: every (model, sequences at inference) pair, F1 and Dice per cohort.

    Args:
        records: Per-image records of every model, seed and inference set.
        experiments: The models in row order (default: sorted by name).
        inferences: The inference sets in row order within a model (default: by name).
        labels: Each experiment's display name.
        cohorts: The cohort columns (default: every cohort of ``records``).

    Returns:
        The table, best of each column in bold.
    """
    labels = labels or {}
    cohorts = list(cohorts or cohorts_of(records))
    columns = _columns(cohorts)
    table = Table(
        "Table 1: lesion-wise F1 and Dice per test cohort (mean over images; mean over seeds)",
        ["model", "sequences at inference", *[h for _, h, _ in columns]],
    )
    for experiment, inference in _order(records, experiments, inferences):
        row: list[Cell | str] = [labels.get(experiment, experiment), inference]
        for metric, _, cohort in columns:
            chosen = _select(records, experiment, inference, cohort)
            if not chosen:
                row.append(Cell())
                continue
            means = [v for v in _per_seed_means(chosen, metric).values() if not math.isnan(v)]
            if not means:
                row.append(Cell(None, "n/a"))
                continue
            value = float(np.mean(means))
            row.append(Cell(value, f"{value:.3f}"))
        table.rows.append(row)
    _mark_best(table.rows, 2)
    counts = ", ".join(f"{c} {len({r.image for r in records if r.cohort == c})}" for c in cohorts)
    table.notes = [
        "Blank: no test image of that cohort has that combination of sequences. "
        f"Bold: best in its column. Test images per cohort: {counts}."
    ]
    return table


def table2(
    records: Sequence[Record],
    *,
    reference: str = "baseline",
    experiments: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> Table:
    """Table 2 as the paper reports it: T2Sag-only inference, every test cohort pooled, one
    lesion-wise F1 and one Dice per model (``mean ± std`` over seeds of the per-seed mean over
    images), Wilcoxon marks against ``reference`` with one pair per test image.

    Args:
        records: Per-image records (only T2Sag-only inference is used).
        reference: The experiment the others are tested against.
        experiments: The models in row order (default: sorted by name).
        labels: Each experiment's display name.

    Returns:
        The table.
    """
    return _table2(
        records, reference=reference, experiments=experiments, labels=labels, cohorts=None
    )


def table2_per_cohort(
    records: Sequence[Record],
    *,
    reference: str = "baseline",
    experiments: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
    cohorts: Sequence[str] | None = None,
) -> Table:
    """Table 2 per test cohort (an extra table: the paper pools its cohorts).

    Args:
        records: Per-image records (only T2Sag-only inference is used).
        reference: The experiment the others are tested against.
        experiments: The models in row order (default: sorted by name).
        labels: Each experiment's display name.
        cohorts: The cohort columns (default: every cohort with T2Sag-only records).

    Returns:
        The table.
    """
    only = [r for r in records if r.inference == T2SAG_ONLY]
    return _table2(
        records,
        reference=reference,
        experiments=experiments,
        labels=labels,
        cohorts=list(cohorts or cohorts_of(only)),
    )


def _table2(records, *, reference, experiments, labels, cohorts) -> Table:
    labels = labels or {}
    only = [r for r in records if r.inference == T2SAG_ONLY]
    if cohorts is None:  # pooled: one column per metric over every test image
        only = [replace(r, cohort="all") for r in only]
        columns = [("lesion_f1", "Lesion-wise F1", "all"), ("dice", "Dice", "all")]
        where = "all test cohorts pooled"
    else:
        columns = _columns(list(cohorts))
        where = "per test cohort"
    seeds = sorted({r.seed for r in only})
    table = Table(
        f"Table 2: T2Sag-only inference, {where}, mean ± std over {len(seeds)} seed(s)",
        ["model", *[h for _, h, _ in columns]],
    )
    for experiment, _ in _order(only, experiments, None):
        row: list[Cell | str] = [labels.get(experiment, experiment)]
        for metric, _, cohort in columns:
            chosen = _select(only, experiment, T2SAG_ONLY, cohort)
            means = [v for v in _per_seed_means(chosen, metric).values() if not math.isnan(v)]
            if not means:
                row.append(Cell())
                continue
            mean = float(np.mean(means))
            std = float(np.std(means, ddof=1)) if len(means) > 1 else 0.0
            mark = ""
            if experiment != reference:
                mark = paired_mark(chosen, _select(only, reference, T2SAG_ONLY, cohort), metric)
            row.append(Cell(mean, f"{mean:.3f} ± {std:.3f}{mark}"))
        table.rows.append(row)
    _mark_best(table.rows, 1)
    table.notes = [
        f"Wilcoxon signed-rank test against {labels.get(reference, reference)}, one "
        "pair per test image (the image's metric averaged over seeds): * p < 0.1, "
        "** p < 0.05. Pairing every (seed, image) instead would count each image once "
        "per seed as if seeds were independent images, and overstate significance. "
        "Bold: best mean."
    ]
    return table


def paired_mark(records: Sequence[Record], reference: Sequence[Record], metric: str) -> str:
    """Significance mark of ``records`` against ``reference``: one pair per image, each side the
    image's value averaged over seeds (undefined values left out of the average).

    Args:
        records: One model's records.
        reference: The reference model's records.
        metric: The metric compared (a key of :attr:`Record.values`).

    Returns:
        ``**``, ``*`` or ``""``; ``""`` also when fewer than two images are paired.
    """
    mine, ref = _image_means(records, metric), _image_means(reference, metric)
    pairs = [(mine[image], ref[image]) for image in sorted(mine) if image in ref]
    if len(pairs) < 2:
        return ""
    a, b = zip(*pairs, strict=True)
    return significance_mark(wilcoxon_vs_reference(a, b).p_value)


def _image_means(records: Sequence[Record], metric: str) -> dict[str, float]:
    by_image: dict[str, list[float]] = {}
    for r in records:
        by_image.setdefault(r.image, []).append(r.values[metric])
    return {image: summarise(values).mean for image, values in by_image.items()}


# -- box plots ----------------------------------------------------------------------------------


def boxplot_png(
    records: Sequence[Record],
    cohort: str,
    rows: Sequence[tuple[str, str]],
    labels: dict[str, str] | None = None,
) -> bytes:
    """Box plots of per-image F1 and Dice (mean over seeds) in one cohort, one box per row
    ``(experiment, inference)``, every image drawn as a dot.

    Args:
        records: Per-image records.
        cohort: The cohort plotted.
        rows: The ``(experiment, inference)`` pairs, one box each, in order.
        labels: Each experiment's display name.

    Returns:
        The PNG file's bytes.
    """
    from cordfuse.figures import png_bytes, pyplot

    plt = pyplot()
    labels = labels or {}
    fig, axes = plt.subplots(
        1, len(TABLE_METRICS), figsize=(4 + 0.9 * len(rows), 4.2), squeeze=False
    )
    names = [f"{labels.get(e, e)}\n[{i}]" for e, i in rows]
    for ax, (metric, title) in zip(axes[0], TABLE_METRICS, strict=True):
        data = []
        for experiment, inference in rows:
            per_image: dict[str, list[float]] = {}
            for r in _select(records, experiment, inference, cohort):
                per_image.setdefault(r.image, []).append(r.values[metric])
            values = [float(np.nanmean(v)) for v in per_image.values() if not np.all(np.isnan(v))]
            data.append(values)
        ax.boxplot(data, showmeans=True)
        for k, values in enumerate(data, start=1):  # every image, as few are tested per cohort
            if not values:
                continue
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else 0.0
            ax.scatter(k + np.asarray(offsets), values, s=9, color="tab:blue", alpha=0.6, zorder=3)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=7)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{title}, cohort {cohort}")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


# -- per-image CSV ------------------------------------------------------------------------------

RECORD_FIELDS = ("experiment", "seed", "inference", "image", "cohort")


def records_to_csv(records: Sequence[Record]) -> str:
    """The per-image table of a study (``per_image.csv``): one line per record.

    Args:
        records: Per-image records.

    Returns:
        The CSV text; undefined values are empty cells.

    Example:
        >>> record = Record("baseline", 0, "T2Sag", "sub-01", "A", {"dice": 0.5,
        ...                 "lesion_f1": float("nan")})
        >>> print(records_to_csv([record]), end="")
        experiment,seed,inference,image,cohort,dice,lesion_f1
        baseline,0,T2Sag,sub-01,A,0.5,
    """
    keys = sorted({k for r in records for k in r.values})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*RECORD_FIELDS, *keys])
    for r in records:
        writer.writerow(
            [
                r.experiment,
                r.seed,
                r.inference,
                r.image,
                r.cohort,
                *[_number(r.values.get(k, math.nan)) for k in keys],
            ]
        )
    return buffer.getvalue()


def _number(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)


def records_from_csv(text: str) -> list[Record]:
    """Records from the CSV :func:`records_to_csv` writes (empty cells read as NaN).

    Args:
        text: The CSV text.

    Returns:
        The records.
    """
    rows = list(csv.DictReader(io.StringIO(text)))
    out = []
    for row in rows:
        values = {
            k: (float(v) if v != "" else math.nan) for k, v in row.items() if k not in RECORD_FIELDS
        }
        out.append(
            Record(
                row["experiment"],
                int(row["seed"]),
                row["inference"],
                row["image"],
                row["cohort"],
                values,
            )
        )
    return out
