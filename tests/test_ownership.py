"""Nothing lost: no verb deletes or overwrites what it did not create (cordfuse.ownership)."""

from __future__ import annotations

import json
import multiprocessing
import shutil

import pytest

from cordfuse.cli import main
from cordfuse.derivatives import derivative_masks
from cordfuse.errors import CordfuseError
from cordfuse.ownership import MANIFEST, claim, read_manifest


def _foreign(folder):
    """A folder holding a user's file that cordfuse never wrote."""
    folder.mkdir(parents=True)
    (folder / "thesis.txt").write_text("do not delete")
    return folder


def _one_error_line(capsys, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cordfuse: error:"), err
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


class TestClaim:
    def test_new_and_empty_folders_are_taken(self, tmp_path):
        claim(tmp_path / "new" / "deep", "prepare")
        (tmp_path / "empty").mkdir()
        claim(tmp_path / "empty", "prepare")
        for folder in (tmp_path / "new" / "deep", tmp_path / "empty"):
            assert read_manifest(folder)["verb"] == "prepare"

    def test_a_foreign_folder_or_another_verbs_is_refused_even_with_overwrite(self, tmp_path):
        folder = _foreign(tmp_path / "mine")
        for overwrite in (False, True):
            with pytest.raises(CordfuseError, match="not made by cordfuse train"):
                claim(folder, "train", overwrite=overwrite)
        assert (folder / "thesis.txt").read_text() == "do not delete"
        assert not (folder / MANIFEST).exists()
        claim(tmp_path / "prep", "prepare")
        with pytest.raises(CordfuseError, match="made by cordfuse prepare, not by cordfuse train"):
            claim(tmp_path / "prep", "train", overwrite=True)
        (tmp_path / "file").write_text("x")
        with pytest.raises(CordfuseError, match="not a folder"):
            claim(tmp_path / "file", "train")

    def test_overwrite_removes_only_the_entries_the_verb_wrote(self, tmp_path):
        folder = claim(tmp_path / "run", "train")
        folder.own("log.jsonl", "sub/deep.txt")
        (tmp_path / "run" / "log.jsonl").write_text("old")
        (tmp_path / "run" / "sub").mkdir()
        (tmp_path / "run" / "sub" / "deep.txt").write_text("old")
        (tmp_path / "run" / "notes.txt").write_text("the user's")
        assert sorted(folder.owned()) == ["log.jsonl", "sub"]
        claim(tmp_path / "run", "train")  # reuse: nothing removed
        assert (tmp_path / "run" / "log.jsonl").exists()
        claim(tmp_path / "run", "train", overwrite=True)
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MANIFEST, "notes.txt"]

    def test_processes_record_their_entries_without_losing_any(self, tmp_path):
        folder = claim(tmp_path / "out", "predict")
        context = multiprocessing.get_context("spawn")
        names = [f"sub-{i:03d}_lesion.nii.gz" for i in range(40)]
        with context.Pool(4) as pool:
            pool.starmap(_own, [(folder.path, name) for name in names])
        assert sorted(folder.owned()) == names


def _own(path, name):
    from cordfuse.ownership import OutputFolder

    OutputFolder(path, "predict").own(name)


class TestVerbs:
    """Every verb that writes folders refuses a folder it did not make, and --overwrite keeps what
    the user put beside its outputs."""

    @pytest.mark.slow
    def test_synth(self, tmp_path, capsys):
        folder = _foreign(tmp_path / "data")
        assert main(["synth", str(folder), "--subjects", "1", "--overwrite"]) == 2
        _one_error_line(capsys, str(folder), "not made by cordfuse synth")
        out = tmp_path / "cohort"
        assert main(["synth", str(out), "--subjects", "1"]) == 0
        (out / "notes.txt").write_text("the user's")
        assert main(["synth", str(out), "--subjects", "1", "--seed", "4", "--overwrite"]) == 0
        assert (out / "notes.txt").read_text() == "the user's"

    def test_prepare(self, synth_root, tmp_path, capsys):
        folder = _foreign(tmp_path / "prepared")
        assert main(["prepare", str(synth_root), str(folder), "--preset", "small"]) == 2
        _one_error_line(capsys, "not made by cordfuse prepare")
        assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]

    def test_train(self, prepared_small, tmp_path, capsys):
        folder = _foreign(tmp_path / "run")
        args = [
            "train",
            str(prepared_small),
            str(folder),
            "--preset",
            "small",
            "--model",
            "baseline",
            "--epochs",
            "2",
            "--iterations",
            "2",
            "--val-fraction",
            "0",
        ]
        assert main(args) == 2
        _one_error_line(capsys, "not made by cordfuse train")
        run = tmp_path / "used"
        args[2] = str(run)
        assert main(args) == 0
        capsys.readouterr()
        (run / "notes.txt").write_text("the user's")
        assert main(args) == 2  # a fresh run into a used folder needs --overwrite
        _one_error_line(capsys, "--overwrite", "--resume")
        assert (
            main(
                [
                    *args[:-4],
                    "--epochs",
                    "1",
                    "--iterations",
                    "2",
                    "--val-fraction",
                    "0",
                    "--overwrite",
                ]
            )
            == 0
        )
        log = (run / "log.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in log] == [1]  # a new log, not appended
        assert (run / "notes.txt").read_text() == "the user's"

    def test_predict(self, synth_root, tiny_baseline, tmp_path, capsys):
        folder = _foreign(tmp_path / "predictions")
        assert main(["predict", str(tiny_baseline), "-i", str(synth_root), "-o", str(folder)]) == 2
        _one_error_line(capsys, "not made by cordfuse predict")
        assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]

    def test_study(self, tmp_path, capsys):
        config = tmp_path / "tiny.yaml"
        config.write_text("synthetic: {subjects: 9, seed: 3}\nepochs: 1\niterations: 2\n")
        folder = _foreign(tmp_path / "tiny")
        assert main(["study", str(config)]) == 2
        _one_error_line(capsys, "not made by cordfuse study")
        assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]

    def test_demo(self, tmp_path, capsys):
        folder = _foreign(tmp_path / "demo")
        assert main(["demo", str(folder), "--overwrite"]) == 2
        _one_error_line(capsys, "not made by cordfuse demo")
        earlier = claim(tmp_path / "earlier", "demo")
        earlier.own("runs")
        (earlier.path / "runs").mkdir()
        (earlier.path / "runs" / "old.pt").write_text("old")
        (earlier.path / "notes.txt").write_text("the user's")
        assert main(["demo", str(earlier.path)]) == 2
        _one_error_line(capsys, "--overwrite")
        assert (earlier.path / "runs" / "old.pt").exists()
        # --overwrite removes the earlier demo's outputs, and only them (then this one stops at
        # its first step: a cohort of no subject)
        assert main(["demo", str(earlier.path), "--overwrite", "--subjects", "0"]) == 2
        capsys.readouterr()
        assert not (earlier.path / "runs").exists()
        assert (earlier.path / "notes.txt").read_text() == "the user's"

    def test_report(self, tiny_baseline, tmp_path, capsys):
        run = tmp_path / "run"
        shutil.copytree(tiny_baseline, run)
        precious = tmp_path / "index.html"
        precious.write_text("<html>the lab's page</html>")
        assert main(["report", str(run), "-o", str(precious)]) == 2
        _one_error_line(capsys, "not a cordfuse report")
        assert precious.read_text() == "<html>the lab's page</html>"
        assert main(["report", str(run)]) == 0
        first = (run / "report.html").read_text()
        assert main(["report", str(run)]) == 0  # its own report is rebuilt
        assert (run / "report.html").read_text().startswith(first[:200])


def test_one_job_per_participant_into_one_folder(synth_root, tiny_baseline, tmp_path, capsys):
    """Two ``prepare --participant-label`` processes writing into the same folder at once (a
    cluster array job): every subject is prepared and listed in dataset.json, and the manifest
    lists every entry; check and an unknown label work the same way."""
    import subprocess
    import sys

    from cordfuse.dataset import discover
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.preprocess.pipeline import PreparedSubject

    ids = [s.subject_id for s in discover(synth_root).subjects]
    halves = [ids[::2], ids[1::2]]
    out = tmp_path / "prepared"
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cordfuse",
                "prepare",
                str(synth_root),
                str(out),
                "--preset",
                "small",
                "--participant-label",
                *[i.removeprefix("sub-") for i in half],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for half in halves
    ]
    for job in jobs:
        _, err = job.communicate(timeout=240)
        assert job.returncode == 0, err
    document, paths = load_prepared_dataset(out)
    assert sorted(s["id"] for s in document["subjects"]) == sorted(ids)
    assert all(PreparedSubject.load(p).subject in ids for p in paths)
    assert set(ids) | {"dataset.json"} <= set(read_manifest(out)["entries"])
    assert main(["check", str(synth_root), "--participant-label", ids[0], "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.dumps(report).count("sub-") and ids[1] not in json.dumps(report)
    assert main(["prepare", str(synth_root), str(out), "--participant-label", "999"]) == 2
    _one_error_line(capsys, "no participant sub-999")
    predictions = tmp_path / "predictions"
    assert (
        main(
            [
                "predict",
                str(tiny_baseline),
                "-i",
                str(synth_root),
                "-o",
                str(predictions),
                "--participant-label",
                ids[1],
            ]
        )
        == 0
    )
    assert list(derivative_masks(predictions)) == [ids[1]]
