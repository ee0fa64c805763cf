"""Predictions as a BIDS derivative dataset: the layout and sidecars of a one-slab, a two-slab and
a session subject, the dataset's own files, the lesion tables and their data dictionaries,
``evaluate`` on the derivative and on the flat layout, and bids-validator on a synthetic cohort
and on a prediction (where it is installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cordfuse import __version__
from cordfuse.cli import main
from cordfuse.dataset import discover
from cordfuse.derivatives import (
    BIDSIGNORE,
    data_dictionary,
    derivative_masks,
    find_prediction,
    find_slab_prediction,
    prediction_files,
    record_file,
    update_summary,
)
from cordfuse.evaluation.burden import LESION_COLUMNS, SUMMARY_COLUMNS
from cordfuse.inference import model_identity
from cordfuse.ownership import read_manifest

#: Where to find bids-validator 1.x when it is not on PATH.
VALIDATOR_VARIABLE = "CORDFUSE_BIDS_VALIDATOR"
#: bids-validator 1.x validates raw datasets: it knows no derivative file name, so a prediction's
#: subject folders hold only files its .bidsignore lists, and "no subject folders" (code 45,
#: SUBJECT_FOLDERS) would follow. Only that check is switched off for a derivative.
DERIVATIVE_CONFIG = {"ignore": [45]}


def validation_errors(root: Path, config: dict | None = None) -> list[str]:
    """bids-validator's errors on ``root``, one line each (warnings are allowed), with a
    validator configuration (which issues it ignores); skips the test where the validator is not
    installed."""
    validator = shutil.which("bids-validator") or os.environ.get(VALIDATOR_VARIABLE)
    if not validator:
        pytest.skip(
            "bids-validator not found on PATH nor in $CORDFUSE_BIDS_VALIDATOR "
            "(npm install -g bids-validator@1; .ci/run installs it where npm is)"
        )
    command = [validator, str(root), "--json"]
    if config is not None:  # the validator reads its configuration from an absolute path only
        path = root.parent.resolve() / f"{root.name}-validator.json"
        path.write_text(json.dumps(config))
        command += ["--config", str(path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    try:
        report = json.loads(run.stdout[run.stdout.index("{") :])
    except ValueError:
        pytest.fail(f"bids-validator printed no report: {run.stdout[-500:]}{run.stderr[-500:]}")
    return [
        f"{issue['key']}: {[f['file']['relativePath'] for f in issue['files'] if f.get('file')]}"
        for issue in report["issues"]["errors"]
    ]


def posix(files: dict[str, Path]) -> dict[str, str]:
    return {kind: path.as_posix() for kind, path in files.items()}


class TestLayout:
    OPTIONS = dict(per_slab=True, save_probabilities=True, qc=True)

    def test_one_slab_subject(self):
        files = prediction_files(
            "sub-01", ["sub-01_acq-sag_T2w.nii.gz"], [1], bids=True, **self.OPTIONS
        )
        anat = "sub-01/anat/sub-01_acq-sag_desc-lesion"
        assert posix(files) == {
            "mask": f"{anat}_mask.nii.gz",
            "prob": f"{anat}_probseg.nii.gz",
            "table": f"{anat}_stats.tsv",
            "mask.json": f"{anat}_mask.json",
            "prob.json": f"{anat}_probseg.json",
            "table.json": f"{anat}_stats.json",
            "qc": "sub-01/figures/sub-01_acq-sag_desc-lesion_mask.png",
        }  # one slab: its grid is the fused grid, its mask the mask

    def test_two_slab_subject_keeps_each_slab_entities(self):
        slabs = ["sub-01_acq-sag_chunk-1_T2w.nii.gz", "sub-01_acq-sag_chunk-2_T2w.nii.gz"]
        files = prediction_files("sub-01", slabs, [1, 2], bids=True, **self.OPTIONS)
        assert files["mask"].name == "sub-01_acq-sag_desc-lesion_mask.nii.gz"
        assert (
            files["slab0"].as_posix()
            == "sub-01/anat/sub-01_acq-sag_chunk-1_desc-lesion_mask.nii.gz"
        )
        assert files["slab1.json"].name == "sub-01_acq-sag_chunk-2_desc-lesion_mask.json"
        # slabs named without chunks get theirs from their numbers
        files = prediction_files(
            "sub-01",
            ["sub-01_acq-sag_run-1_T2w", "sub-01_acq-sag_run-2_T2w"],
            [1, 2],
            bids=True,
            **self.OPTIONS,
        )
        assert files["slab1"].name == "sub-01_acq-sag_run-2_chunk-2_desc-lesion_mask.nii.gz"

    def test_session_subject(self):
        slabs = [f"sub-01_ses-02_acq-sag_chunk-{n}_T2w.nii.gz" for n in (1, 2)]
        files = posix(prediction_files("sub-01_ses-02", slabs, [1, 2], bids=True, **self.OPTIONS))
        assert files["mask"] == "sub-01/ses-02/anat/sub-01_ses-02_acq-sag_desc-lesion_mask.nii.gz"
        assert files["slab1"].endswith("/sub-01_ses-02_acq-sag_chunk-2_desc-lesion_mask.nii.gz")
        assert files["qc"] == "sub-01/figures/sub-01_ses-02_acq-sag_desc-lesion_mask.png"
        assert record_file("sub-01_ses-02", bids=True).as_posix() == (
            "logs/sub-01_ses-02_prediction.json"
        )

    def test_explicit_files_keep_the_flat_layout(self):
        files = prediction_files(
            "upper", ["upper.nii.gz", "lower.nii.gz"], [1, 2], bids=False, **self.OPTIONS
        )
        assert posix(files) == {
            "mask": "upper_lesion.nii.gz",
            "prob": "upper_lesion_prob.nii.gz",
            "table": "upper_lesions.csv",
            "qc": "upper_qc.png",
            "slab0": "upper_slab-1_lesion.nii.gz",
            "slab1": "upper_slab-2_lesion.nii.gz",
        }
        assert record_file("upper", bids=False).as_posix() == "upper_prediction.json"

    def test_a_mask_is_found_in_either_layout(self, tmp_path):
        derivative = tmp_path / "derivative"
        slabs = ["sub-01_ses-02_acq-sag_chunk-1_T2w.nii.gz", "sub-01_ses-02_acq-sag_chunk-2_T2w"]
        files = prediction_files("sub-01_ses-02", slabs, [1, 2], bids=True, **self.OPTIONS)
        for path in files.values():
            (derivative / path).parent.mkdir(parents=True, exist_ok=True)
            (derivative / path).touch()
        flat = tmp_path / "flat"
        flat.mkdir()
        (flat / "sub-01_ses-02_lesion.nii.gz").touch()
        (flat / "sub-01_ses-02_slab-2_lesion.nii.gz").touch()
        assert find_prediction(derivative, "sub-01_ses-02") == derivative / files["mask"]
        assert find_prediction(flat, "sub-01_ses-02") == flat / "sub-01_ses-02_lesion.nii.gz"
        assert find_prediction(flat, "sub-02") is None
        slab = Path(slabs[1])
        assert find_slab_prediction(derivative, "sub-01_ses-02", slab, 2) == (
            derivative / files["slab1"]
        )
        assert find_slab_prediction(flat, "sub-01_ses-02", slab, 2).name.endswith(
            "slab-2_lesion.nii.gz"
        )
        # the slabs' masks are no subject's mask
        assert derivative_masks(derivative) == {"sub-01_ses-02": derivative / files["mask"]}
        assert derivative_masks(flat) == {}


class TestTables:
    def test_data_dictionaries_come_from_the_columns(self):
        lesions = data_dictionary(LESION_COLUMNS)
        assert list(lesions) == list(LESION_COLUMNS)
        assert lesions["volume_mm3"] == {
            "Description": LESION_COLUMNS["volume_mm3"][0],
            "Units": "mm^3",
        }
        assert "Units" not in lesions["label"]

    def test_the_summary_keeps_one_row_per_subject_and_session(self, tmp_path):
        columns = list(SUMMARY_COLUMNS)
        rows = [
            ("sub-02", "n/a", 1, 2.5),
            ("sub-01", "ses-02", 3, 9.0),
            ("sub-01", "ses-01", 0, 0.0),
            ("sub-02", "n/a", 2, 4.5),  # predicted again: replaces its row
        ]
        for row in rows:
            update_summary(tmp_path, columns, dict(zip(columns, row, strict=True)))
        assert (tmp_path / "lesions.tsv").read_text().splitlines() == [
            "\t".join(columns),
            "sub-01\tses-01\t0\t0.0",
            "sub-01\tses-02\t3\t9.0",
            "sub-02\tn/a\t2\t4.5",
        ]


def test_synthetic_cohort_names_stir_as_bids_does(synth_root):
    stir = sorted(synth_root.glob("sub-*/anat/*_acq-stir_T2w.nii.gz"))
    assert stir and not list(synth_root.glob("**/*_STIR*"))
    subjects = {s.subject_id: s for s in discover(synth_root).subjects}
    for path in stir:
        assert [scan.path for scan in subjects[path.parent.parent.name].scans["STIR"]] == [path]


def test_synthetic_cohort_passes_the_validator(synth_root):
    assert validation_errors(synth_root) == []


# ---------------------------------------------------------------------------------------------
# predict on a BIDS dataset: a one-slab, a two-slab and a session subject


@pytest.fixture(scope="module")
def bids_input(synth_root, tmp_path_factory) -> dict:
    """The fixture cohort with one more subject, a copy of a two-slab one in a session folder
    (``sub-101/ses-01``, its labels too), and which subject is which."""
    root = tmp_path_factory.mktemp("derivatives") / "bids"
    shutil.copytree(synth_root, root)
    subjects = discover(synth_root).subjects
    one = next(s for s in subjects if len(s.scans["T2Sag"]) == 1)
    two = next(s for s in subjects if len(s.scans["T2Sag"]) == 2)
    for folder in (root, root / "derivatives" / "labels"):
        for path in (folder / two.subject_id / "anat").iterdir():
            name = path.name.replace(f"{two.subject_id}_", "sub-101_ses-01_")
            target = folder / "sub-101" / "ses-01" / "anat" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    with (root / "participants.tsv").open("a") as handle:
        handle.write("sub-101\tA\n")
    return {"root": root, "one": one.name, "two": two.name, "session": "sub-101_ses-01"}


@pytest.fixture(scope="module")
def derivative(bids_input, tiny_baseline, tmp_path_factory) -> Path:
    """``predict`` of the three subjects with every output asked for."""
    out = tmp_path_factory.mktemp("derivatives") / "predictions"
    labels = [bids_input[k].split("_")[0] for k in ("one", "two", "session")]
    args = ["-i", str(bids_input["root"]), "-o", str(out), "--participant-label", *labels]
    options = ["--per-slab", "--save-probabilities", "--qc"]
    assert main(["predict", str(tiny_baseline), *args, *options]) == 0
    return out


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_dataset_files(derivative, bids_input, tiny_baseline):
    description = read_json(derivative / "dataset_description.json")
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    (generated,) = description["GeneratedBy"]
    assert generated["Name"] == "cordfuse" and generated["Version"] == __version__
    assert generated["Models"] == model_identity([tiny_baseline])
    assert description["DatasetLinks"]["raw"] == bids_input["root"].resolve().as_uri()
    assert (derivative / ".bidsignore").read_text() == BIDSIGNORE
    assert "cordfuse" in (derivative / "README").read_text()
    assert read_json(derivative / "lesions.json") == data_dictionary(SUMMARY_COLUMNS)
    rows = [line.split("\t") for line in (derivative / "lesions.tsv").read_text().splitlines()]
    assert rows[0] == list(SUMMARY_COLUMNS)
    expected = []
    for name in sorted(bids_input[k] for k in ("one", "two", "session")):
        table = find_prediction(derivative, name).parent / (name + "_acq-sag_desc-lesion_stats.tsv")
        subject, _, session = name.partition("_")
        expected.append([subject, session or "n/a", str(len(table.read_text().splitlines()) - 1)])
    assert [row[:3] for row in rows[1:]] == expected
    # what predict wrote, and only that, is owned (the records under logs/)
    subjects = {bids_input[k].split("_")[0] for k in ("one", "two", "session")}
    assert set(read_manifest(derivative)["entries"]) == {
        "dataset_description.json",
        "README",
        ".bidsignore",
        "lesions.tsv",
        "lesions.json",
        "logs",
        *subjects,
    }
    assert sorted(p.name for p in (derivative / "logs").iterdir()) == sorted(
        f"{bids_input[k]}_prediction.json" for k in ("one", "two", "session")
    )


@pytest.mark.parametrize("kind", ["one", "two", "session"])
def test_layout_and_sidecars(derivative, bids_input, tiny_baseline, kind):
    name, root = bids_input[kind], bids_input["root"]
    (subject,) = [s for s in discover(root).subjects if s.name == name]
    slabs = subject.scans["T2Sag"]
    mask_path = find_prediction(derivative, name)
    anat = root / subject.subject_id / (subject.session or "") / "anat"
    assert (
        mask_path == derivative / anat.relative_to(root) / f"{name}_acq-sag_desc-lesion_mask.nii.gz"
    )
    mask = nib.load(mask_path)
    assert mask.get_data_dtype() == np.uint8
    sidecar = read_json(mask_path.with_name(f"{name}_acq-sag_desc-lesion_mask.json"))
    inputs = sorted(scan.path.resolve() for scans in subject.scans.values() for scan in scans)
    assert sidecar["Sources"] == [
        f"bids:raw:{p.relative_to(root.resolve()).as_posix()}" for p in inputs
    ]
    assert sidecar["Type"] == "Lesion" and sidecar["Threshold"] == 0.5
    assert sidecar["Ensemble"] == "mean"
    assert sidecar["Models"] == model_identity([tiny_baseline])
    assert sidecar["Sequences"] == ["T2Sag"]  # what the baseline read
    probseg = nib.load(mask_path.with_name(f"{name}_acq-sag_desc-lesion_probseg.nii.gz"))
    assert probseg.shape == mask.shape and np.asarray(probseg.dataobj).max() <= 1.0
    assert "Sources" in read_json(mask_path.with_name(f"{name}_acq-sag_desc-lesion_probseg.json"))
    stats = mask_path.with_name(f"{name}_acq-sag_desc-lesion_stats.tsv")
    assert stats.read_text().splitlines()[0].split("\t") == list(LESION_COLUMNS)
    assert read_json(stats.with_suffix(".json")) == data_dictionary(LESION_COLUMNS)
    picture = derivative / subject.subject_id / "figures" / f"{name}_acq-sag_desc-lesion_mask.png"
    assert picture.read_bytes()[:4] == b"\x89PNG"
    slab_masks = sorted(mask_path.parent.glob("*_chunk-*_desc-lesion_mask.nii.gz"))
    if len(slabs) == 1:  # the fused grid is the slab's: no second mask of it
        native = nib.load(slabs[0].path)
        assert mask.shape == native.shape and np.allclose(mask.affine, native.affine, atol=1e-5)
        assert (
            sidecar["SpatialReference"] == f"bids:raw:{slabs[0].path.relative_to(root).as_posix()}"
        )
        assert slab_masks == []
        return
    assert "SpatialReference" not in sidecar
    assert [p.name for p in slab_masks] == [
        f"{scan.stem.removesuffix('_T2w')}_desc-lesion_mask.nii.gz" for scan in slabs
    ]
    for scan, path in zip(slabs, slab_masks, strict=True):
        native, slab_mask = nib.load(scan.path), nib.load(path)
        assert slab_mask.shape == native.shape
        np.testing.assert_allclose(slab_mask.affine, native.affine, atol=1e-5)
        slab_sidecar = read_json(path.with_name(path.name.replace(".nii.gz", ".json")))
        assert slab_sidecar["SpatialReference"] == (
            f"bids:raw:{scan.path.relative_to(root).as_posix()}"
        )


def test_a_rerun_skips_the_finished_subjects(derivative, bids_input, tiny_baseline, capsys):
    before = {p: p.read_bytes() for p in derivative.rglob("*") if p.is_file()}
    labels = [bids_input[k].split("_")[0] for k in ("one", "two", "session")]
    args = ["-i", str(bids_input["root"]), "-o", str(derivative), "--participant-label", *labels]
    capsys.readouterr()
    assert (
        main(["predict", str(tiny_baseline), *args, "--per-slab", "--save-probabilities", "--qc"])
        == 0
    )
    assert "0 predicted, 0 failed, 3 skipped" in capsys.readouterr().out
    after = {p: p.read_bytes() for p in derivative.rglob("*") if p.is_file()}
    assert after == before


def test_evaluate_reads_the_derivative_and_the_flat_layout(
    derivative, bids_input, tmp_path, capsys
):
    root = bids_input["root"]
    names = sorted(bids_input[k] for k in ("one", "two", "session"))
    flat = tmp_path / "flat"  # the layout of explicit files and of earlier versions
    flat.mkdir()
    for name in names:
        shutil.copy(find_prediction(derivative, name), flat / f"{name}_lesion.nii.gz")
    documents = []
    for pred in (derivative, flat):
        assert main(["evaluate", "--pred", str(pred), "--gt", str(root), "--json"]) == 0
        documents.append(json.loads(capsys.readouterr().out))
    assert [d["image"] for d in documents[0]["images"]] == names
    assert documents[0] == documents[1]
    assert (
        main(["evaluate", "--pred", str(derivative), "--gt", str(root), "--json", "--per-slab"])
        == 0
    )
    images = [d["image"] for d in json.loads(capsys.readouterr().out)["images"]]
    two, session = bids_input["two"], bids_input["session"]
    slabs = [f"{name}_slab-{n}" for name in (two, session) for n in (1, 2)]
    assert sorted(images) == sorted([bids_input["one"], *slabs])


def test_the_prediction_passes_the_validator(derivative):
    assert validation_errors(derivative, DERIVATIVE_CONFIG) == []


def test_explicit_files_keep_the_simple_layout(bids_input, tiny_baseline, tmp_path):
    root = bids_input["root"]
    (subject,) = [s for s in discover(root).subjects if s.name == bids_input["one"]]
    files = ["--t2sag", *[str(scan.path) for scan in subject.scans["T2Sag"]]]
    out = tmp_path / "out"
    assert main(["predict", str(tiny_baseline), *files, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".cordfuse.json",
        f"{subject.subject_id}_lesion.nii.gz",
        f"{subject.subject_id}_lesions.csv",
        f"{subject.subject_id}_prediction.json",
    ]
