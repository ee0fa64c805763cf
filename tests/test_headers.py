"""Headers that nibabel, ITK and FSL read differently are named by ``check`` (and ``prepare``)."""

from __future__ import annotations

import gzip
import io
import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from cordfuse.cli import main
from cordfuse.headers import inspect_header, read_header
from cordfuse.io import make_nifti

#: A sagittal scan stored PIL: 0.8 mm pixels, 3 mm slices along R-L.
SAGITTAL = np.array(
    [[0.0, 0.0, -3.0, 30.0], [-0.8, 0.0, 0.0, 20.0], [0.0, -0.8, 0.0, 10.0], [0.0, 0.0, 0.0, 1.0]]
)
SHIFTED = SAGITTAL.copy()
SHIFTED[0, 3] += 40.0  # 40 mm to the left
SHEARED = SAGITTAL.copy()
SHEARED[2, 0] = -0.3  # voxel axis 0 leans towards axis 1 (I): they meet at 69.4 degrees
FLAT = SAGITTAL.copy()
FLAT[:3, 2] = 0.0  # voxel axis 2 has no length
T2SAG = "sub-01/anat/sub-01_acq-sag_T2w.nii.gz"


def write_scan(
    path,
    *,
    qform=SAGITTAL,
    qform_code=1,
    sform=SAGITTAL,
    sform_code=1,
    pixdim=None,
    shape=(12, 14, 5),
):
    """A noisy scan whose header holds exactly these fields (nibabel would mend ``pixdim``)."""
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    img = nib.Nifti1Image(data, None)
    img.set_qform(qform, code=qform_code)
    img.set_sform(sform, code=sform_code)
    raw = bytearray(img.to_bytes())
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
    if pixdim is not None:
        header["pixdim"][1:4] = pixdim
    raw[: len(header.binaryblock)] = header.binaryblock
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw)))
    stored = read_header(path)
    assert (int(stored["qform_code"]), int(stored["sform_code"])) == (qform_code, sform_code)
    return path


#: case -> (header fields, exit status of ``check``, what the line says)
CASES = {
    "qform and sform 40 mm apart": (
        {"sform": SHIFTED, "sform_code": 2},
        0,
        "qform and sform disagree by 40.0 mm: cordfuse (nibabel) and FSL use the sform, "
        "ITK (SimpleITK, ANTs) the qform",
    ),
    "sheared affine": (
        {"qform": None, "qform_code": 0, "sform": SHEARED},
        0,
        "sheared sform (voxel axes 0 and 1 meet at 69.4 degrees)",
    ),
    "no qform or sform": (
        {"qform": None, "qform_code": 0, "sform": None, "sform_code": 0},
        1,
        "no qform or sform (both codes 0)",
    ),
    "zero voxel sizes, qform only": (
        {"sform": None, "sform_code": 0, "pixdim": 0.0},
        1,
        "voxel size 0 in pixdim (0, 0, 0) and no sform: nibabel and ITK assume 1 mm",
    ),
    "zero voxel sizes beside an sform": (
        {"qform": None, "qform_code": 0, "pixdim": 0.0},
        0,
        "pixdim voxel sizes (0, 0, 0) differ from the sform's (0.8, 0.8, 3)",
    ),
    "zero voxel size in the sform": (
        {"qform": None, "qform_code": 0, "sform": FLAT},
        1,
        "voxel size 0 in the sform (0.8, 0.8, 0)",
    ),
    "one-slice sagittal T2Sag": (
        {"shape": (12, 14, 1)},
        1,
        "one slice only (sagittal, voxel axis 2)",
    ),
}


class TestCheck:
    @pytest.mark.parametrize("case", CASES)
    def test_header_case_is_named_with_its_file(self, case, tmp_path, capsys):
        fields, status, reason = CASES[case]
        scan = write_scan(tmp_path / T2SAG, **fields)
        assert main(["check", str(tmp_path)]) == status
        out = capsys.readouterr().out
        section = out.split("Problems" if status else "Warnings")[1]
        assert any(f"sub-01: {scan}: {reason}" in line for line in section.splitlines()), out
        assert main(["check", str(tmp_path), "--json"]) == status
        report = json.loads(capsys.readouterr().out)
        named = report["problems" if status else "warnings"]
        assert any(item["file"] == str(scan) and reason in item["reason"] for item in named)

    def test_clean_scan_has_no_header_warning(self, tmp_path, capsys):
        write_scan(tmp_path / T2SAG)
        assert main(["check", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "Warnings" not in out and "OK: no problems found." in out

    def test_what_nibabel_and_cordfuse_write_is_clean(self):
        """``nib.Nifti1Image(data, affine)`` (sform only) and cordfuse's own writes (both)."""
        data = np.ones((4, 5, 6), np.float32)
        for img in (nib.Nifti1Image(data, SAGITTAL), make_nifti(data, SAGITTAL)):
            report = inspect_header(img.header)
            assert (report.used, report.problems, report.warnings) == ("sform", [], [])


class TestItkReadsAsTheWarningSays:
    """The ITK reading each warning describes is SimpleITK's (ITK 5.2+)."""

    @staticmethod
    def itk_origin_and_spacing(path):
        import SimpleITK as sitk

        image = sitk.ReadImage(str(path))
        lps = np.array(image.GetOrigin())
        return lps * [-1, -1, 1], np.array(image.GetSpacing())

    @pytest.mark.parametrize(
        ("sform_code", "says", "itk_matrix"),
        [(1, "ITK 5.2+ the sform too", SHIFTED), (2, "ITK (SimpleITK, ANTs) the qform", SAGITTAL)],
    )
    def test_qform_or_sform(self, sform_code, says, itk_matrix, tmp_path):
        scan = write_scan(tmp_path / "a.nii.gz", sform=SHIFTED, sform_code=sform_code)
        assert says in inspect_header(read_header(scan)).warnings[0]
        origin, _ = self.itk_origin_and_spacing(scan)
        np.testing.assert_allclose(origin, itk_matrix[:3, 3], atol=1e-3)

    def test_sheared_sform_without_qform_is_refused(self, tmp_path):
        scan = write_scan(tmp_path / "a.nii.gz", qform=None, qform_code=0, sform=SHEARED)
        assert "ITK refuses the file" in inspect_header(read_header(scan)).warnings[0]
        with pytest.raises(RuntimeError, match="orthonormal"):
            self.itk_origin_and_spacing(scan)

    def test_zero_pixdim_is_one_mm(self, tmp_path):
        scan = write_scan(tmp_path / "a.nii.gz", qform=None, qform_code=0, pixdim=0.0)
        assert "ITK takes pixdim's (0 as 1 mm)" in inspect_header(read_header(scan)).warnings[0]
        _, spacing = self.itk_origin_and_spacing(scan)
        np.testing.assert_allclose(spacing, [1.0, 1.0, 1.0])


class TestPrepare:
    def test_says_which_matrix_it_used(self, synth_root, tmp_path, capsys):
        dataset = tmp_path / "bids"
        (dataset / "sub-001/anat").mkdir(parents=True)
        for scan in sorted((synth_root / "sub-001/anat").glob("*acq-sag*_T2w.nii.gz")):
            shutil.copy(scan, dataset / "sub-001/anat")
        scan = sorted((dataset / "sub-001/anat").glob("*.nii.gz"))[0]
        raw = bytearray(gzip.decompress(scan.read_bytes()))
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=False)
        header["qoffset_x"] += 40.0  # the qform moves, the sform (code 1) stays
        raw[: len(header.binaryblock)] = header.binaryblock
        scan.write_bytes(gzip.compress(bytes(raw)))
        out = tmp_path / "prepared"
        assert main(["prepare", str(dataset), str(out), "--preset", "small"]) == 0
        line = (
            f"T2Sag {scan.name}: qform and sform disagree by 40.0 mm: cordfuse (nibabel) and FSL "
            "use the sform"
        )
        assert f"warning sub-001: {line}" in capsys.readouterr().out
        [subject] = json.loads((out / "dataset.json").read_text())["subjects"]
        assert any(warning.startswith(line) for warning in subject["warnings"])

    def test_refuses_unusable_geometry_in_one_line(self, tmp_path, capsys):
        scan = write_scan(
            tmp_path / "bids" / T2SAG, qform=None, qform_code=0, sform_code=0, sform=None
        )
        assert main(["prepare", str(tmp_path / "bids"), str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert f"FAILED sub-01: {scan}: no qform or sform" in err
