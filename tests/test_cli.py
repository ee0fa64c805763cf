"""The CLI verbs of issue 2 as a user runs them: synth (with its safety rules) and demo."""

from __future__ import annotations

import json

import pytest

from cordfuse.cli import main


@pytest.mark.slow
def test_synth_writes_cohort_and_qc(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert (
        main(["synth", str(out), "--subjects", "2", "--seed", "4", "--cohorts", "B,C", "--qc"]) == 0
    )
    printed = capsys.readouterr().out
    assert "Wrote 2 synthetic subjects" in printed and "MB" in printed
    rows = (out / "participants.tsv").read_text().splitlines()
    assert rows[1:] == ["sub-001\tB", "sub-002\tC"]
    for sub in ("sub-001", "sub-002"):
        png = out / "derivatives/synth/qc" / f"{sub}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
        truth = json.loads((out / "derivatives/synth" / f"{sub}_truth.json").read_text())
        assert truth["seed"] == 4 and truth["subject"] == sub


@pytest.mark.slow
def test_synth_never_overwrites_without_asking(tmp_path, capsys):
    out = tmp_path / "cohort"
    assert main(["synth", str(out), "--subjects", "1"]) == 0
    assert main(["synth", str(out), "--subjects", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["synth", str(out), "--subjects", "1", "--seed", "9", "--overwrite"]) == 0
    assert json.loads((out / "derivatives/synth/sub-001_truth.json").read_text())["seed"] == 9
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    assert main(["synth", str(precious), "--subjects", "1", "--overwrite"]) == 2
    assert "not made by cordfuse synth" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_synth_rejects_bad_options(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--subjects", "0"]) == 2
    assert main(["synth", str(tmp_path / "x"), "--cohorts", ","]) == 2
    err = capsys.readouterr().err
    assert err.count("cordfuse: error:") == 2 and "Traceback" not in err


def test_demo_runs_the_main_job_end_to_end(tiny_demo, tmp_path):
    out, printed = tiny_demo["out"], tiny_demo["printed"]
    assert tiny_demo["status"] == 0
    for stage in (
        "[data]",
        "[check]",
        "[prepare]",
        "[train 2/2]",
        "[evaluate 2/2]",
        "[lesions 2/2]",
        "[report]",
        "Demo finished",
    ):
        assert stage in printed, stage
    assert "no problem found" in printed
    assert "OK: no problems found" in (out / "check.txt").read_text()
    # handed on: the anchored model as one verified zip, the test subjects predicted with it
    # into a BIDS derivative dataset
    from cordfuse.models import verify_zip

    assert "[export]" in printed and "[predict]" in printed
    verify_zip(out / "cordfuse-demo-anchored.zip")
    description = json.loads((out / "derivative" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Models"][0]["model"] == "cordfuse-demo-anchored"
    test_masks = sorted((out / "derivative").glob("sub-*/anat/*_desc-lesion_mask.nii.gz"))
    fold_test = json.loads((out / "fold.json").read_text())["test"]
    assert sorted({m.name.split("_")[0] for m in test_masks}) == sorted(fold_test)
    summary = (out / "derivative" / "lesions.tsv").read_text().splitlines()
    assert summary[0].split("\t")[:2] == ["participant_id", "session_id"]
    assert len(summary) == 1 + len(fold_test)
    assert f"Report: {(out / 'report.html').resolve()}" in printed
    fold = json.loads((out / "fold.json").read_text())
    assert len(fold["test"]) == 3 and not set(fold["test"]) & set(fold["train"])
    # the study's layout: runs/<experiment>/seed-<n>/, predictions/.../seed-<n>/<sequences>/
    for model in ("baseline", "anchored"):
        assert (out / "runs" / model / "seed-0" / "checkpoint_best.pt").exists()
    document = json.loads((out / "prepared" / "dataset.json").read_text())
    several = sorted(
        s["id"] for s in document["subjects"] if s["id"] in fold["test"] and len(s["sequences"]) > 1
    )
    assert several  # "all available" differs from T2Sag only for these test subjects
    for name, subjects in (
        ("baseline/seed-0/T2Sag", fold["test"]),
        ("anchored/seed-0/T2Sag", fold["test"]),
        ("anchored/seed-0/all-available", several),
    ):
        masks = sorted((out / "predictions" / name).glob("*_lesion.nii.gz"))
        assert [m.name.split("_")[0] for m in masks] == subjects
    table = (out / "results.md").read_text()
    assert "| F1 A | F1 B | F1 C | Dice A | Dice B | Dice C |" in table.replace(
        "model | sequences at inference | ", ""
    )
    # Table 1: T2Sag, all available; Table 2; the product; what the extra sequences add
    assert table.count("| Anchored on the baseline |") == 5
    assert "| Anchored on the baseline | 0 | all available |" in table and "McNemar" in table
    assert "| best T2Sag-only answer: T2Sag baseline (T2Sag) |" in table
    lesions = (out / "per_lesion.csv").read_text().splitlines()
    assert lesions[0].startswith("experiment,seed,inference,subject") and len(lesions) > 1
    per_image = (out / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 2 * 3 + len(several)  # T2Sag only twice, all available once
    assert main(["demo", str(tmp_path / "small"), "--subjects", "3"]) == 2
