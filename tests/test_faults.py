"""Faults survived: a verb killed (SIGKILL) mid-way and run again finishes with the result of an
uninterrupted run; inputs are never changed; a bad input is one line, never a traceback."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cordfuse.cli import main
from cordfuse.derivatives import derivative_masks

TIMEOUT_S = 240


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _cordfuse(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cordfuse", *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(process: subprocess.Popen, ready) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds (it must still be running then)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert process.poll() is None, f"finished before it could be killed: {process.stderr}"
        assert time.monotonic() < deadline, "never reached the point to kill it at"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL


def _finish(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cordfuse", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr


def _arrays(npz: Path) -> dict[str, np.ndarray]:
    with np.load(npz) as data:
        return {k: data[k] for k in data.files}


def test_prepare_survives_a_kill(synth_copy, prepared_small, tmp_path):
    before = _hashes(synth_copy)
    out = tmp_path / "prepared"
    process = _cordfuse("prepare", synth_copy, out, "--preset", "small")
    _kill_when(process, lambda: len(list(out.glob("*/prepared.npz"))) >= 1)
    assert not (out / "dataset.json").exists()  # the killed run never claimed to be finished
    _finish("prepare", synth_copy, out, "--preset", "small")
    assert _hashes(synth_copy) == before
    straight = sorted(p.parent.name for p in prepared_small.glob("*/prepared.npz"))
    assert sorted(p.parent.name for p in out.glob("*/prepared.npz")) == straight
    for name in straight:
        a, b = _arrays(out / name / "prepared.npz"), _arrays(prepared_small / name / "prepared.npz")
        assert a.keys() == b.keys()
        for key in a:
            if key != "meta":  # the metadata names the input paths, which differ
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")


def test_train_survives_a_kill(prepared_small, tmp_path):
    args = [
        "--preset",
        "small",
        "--model",
        "baseline",
        "--epochs",
        "3",
        "--iterations",
        "3",
        "--seed",
        "5",
        "--deterministic",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    inputs = _hashes(prepared_small)
    _finish("train", prepared_small, straight, *args)
    process = _cordfuse("train", prepared_small, killed, *args)
    _kill_when(process, lambda: (killed / "checkpoint_latest.pt").exists())
    _finish("train", prepared_small, killed, *args, "--resume")
    from cordfuse.checkpoint import Checkpoint

    a, b = (
        Checkpoint.load(straight / "checkpoint_latest.pt"),
        Checkpoint.load(killed / "checkpoint_latest.pt"),
    )
    assert a.epoch == b.epoch == 2
    for name, tensor in a.model.items():
        assert np.array_equal(tensor.numpy(), b.model[name].numpy()), name
    assert (straight / "log.jsonl").read_text().count("\n") == 3
    assert (killed / "log.jsonl").read_text().count("\n") == 3
    assert _hashes(prepared_small) == inputs


def test_predict_survives_a_kill(synth_copy, tiny_baseline, tmp_path):
    before = _hashes(synth_copy)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish("predict", tiny_baseline, "-i", synth_copy, "-o", straight, "--qc")
    process = _cordfuse("predict", tiny_baseline, "-i", synth_copy, "-o", killed, "--qc")
    _kill_when(process, lambda: len(list(killed.glob("logs/*_prediction.json"))) >= 1)
    done = {p: p.stat().st_mtime_ns for p in killed.glob("logs/*_prediction.json")}
    _finish("predict", tiny_baseline, "-i", synth_copy, "-o", killed, "--qc")
    assert _hashes(synth_copy) == before
    a, b = _hashes(straight), _hashes(killed)
    # the images, tables, sidecars and figures (the manifest holds its creation time)
    outputs = [k for k in a if k.endswith((".nii.gz", ".tsv", ".png")) or k.startswith("sub-")]
    assert outputs and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in outputs)
    # the subjects finished before the kill were not predicted again (their record is unchanged)
    assert all(path.stat().st_mtime_ns == mtime for path, mtime in done.items())
    # evaluate and check read their inputs only
    predictions = _hashes(killed)
    assert main(["check", str(synth_copy)]) == 0
    assert (
        main(
            [
                "evaluate",
                "--pred",
                str(killed),
                "--gt",
                str(synth_copy),
                "-o",
                str(tmp_path / "metrics.csv"),
            ]
        )
        == 0
    )
    assert _hashes(synth_copy) == before and _hashes(killed) == predictions
    assert len(list(killed.glob("logs/*_prediction.json"))) == len(derivative_masks(straight))


@pytest.mark.slow
def test_study_survives_a_kill(tmp_path):
    from cordfuse.synth import write_cohort

    bids = write_cohort(tmp_path / "bids", subjects=3, seed=3, cohorts=("A",))
    before = _hashes(bids)
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "dataset: bids\nepochs: 3\niterations: 2\ntest_per_cohort: 1\n"
        "experiments: [baseline]\njobs: 1\n"
    )
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish("study", config, "-o", straight)
    process = _cordfuse("study", config, "-o", killed)
    _kill_when(
        process, lambda: (killed / "runs" / "baseline" / "seed-0" / "checkpoint_latest.pt").exists()
    )
    assert not (killed / "runs" / "baseline" / "seed-0" / "summary.json").exists()
    _finish("study", config, "-o", killed)
    assert (killed / "per_image.csv").read_text() == (straight / "per_image.csv").read_text()
    assert (killed / "per_lesion.csv").read_text() == (straight / "per_lesion.csv").read_text()
    assert _hashes(bids) == before


# -- bad inputs: one line, never a traceback ---------------------------------------------------


def _truncate(path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 3]))


def test_bad_inputs_are_one_line_in_prepare_predict_and_evaluate(
    synth_copy, tiny_baseline, tmp_path, capsys
):
    """A truncated file (sub-001) and an image with NaN voxels (sub-002), both named by check:
    the verbs fail those subjects in one line each, never with a traceback, and go on."""
    import nibabel as nib

    truncated = sorted(synth_copy.glob("sub-001/anat/*T2w.nii.gz"))[0]
    _truncate(truncated)
    with_nan = sorted(synth_copy.glob("sub-002/anat/*T2w.nii.gz"))[0]
    img = nib.load(with_nan)
    data = np.asarray(img.dataobj, np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), with_nan)
    assert main(["check", str(synth_copy)]) == 1
    out = capsys.readouterr().out
    assert truncated.name in out and with_nan.name in out  # check names both
    assert main(["prepare", str(synth_copy), str(tmp_path / "prep"), "--preset", "small"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"FAILED sub-001: {truncated}" in err and f"FAILED sub-002: {with_nan}" in err
    assert (
        main(["predict", str(tiny_baseline), "-i", str(synth_copy), "-o", str(tmp_path / "pred")])
        == 1
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"FAILED sub-001: {truncated}" in err and f"FAILED sub-002: {with_nan}" in err
    label = sorted((synth_copy / "derivatives" / "labels").glob("sub-003/anat/*lesion*"))[0]
    _truncate(label)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--gt", str(synth_copy)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if str(label) in line], err


def test_centerline_and_restore_leave_their_inputs_unchanged(synth_root, prepared_small, tmp_path):
    image = sorted(synth_root.glob("sub-001/anat/*T2w.nii.gz"))[0]
    subject = sorted(prepared_small.glob("*/prepared.npz"))[0].parent
    with np.load(subject / "prepared.npz") as npz:
        crop = npz["label"].astype(np.float32)
    np.save(tmp_path / "crop.npy", crop)
    before = _hashes(synth_root), _hashes(prepared_small)
    assert main(["centerline", str(image), "-o", str(tmp_path / "line.csv")]) == 0
    assert (
        main(
            [
                "restore",
                str(subject),
                str(tmp_path / "crop.npy"),
                "-o",
                str(tmp_path / "restored.nii.gz"),
            ]
        )
        == 0
    )
    assert (_hashes(synth_root), _hashes(prepared_small)) == before
    assert (tmp_path / "line.csv").stat().st_size and (tmp_path / "restored.nii.gz").exists()
