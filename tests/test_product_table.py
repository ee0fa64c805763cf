"""The product comparison: each multi-sequence model with every sequence against the best
T2Sag-only answer of the study, from hand-made lesion rows and per-image records."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from conftest import generator_truth
from cordfuse.evaluation.lesions import (
    LesionRow,
    product_comparison,
    product_table,
    rows_to_csv,
)
from cordfuse.evaluation.stats import mcnemar_exact
from cordfuse.evaluation.tables import ALL_AVAILABLE, T2SAG_ONLY, Record
from cordfuse.study import grid

EXPERIMENTS = ["baseline", "mi", "mi-all-levels"]
LABELS = {"baseline": "T2Sag baseline", "mi": "Mean Imputation", "mi-all-levels": "MI all"}


def _gt(subject, lesion, detected, experiment, inference, faint=None, seed=0):
    """A ground-truth lesion; with ``faint``, the generator's truth as the study stores it."""
    truth = generator_truth(faint) if faint is not None else {}
    return LesionRow(
        subject,
        "gt",
        lesion,
        10.0,
        (0.0, 0.0, float(lesion)),
        1.0 if detected else 0.0,
        detected,
        "A",
        experiment,
        seed,
        inference,
        truth,
    )


def _fp(subject, lesion, experiment, inference, seed=0):
    """A false positive: a predicted lesion that detects no ground-truth lesion."""
    return LesionRow(
        subject, "pred", lesion, 5.0, (9.0, 9.0, 9.0), 0.0, False, "A", experiment, seed, inference
    )


def _record(experiment, inference, image, f1, dice=0.5, seed=0):
    return Record(experiment, seed, inference, image, "A", {"lesion_f1": f1, "dice": dice})


def _column(table, name):
    return table.header.index(name)


def test_the_all_available_label_is_the_studys():
    assert grid.ALL_AVAILABLE == ALL_AVAILABLE == "all available"


class TestBestT2SagOnlyAnswer:
    def test_a_multi_sequence_model_on_t2sag_alone_can_be_the_base(self):
        records = [
            _record("baseline", T2SAG_ONLY, "s1", 0.4),
            _record("baseline", T2SAG_ONLY, "s2", 0.6),  # mean 0.5
            _record("mi", T2SAG_ONLY, "s1", 0.8),
            _record("mi", T2SAG_ONLY, "s2", math.nan),  # left out: mean 0.8, the best
            _record("mi-all-levels", T2SAG_ONLY, "s1", 0.7),
            _record("mi-all-levels", T2SAG_ONLY, "s2", 0.7),
            _record("mi", ALL_AVAILABLE, "s1", 0.9),
        ]
        answers = product_comparison([], records, experiments=EXPERIMENTS)
        assert [(a.experiment, a.is_base) for a in answers] == [("mi", True), ("mi", False)]
        assert answers[0].lesion_f1 == pytest.approx(0.8)
        table = product_table([], records, experiments=EXPERIMENTS, labels=LABELS)
        assert table.rows[0][:3] == [
            "best T2Sag-only answer: Mean Imputation (T2Sag)",
            "0",
            "T2Sag",
        ]
        assert "highest lesion-wise F1" in " ".join(table.notes)

    def test_a_tie_goes_to_the_model_listed_first(self):
        records = [
            _record("baseline", T2SAG_ONLY, "s1", 0.5),
            _record("mi", T2SAG_ONLY, "s1", 0.5),
        ]
        first = product_comparison([], records, experiments=["mi", "baseline"])
        assert first[0].experiment == "mi"
        first = product_comparison([], records, experiments=["baseline", "mi"])
        assert first[0].experiment == "baseline"

    def test_each_seed_has_its_own_base(self):
        records = [
            _record("baseline", T2SAG_ONLY, "s1", 0.9, seed=0),
            _record("mi", T2SAG_ONLY, "s1", 0.5, seed=0),
            _record("baseline", T2SAG_ONLY, "s1", 0.5, seed=1),
            _record("mi", T2SAG_ONLY, "s1", 0.9, seed=1),
        ]
        answers = product_comparison([], records, experiments=EXPERIMENTS)
        assert [(a.seed, a.experiment) for a in answers if a.is_base] == [
            (0, "baseline"),
            (1, "mi"),
        ]


def _study():
    """Subject s1 has more than T2Sag, s2 T2Sag alone. On s1: 5 faint lesions the baseline misses
    and mi finds with every sequence, 4 clear ones the baseline finds and mi finds 3 of. On s2:
    one clear lesion mi finds with T2Sag alone. mi on T2Sag alone misses everything on s1."""
    rows = []
    for k in range(1, 6):
        rows.append(_gt("s1", k, False, "baseline", T2SAG_ONLY, faint=True))
        rows.append(_gt("s1", k, False, "mi", T2SAG_ONLY, faint=True))
        rows.append(_gt("s1", k, True, "mi", ALL_AVAILABLE, faint=True))
    for k in range(6, 10):
        rows.append(_gt("s1", k, True, "baseline", T2SAG_ONLY, faint=False))
        rows.append(_gt("s1", k, False, "mi", T2SAG_ONLY, faint=False))
        rows.append(_gt("s1", k, k != 9, "mi", ALL_AVAILABLE, faint=False))
    rows.append(_gt("s2", 1, False, "baseline", T2SAG_ONLY, faint=False))
    rows.append(_gt("s2", 1, True, "mi", T2SAG_ONLY, faint=False))
    rows += [_fp("s1", 1, "baseline", T2SAG_ONLY), _fp("s2", 1, "baseline", T2SAG_ONLY)]
    rows += [_fp("s1", 1, "mi", T2SAG_ONLY), _fp("s1", 2, "mi", T2SAG_ONLY)]  # not mi's answer
    rows += [_fp("s1", 1, "mi", ALL_AVAILABLE), _fp("s2", 1, "mi", T2SAG_ONLY)]
    records = [
        _record("baseline", T2SAG_ONLY, "s1", 0.6, dice=0.4),
        _record("baseline", T2SAG_ONLY, "s2", 0.4, dice=0.2),
        _record("mi", T2SAG_ONLY, "s1", 0.1, dice=0.1),
        _record("mi", T2SAG_ONLY, "s2", 0.8, dice=0.7),
        _record("mi", ALL_AVAILABLE, "s1", 0.9, dice=0.6),  # s2 has no such record
    ]
    return rows, records


class TestModelWithEverySequence:
    def test_a_subject_with_t2sag_alone_gets_the_models_t2sag_answer(self):
        rows, records = _study()
        base, mi = product_comparison(rows, records, experiments=EXPERIMENTS)
        assert (base.experiment, mi.experiment) == ("baseline", "mi")
        assert (mi.images, mi.with_more) == (2, 1)
        # s2's lesion counts as mi found it with T2Sag alone; s1's as with every sequence
        assert mi.detection[""].n == 10
        assert mi.detection[""].sensitivity_other == pytest.approx(9 / 10)
        assert mi.lesion_f1 == pytest.approx((0.9 + 0.8) / 2)
        assert mi.dice == pytest.approx((0.6 + 0.7) / 2)
        # mi's T2Sag-only false positives on s1 are not its answer there
        assert mi.false_positives == 2
        table = product_table(rows, records, experiments=EXPERIMENTS, labels=LABELS)
        assert table.rows[1][:3] == [
            "Mean Imputation",
            "0",
            "all available (more than T2Sag for 1 of 2 subjects)",
        ]

    def test_paired_sensitivities_discordant_lesions_and_mcnemar(self):
        rows, records = _study()
        table = product_table(rows, records, experiments=EXPERIMENTS, labels=LABELS)
        base, mi = table.rows

        def text(row, name):
            cell = row[_column(table, name)]
            return cell if isinstance(cell, str) else cell.text

        arrow = "sensitivity best T2Sag-only → model"
        assert text(mi, f"faint on T2Sag: {arrow}") == "0.000 → 1.000"
        assert text(mi, "faint on T2Sag: n") == "5"
        assert text(mi, f"clear on T2Sag: {arrow}") == "0.800 → 0.800"  # 4 of s1, 1 of s2
        assert text(mi, f"all lesions: {arrow}") == "0.400 → 0.900"
        assert text(mi, "faint on T2Sag: found only by the model / only by the base") == "5 / 0"
        assert text(mi, "faint on T2Sag: McNemar p") == "0.0625"
        assert text(mi, "all lesions: found only by the model / only by the base") == "6 / 1"
        p = mi[_column(table, "all lesions: McNemar p")]
        assert p.value == pytest.approx(mcnemar_exact(6, 1))
        # the base row shows its own values, nothing to test against itself
        assert text(base, f"faint on T2Sag: {arrow}") == "0.000"
        assert text(base, f"all lesions: {arrow}") == "0.400"
        assert text(base, "all lesions: found only by the model / only by the base") == ""
        assert text(base, "all lesions: McNemar p") == ""

    def test_false_positives_f1_and_dice(self):
        rows, records = _study()
        table = product_table(rows, records, experiments=EXPERIMENTS, labels=LABELS)
        base, mi = table.rows
        fp, f1, dice = (
            _column(table, name) for name in ("false positive lesions", "lesion-wise F1", "Dice")
        )
        assert (base[fp].text, mi[fp].text) == ("2", "2")
        assert (base[f1].text, mi[f1].text) == ("0.500", "0.850")
        assert (base[dice].text, mi[dice].text) == ("0.300", "0.650")
        assert mi[f1].value == pytest.approx(0.85)
        assert table.to_csv().splitlines()[2].split(",")[-3:] == ["0.85", "2", "0.65"]

    def test_without_truth_only_all_lesions_are_shown(self):
        rows, records = _study()
        plain = [replace(r, truth={}) for r in rows]
        table = product_table(plain, records, experiments=EXPERIMENTS, labels=LABELS)
        assert not [h for h in table.header if "faint" in h or "clear" in h]
        sensitivity = _column(table, "all lesions: sensitivity best T2Sag-only → model")
        assert table.rows[1][sensitivity].text == "0.400 → 0.900"
        assert not any("Faint" in note for note in table.notes)

    def test_no_multi_sequence_model_leaves_the_base_alone(self):
        records = [_record("baseline", T2SAG_ONLY, "s1", 0.5)]
        rows = [_gt("s1", 1, True, "baseline", T2SAG_ONLY)]
        answers = product_comparison(rows, records, experiments=EXPERIMENTS)
        assert [(a.experiment, a.is_base) for a in answers] == [("baseline", True)]
        assert product_comparison(rows, [], experiments=EXPERIMENTS) == []


def test_the_study_writes_the_product_table(tmp_path):
    from cordfuse.study.config import StudyConfig
    from cordfuse.study.runner import OUTPUTS, write_lesion_tables

    study = StudyConfig.from_mapping(
        {"synthetic": {"subjects": 30, "seed": 0}, "experiments": EXPERIMENTS}, tmp_path
    )
    rows, records = _study()
    written = write_lesion_tables(tmp_path, study, rows, records)
    assert {"product.md", "product.csv"} <= set(written) and {"product.md", "product.csv"} <= set(
        OUTPUTS
    )
    for name in ("product.md", "extra_sequences.md"):
        text = (tmp_path / name).read_text()
        assert "| best T2Sag-only answer: T2Sag baseline (T2Sag) | 0 | T2Sag |" in text
        assert (
            "| Mean Imputation | 0 | all available (more than T2Sag for 1 of 2 subjects) |" in text
        )
    # extra_sequences.md: the product first, then the model against itself with T2Sag alone
    text = (tmp_path / "extra_sequences.md").read_text()
    assert text.index("The product") < text.index("What the extra sequences add")


def test_the_report_shows_the_product_above_the_within_model_table(tmp_path):
    from cordfuse.report import extra_sequences_section

    rows, records = _study()
    (tmp_path / "per_lesion.csv").write_text(rows_to_csv(rows))
    html = extra_sequences_section(
        tmp_path, {"experiments": EXPERIMENTS, "labels": LABELS}, records
    )
    product = html.index("The product: each multi-sequence model")
    assert product < html.index("What the extra sequences add")
