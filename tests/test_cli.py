"""The CLI verbs of issue 2 as a user runs them: synth (with its safety rules) and demo."""

from __future__ import annotations

import json

from cordfuse.cli import main


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
    assert "refusing to delete" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_synth_rejects_bad_options(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--subjects", "0"]) == 2
    assert main(["synth", str(tmp_path / "x"), "--cohorts", ","]) == 2
    err = capsys.readouterr().err
    assert err.count("cordfuse: error:") == 2 and "Traceback" not in err


def test_demo_runs_synth_and_check(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "demo"), "--subjects", "3"]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems found." in out and "Demo finished" in out
    assert len(list((tmp_path / "demo/data").glob("sub-*"))) == 3
    assert len(list((tmp_path / "demo/data/derivatives/synth/qc").glob("*.png"))) == 3
