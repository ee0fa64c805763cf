"""``cordfuse.segment``: one call from images (paths or nibabel images, slabs as lists) to the
mask ``predict`` writes for the same subject, and one-line errors for a wrong input."""

from __future__ import annotations

import sys

import nibabel as nib
import numpy as np
import pytest

import cordfuse
from cordfuse.cli import main
from cordfuse.dataset import discover
from cordfuse.errors import CordfuseError


def test_import_cordfuse_stays_light():
    import subprocess

    code = "import sys, cordfuse; assert 'torch' not in sys.modules; print(cordfuse.__version__)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize(
    ("images", "reason"),
    [
        ({"FLAIR": "x.nii.gz"}, "unknown sequence 'FLAIR' (known: T2Sag, STIR"),
        ({"STIR": "x.nii.gz"}, "no T2Sag"),
        ({"T2Sag": []}, "no image for T2Sag"),
        ({"T2Sag": "a.nii.gz", "t2sag": "b.nii.gz"}, "T2Sag given twice"),
        ({"T2Sag": 3}, "a NIfTI path or nibabel image, not int"),
        ({"T2Sag": "absent.nii.gz"}, "absent.nii.gz: file not found"),
    ],
)
def test_a_wrong_input_is_one_clear_error_before_a_model_loads(images, reason, tmp_path):
    # the model does not exist either: the input is checked first
    with pytest.raises(CordfuseError, match=reason.replace("(", r"\(")):
        cordfuse.segment(images, tmp_path / "no-model")


def test_an_unknown_ensemble_rule_is_one_clear_error_before_a_model_loads(tmp_path):
    image = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(CordfuseError, match="ensemble must be one of mean, min, median, not 'max'"):
        cordfuse.segment({"T2Sag": image}, tmp_path / "no-model", ensemble="max")


@pytest.mark.slow
def test_segment_equals_predict_with_paths_and_images_in_memory(learned, tmp_path):
    subject = next(
        s for s in discover(learned["bids"]).subjects if s.subject_id in learned["summary"]["val"]
    )
    paths = {seq: [str(scan.path) for scan in scans] for seq, scans in subject.scans.items()}
    out = tmp_path / "predict"
    t2sag = paths["T2Sag"]
    args = ["predict", str(learned["run"]), "-o", str(out), "--save-probabilities"]
    assert main([*args, "--t2sag", *t2sag]) == 0
    written = nib.load(next(out.glob("*_lesion.nii.gz")))
    probabilities = nib.load(next(out.glob("*_lesion_prob.nii.gz")))
    assert np.asarray(written.dataobj).any(), "the learned model finds a lesion here"

    mask = cordfuse.segment({"t2sag": t2sag}, learned["run"], device="cpu")
    assert isinstance(mask, nib.Nifti1Image)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.asarray(written.dataobj))
    np.testing.assert_allclose(mask.affine, written.affine, atol=1e-6)

    # the same scans as images in memory (slabs as a list), with every result asked for
    in_memory = [nib.load(p) for p in t2sag]
    result = cordfuse.segment(
        {"T2Sag": in_memory if len(in_memory) > 1 else in_memory[0]},
        [learned["run"]],
        device="cpu",
        details=True,
    )
    np.testing.assert_array_equal(np.asarray(result.mask.dataobj), np.asarray(written.dataobj))
    np.testing.assert_allclose(
        np.asarray(result.probabilities.dataobj), np.asarray(probabilities.dataobj), atol=1e-6
    )
    table = next(out.glob("*_lesions.csv")).read_text().splitlines()
    assert len(result.lesions) == len(table) - 1 >= 1
    # every lesion has its position along the T2Sag cord (within the cord's length)
    assert all(0 <= row["distance_from_cord_top_mm"] < 1000 for row in result.lesions)
    assert result.sequences == ["T2Sag"]
