"""The study: Tables 1 and 2 from known results, the noise fit, a tiny grid end to end."""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import stats

from cordfuse.checkpoint import Checkpoint
from cordfuse.cli import main
from cordfuse.derivatives import find_prediction
from cordfuse.errors import CordfuseError
from cordfuse.evaluation.tables import (
    Record,
    records_from_csv,
    records_to_csv,
    table1,
    table2,
    table2_per_cohort,
)
from cordfuse.features import fit_mixture, mixture_logpdf
from cordfuse.nn.networks import FeatureNoise
from cordfuse.preprocess.pipeline import PreparedSubject
from cordfuse.report import SECTIONS
from cordfuse.sequences import SEQUENCES
from cordfuse.study import (
    ALL_AVAILABLE,
    EXAMPLE_CONFIG,
    EXPERIMENTS,
    StudyConfig,
    inference_sets,
)

# ---------------------------------------------------------------------------------------------
# Tables from a tiny fake result set


def _record(experiment, seed, inference, image, cohort, f1, dice):
    return Record(
        experiment,
        seed,
        inference,
        image,
        cohort,
        {"lesion_f1": f1, "dice": dice, "lesion_sensitivity": math.nan},
    )


@pytest.fixture()
def fake_records():
    """baseline and mi on cohorts A (3 images) and B (2 images), 2 seeds; a specific model that
    only cohort A's images can use; mi with all sequences only in cohort A."""
    out = []
    for seed in (0, 1):
        for i in range(3):
            out.append(_record("baseline", seed, "T2Sag", f"a{i}", "A", 0.5 + 0.1 * i, 0.4))
            out.append(
                _record("mi", seed, "T2Sag", f"a{i}", "A", 0.6 + 0.1 * i + 0.02 * seed, 0.45)
            )
            out.append(_record("mi", seed, ALL_AVAILABLE, f"a{i}", "A", 0.9, 0.5))
            out.append(_record("specific", seed, "T2Sag+STIR", f"a{i}", "A", 0.7, 0.42))
        for i in range(2):
            out.append(_record("baseline", seed, "T2Sag", f"b{i}", "B", 0.3, 0.2 + 0.1 * seed))
            out.append(_record("mi", seed, "T2Sag", f"b{i}", "B", 0.2, math.nan))
    return out


def test_table1_layout_blanks_bold_and_seed_means(fake_records):
    table = table1(
        fake_records,
        experiments=["baseline", "specific", "mi"],
        inferences=["T2Sag", "T2Sag+STIR", ALL_AVAILABLE],
        labels={"baseline": "T2Sag baseline", "mi": "Mean Imputation"},
    )
    assert table.header == ["model", "sequences at inference", "F1 A", "F1 B", "Dice A", "Dice B"]
    assert [row[:2] for row in table.rows] == [
        ["T2Sag baseline", "T2Sag"],
        ["specific", "T2Sag+STIR"],
        ["Mean Imputation", "T2Sag"],
        ["Mean Imputation", ALL_AVAILABLE],
    ]
    baseline, specific, mi, mi_all = table.rows
    # a cell is the mean over seeds of the per-seed cohort mean
    assert baseline[2].value == pytest.approx(0.6)
    assert mi[2].value == pytest.approx(np.mean([0.7, 0.72]))
    assert baseline[5].value == pytest.approx(0.25)
    # blank where no image of the cohort has that combination
    assert specific[3].text == "" and specific[3].value is None and mi_all[5].text == ""
    # undefined everywhere -> n/a, not a number
    assert mi[5].text == "n/a"
    # the best of each column is bold, only it
    assert mi_all[2].bold and not any(r[2].bold for r in (baseline, specific, mi))
    assert baseline[3].bold and not mi[3].bold
    markdown = table.to_markdown()
    assert "| Mean Imputation | all available | **0.900** |  | **0.500** |  |" in markdown
    latex = table.to_latex()
    assert r"\textbf{0.900}" in latex and r"\begin{tabular}{llcccc}" in latex
    csv_lines = table.to_csv().splitlines()
    assert csv_lines[0] == "model,sequences at inference,F1 A,F1 B,Dice A,Dice B"
    assert csv_lines[2] == "specific,T2Sag+STIR,0.7,,0.42,"


def test_table2_pools_the_cohorts_as_the_paper(fake_records):
    table = table2(fake_records, reference="baseline", experiments=["baseline", "mi"])
    assert table.header == ["model", "Lesion-wise F1", "Dice"]
    assert [row[0] for row in table.rows] == ["baseline", "mi"]  # T2Sag-only models only
    baseline, mi = table.rows
    # per seed, the mean over the 5 images of both cohorts; then mean ± std over seeds
    seed_means = [np.mean([0.6, 0.7, 0.8, 0.2, 0.2]), np.mean([0.62, 0.72, 0.82, 0.2, 0.2])]
    assert mi[1].text.startswith(f"{np.mean(seed_means):.3f} ± {np.std(seed_means, ddof=1):.3f}")
    assert baseline[2].text.startswith("0.340 ± 0.028")  # Dice: seed means 0.32 and 0.36
    assert "pooled" in table.title and "one pair per test image" in table.notes[0]


def test_table2_wilcoxon_has_one_pair_per_image_averaged_over_seeds(fake_records):
    table = table2_per_cohort(fake_records, reference="baseline", experiments=["baseline", "mi"])
    assert table.header == ["model", "F1 A", "F1 B", "Dice A", "Dice B"]
    baseline, mi = table.rows
    assert baseline[4].text == "0.250 ± 0.071"  # Dice B: seed means 0.2 and 0.3
    assert mi[4].text == ""  # Dice undefined for mi on B: blank, never a fake number
    assert mi[1].bold and not baseline[1].bold
    # cohort A: 3 images, each mi > baseline. Pairing (seed, image) would give 6 pairs and
    # p = 2/64 ("**"); one pair per image gives 3 pairs, p = 2/8 = 0.25: no mark.
    assert stats.wilcoxon([0.6, 0.7, 0.8, 0.62, 0.72, 0.82], [0.5, 0.6, 0.7] * 2).pvalue < 0.05
    assert stats.wilcoxon([0.61, 0.71, 0.81], [0.5, 0.6, 0.7]).pvalue == pytest.approx(0.25)
    assert not mi[1].text.endswith("*")
    assert "*" not in baseline[1].text  # no mark against itself


def test_table2_single_star_for_p_between_005_and_01():
    # 5 images, each better on average over 2 seeds: exact two-sided p = 2/32 = 0.0625 -> "*"
    recs = [
        _record("baseline", seed, "T2Sag", f"i{i}", "A", 0.5, 0.5)
        for i in range(5)
        for seed in (0, 1)
    ]
    recs += [
        _record("mi", seed, "T2Sag", f"i{i}", "A", 0.6 + 0.01 * i - 0.2 * seed, 0.5)
        for i in range(5)
        for seed in (0, 1)
    ]
    row = table2(recs, experiments=["baseline", "mi"]).rows[1]
    # averaged over seeds, mi is 0.5 + 0.01 i: above the baseline for i = 1..4 only, tie at 0
    p = stats.wilcoxon([0.51, 0.52, 0.53, 0.54], [0.5] * 4).pvalue
    assert p == pytest.approx(0.125)
    assert row[1].text == "0.520 ± 0.141"
    recs = [r for r in recs if r.seed == 0]
    row = table2(recs, experiments=["baseline", "mi"]).rows[1]
    assert row[1].text.endswith("*") and not row[1].text.endswith("**")
    assert row[2].text == "0.500 ± 0.000"  # equal values: p = 1, no mark


def test_records_survive_the_csv_round_trip(fake_records):
    again = records_from_csv(records_to_csv(fake_records))
    assert len(again) == len(fake_records)
    for a, b in zip(again, fake_records, strict=True):
        assert (a.experiment, a.seed, a.inference, a.image, a.cohort) == (
            b.experiment,
            b.seed,
            b.inference,
            b.image,
            b.cohort,
        )
        assert all(
            a.values[k] == b.values[k] or (math.isnan(a.values[k]) and math.isnan(b.values[k]))
            for k in b.values
        )


# ---------------------------------------------------------------------------------------------
# Configuration and inference sets


def test_inference_sets_follow_the_models_and_the_subject():
    specific = [EXPERIMENTS["specific-stir"].sequences, EXPERIMENTS["specific-t2s-t1"].sequences]
    have = ["T2Sag", "STIR", "T2Ax"]
    assert inference_sets(EXPERIMENTS["baseline"], have, specific) == [("T2Sag", ("T2Sag",))]
    assert inference_sets(EXPERIMENTS["specific-stir"], have, specific) == [
        ("T2Sag+STIR", ("T2Sag", "STIR"))
    ]
    assert inference_sets(EXPERIMENTS["specific-t2s-t1"], have, specific) == []
    assert inference_sets(EXPERIMENTS["mi-distill"], have, specific) == [
        ("T2Sag", ("T2Sag",)),
        ("T2Sag+STIR", ("T2Sag", "STIR")),
        (ALL_AVAILABLE, ("T2Sag", "STIR", "T2Ax")),
    ]
    assert inference_sets(EXPERIMENTS["mi"], ["T2Sag"], specific) == [("T2Sag", ("T2Sag",))]


def test_study_config_parsing_and_errors(tmp_path):
    path = tmp_path / "example.yaml"
    path.write_text(EXAMPLE_CONFIG)
    config = StudyConfig.from_file(path)
    assert config.experiments == tuple(
        e for e in EXPERIMENTS if e not in ("mi-dropout", "mi-seqsup")
    )
    assert config.seeds == (0,) and config.test_per_cohort == 22
    assert config.schedule == (100, 25) and config.synthetic_subjects == 120
    paper = StudyConfig.from_mapping({"preset": "paper", "seeds": 3}, tmp_path)
    assert paper.schedule == (1000, 250) and paper.seeds == (0, 1, 2)
    # the trainings get the study's validation interval and the preset's optimizer
    from cordfuse.demo import DemoSettings, demo_config
    from cordfuse.study.runner import _train_config
    from cordfuse.training.config import TrainConfig

    sparse = StudyConfig.from_mapping({"val_every": 3, "experiments": ["baseline"]}, tmp_path)
    trained = TrainConfig.from_dict(
        _train_config(sparse, EXPERIMENTS["baseline"], 0, tmp_path, None)
    )
    assert (trained.val_every, trained.optimizer) == (3, "adamw")
    assert config.val_every == 1 and demo_config(DemoSettings()).val_every == 5
    assert StudyConfig.from_mapping({"dataset": "bids"}, tmp_path).dataset == str(
        (tmp_path / "bids").resolve()
    )
    with pytest.raises(CordfuseError, match="unknown setting.*epoch"):
        StudyConfig.from_mapping({"epoch": 3}, tmp_path)
    with pytest.raises(CordfuseError, match="unknown experiment"):
        StudyConfig.from_mapping({"experiments": ["baseline", "mi-magic"]}, tmp_path)
    with pytest.raises(CordfuseError, match="add baseline"):
        StudyConfig.from_mapping({"experiments": ["mi-frozen"]}, tmp_path)
    (tmp_path / "bad.yaml").write_text("seeds: [1, 2\n")
    with pytest.raises(CordfuseError, match="bad.yaml: not valid"):
        StudyConfig.from_file(tmp_path / "bad.yaml")


# ---------------------------------------------------------------------------------------------
# Feature-noise mixture


@pytest.mark.slow
def test_mixture_fit_recovers_known_parameters():
    truth = FeatureNoise(weight=0.25, logistic_scale=0.002, normal_sigma=0.4)
    values = truth.sample((200_000,), generator=torch.Generator().manual_seed(0)).numpy()
    fit = fit_mixture(values)
    assert fit.noise.weight == pytest.approx(0.25, abs=0.01)
    assert fit.noise.logistic_scale == pytest.approx(0.002, rel=0.05)
    assert fit.noise.normal_sigma == pytest.approx(0.4, rel=0.02)
    # a maximum: the truth is no more likely than the fit
    assert fit.log_likelihood >= np.mean(mixture_logpdf(values.astype(float), truth)) - 1e-9


def test_noise_params_file_is_checked(tmp_path):
    good = tmp_path / "noise.json"
    good.write_text(json.dumps({"weight": 0.3, "logistic_scale": 0.01, "normal_sigma": 0.5}))
    assert FeatureNoise.from_json(good) == FeatureNoise(0.3, 0.01, 0.5)
    (tmp_path / "missing.json").write_text(json.dumps({"weight": 0.3}))
    with pytest.raises(CordfuseError, match="missing.json: noise parameters need"):
        FeatureNoise.from_json(tmp_path / "missing.json")
    (tmp_path / "neg.json").write_text(
        json.dumps({"weight": 2, "logistic_scale": 0.01, "normal_sigma": 0.5})
    )
    with pytest.raises(CordfuseError, match="0 <= weight <= 1"):
        FeatureNoise.from_json(tmp_path / "neg.json")


# ---------------------------------------------------------------------------------------------
# The whole grid on a tiny cohort


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    config = root / "tiny.yaml"
    config.write_text(
        "synthetic: {subjects: 12, seed: 3}\nseeds: 1\nepochs: 1\niterations: 2\n"
        "test_per_cohort: 1\nfeature_noise: fit\n"
    )
    assert main(["study", str(config)]) == 0
    return root / "tiny"


def test_study_runs_the_grid_and_writes_the_tables(tiny_study):
    out = tiny_study
    status = json.loads((out / "status.json").read_text())["runs"]
    assert [r["experiment"] for r in status] == list(EXPERIMENTS)
    trained = {r["experiment"] for r in status if r["status"] == "trained"}
    assert {"baseline", "mi", "mi-frozen", "mi-distill", "feature-aug"} <= trained
    for r in status:  # a model no training subject fits is skipped with its reason
        assert r["status"] == "trained" or "no training subjects" in r["message"]
    for name in ("table1", "table2"):
        for suffix in ("md", "csv", "tex"):
            assert (out / f"{name}.{suffix}").stat().st_size > 0
    for cohort in "ABC":
        assert (out / f"boxplot_{cohort}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "study.yaml").read_text().startswith("synthetic:")
    fold = json.loads((out / "fold.json").read_text())
    records = records_from_csv((out / "per_image.csv").read_text())
    assert {r.image for r in records} == set(fold["test"])
    by_run = {}
    for r in records:
        by_run.setdefault((r.experiment, r.inference), set()).add(r.image)
    assert by_run[("baseline", "T2Sag")] == set(fold["test"])
    assert by_run[("mi", "T2Sag")] == set(fold["test"])
    # The anchored models answer T2Sag alone with their anchor's mask, the baseline of the seed.
    assert {"early-fusion", "anchored", "anchored-all-levels"} <= trained
    for name in ("anchored", "anchored-all-levels"):
        for mask in (out / "predictions" / "baseline" / "seed-0" / "T2Sag").glob("*.nii.gz"):
            same = out / "predictions" / name / "seed-0" / "T2Sag" / mask.name
            assert np.array_equal(np.asanyarray(nib.load(same).dataobj), nib.load(mask).dataobj)
    assert "best T2Sag-only answer" in (out / "product.md").read_text()
    runs = out / "runs"
    assert Checkpoint.load(runs / "anchored-all-levels" / "seed-0").config.correction == (
        "all-levels"
    )
    assert Checkpoint.load(runs / "mi-seqsup" / "seed-0").config.sequence_supervision == 0.5
    # every prediction is a mask on the native T2Sag grid of its subject
    mask = next((out / "predictions" / "mi" / "seed-0" / "T2Sag").glob("*_lesion.nii.gz"))
    prepared = PreparedSubject.load(out / "prepared" / mask.name.split("_")[0])
    assert list(nib.load(mask).shape) == prepared.t2sag["fused_shape"]
    assert np.allclose(nib.load(mask).affine, prepared.t2sag["fused_affine"], atol=1e-4)
    report = (out / "report.html").read_text()
    assert all(f'<section id="{key}">' in report for key, _ in SECTIONS)
    assert report.count('<figure class="qc"') == len(fold["test"])
    table = (out / "table1.md").read_text()
    assert "| T2Sag baseline | T2Sag |" in table and "| Mean Imputation | all available |" in table
    # the frozen encoder is the baseline's, bit for bit
    baseline = torch.load(
        out / "runs" / "baseline" / "seed-0" / "checkpoint_best.pt", weights_only=True
    )["model"]
    frozen = torch.load(
        out / "runs" / "mi-frozen" / "seed-0" / "checkpoint_best.pt", weights_only=True
    )["model"]
    keys = [k for k in baseline if k.startswith("encoders.T2Sag.")]
    assert keys and all(torch.equal(baseline[k], frozen[k]) for k in keys)
    # feature-aug trained with the noise fitted on the mi model of the same seed
    fitted = FeatureNoise.from_json(out / "features" / "seed-0" / "noise_params.json")
    aug = torch.load(
        out / "runs" / "feature-aug" / "seed-0" / "checkpoint_best.pt", weights_only=True
    )["config"]
    assert FeatureNoise(**aug["feature_noise"]) == fitted


def test_study_lists_every_lesion_and_what_the_extra_sequences_add(tiny_study):
    from cordfuse.evaluation.lesions import rows_from_csv

    out = tiny_study
    records = records_from_csv((out / "per_image.csv").read_text())
    rows = rows_from_csv((out / "per_lesion.csv").read_text())
    # every evaluated image has its lesions listed, and the counts agree with its metrics
    for r in records:
        mine = [
            x
            for x in rows
            if (x.experiment, x.seed, x.inference, x.subject)
            == (r.experiment, r.seed, r.inference, r.image)
        ]
        assert sum(x.kind == "gt" for x in mine) == r.values["n_gt"]
        assert sum(x.kind == "pred" for x in mine) == r.values["n_pred"]
        assert sum(x.detected for x in mine if x.kind == "gt") == r.values["gt_detected"]
    # the synthetic truth is attached: faint and clear lesions both occur
    assert {x.visibility_class for x in rows if x.kind == "gt"} >= {"faint", "clear"}
    table = (out / "extra_sequences.md").read_text()
    assert "| Mean Imputation | 0 | all available |" in table
    assert "McNemar" in table and "faint on T2Sag" in table
    assert "| T2Sag baseline |" not in table.split("\n", 4)[-1]  # the baseline adds nothing
    assert (out / "lesions_changed.csv").exists()
    report = (out / "report.html").read_text()
    assert "What the extra sequences add" in report and "McNemar" in report


def test_diagnose_measures_the_multi_sequence_models(tiny_study, capsys):
    assert main(["diagnose", str(tiny_study), "--experiments", "mi,mi-all-levels"]) == 0
    assert "Diagnosed 2 model(s)" in capsys.readouterr().out
    result = json.loads((tiny_study / "diagnostics.json").read_text())
    assert set(result["models"]) == {"mi/seed-0", "mi-all-levels/seed-0"}
    for model in result["models"].values():
        assert set(model["encoder_relative_change"]) == set(SEQUENCES)
        assert model["encoder_relative_change"]["T2Sag"] > 0  # two SGD steps moved it
        assert model["sequence_effect"]["subjects"]
    assert result["alignment_test"]["T2Sag"]["median_misalignment_mm"] == 0.0
    assert "# Multi-sequence diagnostics" in (tiny_study / "diagnostics.md").read_text()
    assert main(["diagnose", str(tiny_study / "runs")]) == 2
    assert "not a study folder" in capsys.readouterr().err


def test_study_resumes_without_redoing_work(tiny_study, capsys):
    before = {p: p.stat().st_mtime_ns for p in (tiny_study / "metrics").glob("*.csv")}
    table = (tiny_study / "table1.md").read_text()
    assert main(["study", str(tiny_study.parent / "tiny.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "already trained" in printed
    assert {p: p.stat().st_mtime_ns for p in (tiny_study / "metrics").glob("*.csv")} == before
    assert (tiny_study / "table1.md").read_text() == table
    assert main(["study", str(tiny_study.parent / "tiny.yaml"), "--tables-only"]) == 0


def test_analyze_features_cli_writes_params_train_reads(tiny_study, tmp_path, capsys):
    out = tmp_path / "features"
    assert (
        main(
            [
                "analyze-features",
                str(tiny_study / "runs" / "mi" / "seed-0"),
                str(tiny_study / "prepared"),
                "-o",
                str(out),
                "--max-values",
                "50000",
            ]
        )
        == 0
    )
    assert "Fitted on" in capsys.readouterr().out
    noise = FeatureNoise.from_json(out / "noise_params.json")
    assert 0 < noise.weight < 1 and noise.logistic_scale > 0 and noise.normal_sigma > 0
    fit = json.loads((out / "fit.json").read_text())
    assert fit["n_values"] <= 50000 and set(fit["values_per_sequence"]) >= {"STIR"}
    assert (out / "histogram.png").read_bytes()[:4] == b"\x89PNG"
    # the baseline has one encoder: nothing to compare, one clear line
    assert (
        main(
            [
                "analyze-features",
                str(tiny_study / "runs" / "baseline" / "seed-0"),
                str(tiny_study / "prepared"),
                "-o",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "a baseline model has no per-sequence encoders" in capsys.readouterr().err
    for model in ("early-fusion", "anchored"):
        run = tiny_study / "runs" / model / "seed-0"
        argv = ["analyze-features", str(run), str(tiny_study / "prepared"), "-o", str(tmp_path)]
        assert main(argv) == 2
        assert f"a {model} model has no per-sequence encoders" in capsys.readouterr().err


def evaluate_reproduces_per_image_csv(out) -> list[tuple[str, int, str]]:
    """Assert that ``evaluate --gt PREPARED`` on every prediction folder of the study (or demo)
    in ``out`` gives its per_image.csv exactly: the same images, cohorts and metrics. Returns
    the (experiment, seed, inference) runs found in per_image.csv."""
    from cordfuse.evaluation.evaluate import evaluate
    from cordfuse.study import prediction_folder

    records = records_from_csv((out / "per_image.csv").read_text())
    runs = sorted({(r.experiment, r.seed, r.inference) for r in records})
    for experiment, seed, inference in runs:
        rows, problems = evaluate(
            prediction_folder(out, experiment, seed, inference), out / "prepared"
        )
        assert not problems
        expected = {
            r.image: r
            for r in records
            if (r.experiment, r.seed, r.inference) == (experiment, seed, inference)
        }
        assert sorted(row.image for row in rows) == sorted(expected)
        for row in rows:
            assert row.cohort == expected[row.image].cohort
            for key, value in row.metrics.to_dict().items():
                want = expected[row.image].values[key]
                assert value == want or (math.isnan(value) and math.isnan(want)), (row.image, key)
    return runs


def test_evaluate_reproduces_the_study_and_nothing_needs_the_raw_data(tiny_study, tmp_path, capsys):
    """The study folder is self-contained: with its BIDS data gone, report, study (resumed) and
    evaluate --gt PREPARED still work, and evaluate gives per_image.csv's numbers exactly."""
    import shutil

    moved = tmp_path / "study"
    shutil.copytree(tiny_study, moved, ignore=shutil.ignore_patterns("data"))
    assert not (moved / "data").exists()
    assert len(evaluate_reproduces_per_image_csv(moved)) > 5
    (moved / "report.html").unlink()
    assert main(["report", str(moved)]) == 0
    report = (moved / "report.html").read_text()
    assert report.count('<figure class="qc"') == len(
        json.loads((moved / "fold.json").read_text())["test"]
    )
    before = (moved / "per_image.csv").read_text()
    shutil.copy(moved / "study.yaml", tmp_path / "tiny.yaml")
    assert main(["study", str(tmp_path / "tiny.yaml"), "-o", str(moved)]) == 0
    assert "going on with the prepared subjects" in capsys.readouterr().out
    assert (moved / "per_image.csv").read_text() == before


# ---------------------------------------------------------------------------------------------
# One pipeline: the demo is a study; one meaning of "T2Sag only"


def test_demo_is_the_study_runner_with_a_built_in_config(tiny_demo):
    """``cordfuse demo`` is a study: its config.json is the built-in configuration of its
    options (a study config, read back equal), its manifest describes the study's layout, and its
    per_image.csv is exactly what ``evaluate --gt PREPARED`` gives for its predictions."""
    from cordfuse.demo import DemoSettings, demo_config

    out = tiny_demo["out"]
    config = demo_config(DemoSettings(subjects=9, epochs=1, iterations=2, test_per_cohort=1))
    assert config.experiments == ("baseline", "anchored") and config.preset == "small"
    assert StudyConfig.from_file(out / "config.json") == config
    manifest = json.loads((out / "cordfuse_run.json").read_text())
    assert manifest["kind"] == "demo" and manifest["experiments"] == ["baseline", "anchored"]
    assert [folder for _, folder in manifest["qc_predictions"]] == [
        "predictions/baseline/seed-0/T2Sag",
        "predictions/anchored/seed-0/all-available",
    ]
    runs = evaluate_reproduces_per_image_csv(out)
    assert runs == [
        ("anchored", 0, "T2Sag"),
        ("anchored", 0, ALL_AVAILABLE),
        ("baseline", 0, "T2Sag"),
    ]


def test_t2sag_only_is_one_prediction_in_predict_and_in_the_study(
    synth_root, prepared_small, tiny_baseline, tmp_path
):
    """``predict --sequences T2Sag`` gives the study's T2Sag-only prediction: the subject prepared
    with all its sequences, the others switched off. Preparing it again with T2Sag alone (what
    predict did before) lays out another crop, so it is not the same prediction."""
    from cordfuse.dataset import discover
    from cordfuse.inference import load_models, predict_prepared, restrict_subject
    from cordfuse.preprocess.pipeline import prepare_subject

    models = load_models([tiny_baseline], torch.device("cpu"))
    # a subject whose other sequences' cord reaches beyond its T2Sag's: the case that differs
    for subject in discover(synth_root).subjects:
        prepared = PreparedSubject.load(prepared_small / subject.name, native=True)
        alone = prepare_subject(restrict_subject(subject, ["T2Sag"]), models[0].prep)
        if alone.geometry != prepared.geometry:
            break
    else:
        pytest.fail("no fixture subject whose crop depends on its other sequences")
    ((label, sequences),) = inference_sets(EXPERIMENTS["baseline"], prepared.sequences, [])
    assert label == "T2Sag"
    study = predict_prepared(prepared, models, sequences=list(sequences))
    out = tmp_path / "predicted"
    assert (
        main(
            [
                "predict",
                str(tiny_baseline),
                "-i",
                str(synth_root / subject.name),
                "-o",
                str(out),
                "--sequences",
                "T2Sag",
                "--save-probabilities",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    mask_path = find_prediction(out, subject.name)
    probabilities = nib.load(str(mask_path).replace("_mask", "_probseg")).get_fdata()
    mask = np.asarray(nib.load(mask_path).dataobj)
    # equal up to the float32 rounding of the centrelines that prepared.npz stores
    np.testing.assert_allclose(probabilities, study.probability_native, atol=1e-5)
    np.testing.assert_array_equal(mask, study.mask)
    before = predict_prepared(alone, models)
    assert not np.allclose(before.probability_native, study.probability_native, atol=1e-5)
