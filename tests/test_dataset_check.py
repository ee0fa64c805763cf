"""BIDS discovery, sequence rules and ``cordfuse check`` (issue 2, section 2)."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from cordfuse.check import check_dataset
from cordfuse.cli import main
from cordfuse.dataset import discover
from cordfuse.errors import CordfuseError
from cordfuse.sequences import DEFAULT_RULES, load_rules, match_sequence, parse_bids_name


class TestSequenceRules:
    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("sub-01_acq-sag_T2w.nii.gz", ["T2Sag"]),
            ("sub-01_ses-2_acq-sag_chunk-2_T2w.nii.gz", ["T2Sag"]),
            ("sub-01_acq-ax_T2w.nii", ["T2Ax"]),
            ("sub-01_acq-ax_chunk-1_T2starw.nii.gz", ["T2starAx"]),
            ("sub-01_acq-stir_T2w.nii.gz", ["STIR"]),  # BIDS-valid: what synth writes
            ("sub-01_acq-sag_STIR.nii.gz", ["STIR"]),  # older data: still recognised
            ("sub-01_acq-sag_T1w.nii.gz", ["T1Sag"]),
            ("sub-01_UNIT1.nii.gz", ["MP2RAGE"]),
            ("sub-01_T2w.nii.gz", []),  # plane unknown: never guessed
            ("sub-01_acq-sag_FLAIR.nii.gz", []),
        ],
    )
    def test_default_rules(self, name, expected):
        assert match_sequence(parse_bids_name(name), DEFAULT_RULES) == expected

    def test_chunk_entity_parsed(self):
        assert parse_bids_name("sub-1_acq-sag_chunk-2_T2w.nii.gz").chunk == 2
        assert parse_bids_name("sub-1_acq-sag_T2w.nii.gz").chunk is None

    @pytest.mark.parametrize("fmt", ["json", "yaml"])
    def test_mapping_file_overrides_named_sequences_only(self, tmp_path, fmt):
        spec = {
            "T2Sag": {"suffix": "T2w", "entities": {"acq": "sagittal"}},
            "T2starAx": {"suffix": ["T2star"]},
        }
        path = tmp_path / f"map.{fmt}"
        if fmt == "json":
            path.write_text(json.dumps(spec))
        else:
            path.write_text(
                "T2Sag: {suffix: T2w, entities: {acq: sagittal}}\nT2starAx: {suffix: [T2star]}\n"
            )
        rules = load_rules(path)
        assert match_sequence(parse_bids_name("s_acq-sagittal_T2w.nii.gz"), rules) == ["T2Sag"]
        assert match_sequence(parse_bids_name("s_acq-sag_T2w.nii.gz"), rules) == []
        assert match_sequence(parse_bids_name("s_T2star.nii.gz"), rules) == ["T2starAx"]
        assert rules["STIR"] == DEFAULT_RULES["STIR"]

    def test_a_mapping_may_give_a_sequence_several_forms(self, tmp_path):
        path = tmp_path / "map.yaml"
        path.write_text("STIR: [{suffix: T2w, entities: {acq: ir}}, {suffix: [STIR, IR]}]\n")
        rules = load_rules(path)
        for name in ("s_acq-ir_T2w.nii.gz", "s_acq-sag_STIR.nii.gz", "s_IR.nii.gz"):
            assert match_sequence(parse_bids_name(name), rules) == ["STIR"], name
        assert match_sequence(parse_bids_name("s_acq-stir_T2w.nii.gz"), rules) == []

    def test_bad_mapping_is_a_clear_error(self, tmp_path):
        path = tmp_path / "map.json"
        path.write_text(json.dumps({"FLAIR": {"suffix": "FLAIR"}}))
        with pytest.raises(CordfuseError, match="unknown sequence 'FLAIR'"):
            load_rules(path)
        path.write_text("{not json")
        with pytest.raises(CordfuseError, match="cannot read sequence mapping"):
            load_rules(path)


class TestDiscovery:
    def test_synthetic_cohort_discovered(self, synth_root):
        ds = discover(synth_root)
        assert [s.subject_id for s in ds.subjects] == ["sub-001", "sub-002", "sub-003", "sub-004"]
        assert [s.cohort for s in ds.subjects] == ["A", "B", "C", "A"]
        for subject in ds.subjects:
            t2 = subject.scans["T2Sag"]
            assert t2 and all(scan.lesion_label is not None for scan in t2)
            assert all(s.cord_label is not None for scans in subject.scans.values() for s in scans)
            chunks = [s.chunk for s in t2]
            assert chunks in ([None], [1, 2])
            assert not subject.unmatched and not subject.orphan_labels

    def test_sessions_and_fused_label(self, synth_copy):
        sub = synth_copy / "sub-001"
        (sub / "ses-01").mkdir()
        shutil.move(str(sub / "anat"), str(sub / "ses-01" / "anat"))
        labels = synth_copy / "derivatives/labels/sub-001"
        (labels / "ses-01").mkdir()
        shutil.move(str(labels / "anat"), str(labels / "ses-01" / "anat"))
        ds = discover(synth_copy)
        subject = ds.subjects[0]
        assert subject.session == "ses-01" and subject.name == "sub-001_ses-01"
        assert subject.scans["T2Sag"][0].lesion_label is not None
        # A label on the fused T2Sag (stem without chunk) attaches to the subject.
        two_slabs = next(s for s in ds.subjects if len(s.scans["T2Sag"]) == 2)
        folder = two_slabs.scans["T2Sag"][0].lesion_label.parent
        fused = folder / f"{two_slabs.subject_id}_acq-sag_T2w_lesion-manual.nii.gz"
        shutil.copy(two_slabs.scans["T2Sag"][0].lesion_label, fused)
        again = next(
            s for s in discover(synth_copy).subjects if s.subject_id == two_slabs.subject_id
        )
        assert again.fused_lesion_label == fused

    def test_not_a_dataset(self, tmp_path):
        with pytest.raises(CordfuseError, match="no subject folders"):
            discover(tmp_path)
        with pytest.raises(CordfuseError, match="not a folder"):
            discover(tmp_path / "missing")


def _snapshot(root):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _save_like(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


class TestCheck:
    def test_clean_cohort_checks_clean_and_writes_nothing(self, synth_root, capsys):
        before = _snapshot(synth_root)
        assert main(["check", str(synth_root)]) == 0
        out = capsys.readouterr().out
        assert "OK: no problems found." in out
        assert "T2Sag" in out and "MP2RAGE" in out and "sub-004" in out
        assert _snapshot(synth_root) == before

    def test_every_bad_input_is_found_and_others_still_reported(self, synth_copy, capsys):
        anat = {s: synth_copy / s / "anat" for s in ("sub-001", "sub-002", "sub-003", "sub-004")}
        labels = synth_copy / "derivatives/labels"
        expected = {}

        # sub-001: truncated gzip image, NaN image, label not binary.
        t2_1 = sorted(anat["sub-001"].glob("*acq-sag*T2w.nii.gz"))[0]
        raw = t2_1.read_bytes()
        t2_1.write_bytes(raw[: len(raw) // 2])
        expected[t2_1.name] = "truncated"
        other = next(
            p
            for p in sorted(anat["sub-001"].glob("*.nii.gz"))
            if p != t2_1 and "chunk-2_T2w" not in p.name
        )
        img = nib.load(other)
        data = np.asarray(img.dataobj).astype(np.float32)
        data[1, 1, 1] = np.nan
        _save_like(other, data, img.affine)
        expected[other.name] = "NaN/Inf"
        seg = labels / "sub-001/anat" / other.name.replace(".nii.gz", "_seg-manual.nii.gz")
        seg_img = nib.load(seg)
        bad = np.asarray(seg_img.dataobj).astype(np.uint8) * 2
        _save_like(seg, bad, seg_img.affine)
        expected[seg.name] = "not binary"

        # sub-002: no T2Sag at all; a 4D image; an unreadable file; a duplicate match.
        for path in anat["sub-002"].glob("*acq-sag*T2w.nii.gz"):
            path.unlink()
        stir = next(anat["sub-002"].glob("*_acq-stir_T2w.nii.gz"), None) or next(
            anat["sub-002"].glob("*.nii.gz")
        )
        img = nib.load(stir)
        _save_like(stir, np.stack([np.asarray(img.dataobj)] * 2, axis=-1), img.affine)
        expected[stir.name] = "not a 3D image"
        garbage = anat["sub-002"] / "sub-002_acq-ax_T2w.nii.gz"
        garbage.write_bytes(b"this is not a nifti file")
        expected[garbage.name] = "unreadable"

        # sub-003: label grid mismatch (shape and affine), empty image, duplicate match.
        t2_3 = sorted(anat["sub-003"].glob("*acq-sag*T2w.nii.gz"))[0]
        lesion = labels / "sub-003/anat" / t2_3.name.replace(".nii.gz", "_lesion-manual.nii.gz")
        limg = nib.load(lesion)
        _save_like(lesion, np.asarray(limg.dataobj)[:-2], limg.affine)
        expected[lesion.name] = "grid differs"
        seg3 = labels / "sub-003/anat" / t2_3.name.replace(".nii.gz", "_seg-manual.nii.gz")
        simg = nib.load(seg3)
        shifted = simg.affine.copy()
        shifted[:3, 3] += 2.0
        _save_like(seg3, np.asarray(simg.dataobj), shifted)
        expected[seg3.name] = "grid differs"
        dup = anat["sub-003"] / t2_3.name.replace("acq-sag", "acq-sag_run-2")
        shutil.copy(t2_3, dup)
        expected["duplicate"] = "duplicate match"
        other3 = next(
            p for p in sorted(anat["sub-003"].glob("*.nii.gz")) if "acq-sag" not in p.name
        )
        img = nib.load(other3)
        _save_like(other3, np.zeros(img.shape, np.int16), img.affine)
        expected[other3.name] = "empty image"

        before = _snapshot(synth_copy)
        status = main(["check", str(synth_copy)])
        out = capsys.readouterr().out
        assert status == 1
        problems = [
            line.strip() for line in out.split("Problems")[1].splitlines()[1:] if line.strip()
        ]
        for name, reason in expected.items():
            assert any(name in line and reason in line for line in problems) or (
                name == "duplicate" and any(reason in line for line in problems)
            ), (name, reason, problems)
        assert any(line.startswith("sub-002: no T2Sag") for line in problems)
        assert not any(line.startswith("sub-004") for line in problems), "sub-004 is clean"
        assert "sub-004" in out.split("Problems")[0], "other subjects are still in the matrix"
        assert _snapshot(synth_copy) == before, "check must never write into the dataset"

    def test_json_report(self, synth_root, capsys):
        assert main(["check", str(synth_root), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["ok"] is True and report["problems"] == []
        assert report["cohorts"]["all"]["subjects"] == 4
        assert report["cohorts"]["all"]["T2Sag"] == 4
        first = report["subjects"][0]
        assert first["counts"]["T2Sag"] in (1, 2) and first["lesion_labels"] is True

    def test_orphan_label_and_unmatched_file(self, synth_copy):
        labels = synth_copy / "derivatives/labels/sub-004/anat"
        orphan = labels / "sub-004_acq-sag_T1w_seg-manual.nii.gz"
        if orphan.exists():
            orphan = labels / "sub-004_acq-cor_T1w_seg-manual.nii.gz"
        shutil.copy(next(labels.glob("*_seg-manual.nii.gz")), orphan)
        extra = synth_copy / "sub-004/anat/sub-004_acq-cor_FLAIR.nii.gz"
        shutil.copy(next((synth_copy / "sub-004/anat").glob("*.nii.gz")), extra)
        report = check_dataset(discover(synth_copy))
        assert any(p.file == orphan and "no matching image" in p.reason for p in report.problems)
        assert any("sub-004_acq-cor_FLAIR.nii.gz" in note for note in report.notes)

    def test_gzip_with_bad_crc_is_reported(self, synth_copy):
        path = sorted((synth_copy / "sub-004/anat").glob("*.nii.gz"))[0]
        raw = bytearray(gzip.decompress(path.read_bytes()))
        path.write_bytes(gzip.compress(bytes(raw))[:-8] + b"\0" * 8)  # wrong CRC and size
        report = check_dataset(discover(synth_copy))
        assert any(p.file == path for p in report.problems)

    def test_user_mistake_is_one_line_not_a_traceback(self, tmp_path, capsys):
        assert main(["check", str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cordfuse: error:") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_check_runs_as_a_console_script(synth_root):
    import subprocess
    import sys

    bin_dir = os.path.dirname(sys.executable)
    exe = os.path.join(bin_dir, "cordfuse")
    result = subprocess.run([exe, "check", str(synth_root)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "OK: no problems found." in result.stdout
