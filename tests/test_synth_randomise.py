"""Domain randomisation of the synthetic cohorts (``cordfuse synth --randomise``, issue 24.1)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from cordfuse.cli import main
from cordfuse.io import voxel_sizes
from cordfuse.ownership import MANIFEST
from cordfuse.sequences import PLANES
from cordfuse.synth import randomise as R
from cordfuse.synth.acquire import acquire
from cordfuse.synth.cohort import generate_subject, truth_document, write_cohort
from cordfuse.synth.protocol import CONTRASTS, LESION_SIGN

#: Small randomised subjects ``(seed, index, cohort)`` that together have lesions on hyperintense
#: (T2Sag, STIR, T2Ax) and hypointense (T1Sag, MP2RAGE) sequences, each about a second.
SUBJECTS = ((3, 2, "B"), (2, 5, "B"), (2, 2, "B"), (3, 3, "C"))


@pytest.fixture(scope="module")
def randomised():
    return [generate_subject(*args, randomise=True) for args in SUBJECTS]


def _digest(subject) -> str:
    """SHA-256 of every scan's image, affine, masks and partial-volume fractions, in plan order
    (file names left out: they may change without the data changing)."""
    h = hashlib.sha256()
    for stem, plan in subject.plans.items():
        scan = subject.scans[stem]
        h.update(f"{plan.sequence}:{plan.chunk}".encode())
        for array in (
            scan.image,
            scan.affine,
            scan.cord_mask,
            scan.lesion_mask,
            scan.cord_fraction,
            scan.lesion_fraction,
        ):
            h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _files(root):
    return {
        p.relative_to(root): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _local_contrast(scan, sequence) -> float | None:
    """Mean signal in the lesions' cores over the cord's around them (within 5 voxels), or None
    when the scan shows too little of either."""
    core = scan.lesion_fraction > 0.9
    cord = (scan.cord_fraction > 0.9) & (scan.lesion_fraction == 0)
    near = cord & ndimage.binary_dilation(core, iterations=5)
    if core.sum() < 5 or near.sum() < 5:
        return None
    image = scan.image.astype(float)
    return float(image[core].mean() / image[near].mean())


class TestDefaultUnchanged:
    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (
                (3, 2, "B"),
                {
                    "9099d185c90fac6d2ae1abe72ccb8f3100cd60477e0df39e58b9f908d8057d1f",
                    "dd2c36c7f8049e530fb709ee8c31561e0f362121bf323b15073fa512da3ba244",
                },
            ),
            (
                (5, 1, "C"),
                {
                    "3001134c6eaec7619543311ab257c71c298c3ea3d42dab65362f5f0177ec0c1e",
                    "9a57856963383c5e1a78dfec633e17432140b989e22044ec74573c7ecf901431",
                },
            ),
        ],
    )
    def test_default_subjects_match_the_generator_before_randomisation(self, args, expected):
        """The digests were recorded from the default generator *before* randomisation was
        added (numpy 2.4, x86-64), and the same digests came out of the code after it, together
        with the same bytes for every file of a 2-subject cohort (seed 7). Studies and tests rely
        on these cohorts: a change here means every default cohort changed. Numerical libraries
        whose random streams or float kernels differ change the bytes too: each subject has one
        digest per library set it was recorded on (the first: the original; the second: numpy
        2.4.6 and scipy 1.17.1, recorded from commit d2e50ad, whose generator is today's). Add
        one only from a checkout of the code before the change under test, never from the
        change itself."""
        assert _digest(generate_subject(*args)) in expected

    def test_default_path_never_draws_from_the_randomisation(self, tmp_path, monkeypatch):
        def refuse(*args, **kwargs):
            raise AssertionError("a default cohort drew a randomised stream")

        monkeypatch.setattr(R, "stream", refuse)
        root = write_cohort(tmp_path / "bids", subjects=1, seed=8, cohorts=("B",))
        truth = json.loads((root / "derivatives/synth/sub-001_truth.json").read_text())
        assert "randomised" not in truth
        description = json.loads((root / "dataset_description.json").read_text())
        assert "randomised" not in description["GeneratedBy"][0]["Description"]

    def test_randomised_subject_keeps_the_subjects_own_draws(self, randomised):
        """Randomisation draws from streams of its own: the anatomy's draws, the scans a
        subject has, their motion and displacement are the default subject's."""
        for args, subject in zip(SUBJECTS[:2], randomised[:2], strict=True):
            default = generate_subject(*args)
            assert subject.plans.keys() == default.plans.keys()
            assert subject.anatomy.levels == default.anatomy.levels
            scale = subject.randomised.cord_scale
            for lesion, other in zip(subject.anatomy.lesions, default.anatomy.lesions, strict=True):
                assert lesion.radii == other.radii and lesion.visibility == other.visibility
                assert lesion.center[2] == other.center[2]
                np.testing.assert_allclose(
                    np.array(lesion.center[:2]), np.array(other.center[:2]) * scale, rtol=1e-5
                )
            for stem, plan in subject.plans.items():
                np.testing.assert_array_equal(plan.motion, default.plans[stem].motion)
                assert plan.displacement == default.plans[stem].displacement


class TestDeterminism:
    def test_same_seed_same_subject_other_seed_other_draws(self, randomised):
        again = generate_subject(*SUBJECTS[0], randomise=True)
        assert _digest(again) == _digest(randomised[0])
        assert again.randomised.record() == randomised[0].randomised.record()
        other = generate_subject(4, 2, "B", randomise=True)
        assert other.randomised.record() != randomised[0].randomised.record()

    def test_same_seed_same_bytes(self, tmp_path):
        kwargs = dict(subjects=1, seed=8, cohorts=("B",), randomise=True)
        a = _files(write_cohort(tmp_path / "a", **kwargs))
        b = _files(write_cohort(tmp_path / "b", **kwargs))
        assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
        default = _files(write_cohort(tmp_path / "c", subjects=1, seed=8, cohorts=("B",)))
        images = [k for k in a if str(k).endswith("_T2w.nii.gz") and "derivatives" not in str(k)]
        assert images and all(a[k] != default[k] for k in images)


class TestRecordedDraws:
    def test_every_draw_in_the_truth_within_its_range(self, randomised):
        for args, subject in zip(SUBJECTS, randomised, strict=True):
            record = truth_document(subject, args[0])["randomised"]
            assert R.CORD_SCALE[0] <= record["cord_scale"] <= R.CORD_SCALE[1]
            assert R.CANAL_SCALE[0] <= record["canal_scale"] <= R.CANAL_SCALE[1]
            low, high = R.BACKGROUND_LABELS
            assert low <= len(record["background_labels"]) <= high
            assert record["scans"].keys() == subject.plans.keys()
            for stem, scan in record["scans"].items():
                self._check_scan(scan, subject, stem)

    @staticmethod
    def _check_scan(scan, subject, stem):
        def within(value, bounds):
            return bounds[0] - 1e-6 <= value <= bounds[1] + 1e-6

        sequence = scan["sequence"]
        bright = LESION_SIGN[sequence] > 0
        means, spreads = scan["means"], scan["spreads"]
        wm = means["wm"]
        assert within(wm, R.CORD_MEAN)
        assert within(means["csf"] / wm, R.CSF_RATIO_BRIGHT if bright else R.CSF_RATIO_DARK)
        assert within(means["gm"] / wm, R.GM_RATIO)
        assert within(means["air"], R.AIR_MEAN)
        for name in ("body", "disc", "posterior", "fat"):
            assert within(means[name], R.TISSUE_MEAN)
        labels = [k for k in means if k.startswith("label-")]
        assert len(labels) == len(subject.randomised.labels)
        for name, spread in spreads.items():
            cord = name in R.CORD_TISSUES
            assert within(spread, R.CORD_SPREAD if cord else R.TISSUE_SPREAD), name
        reference = max(wm, means["gm"]) if bright else min(wm, means["gm"])
        factors = scan["lesion_factors"]
        assert len(factors) == len(subject.anatomy.lesions)
        if bright:
            assert scan["lesion_contrast"] >= R.LESION_MIN
            high = R.LESION_BEYOND_CSF * means["csf"] / reference
            assert scan["lesion_contrast"] <= high * (1 + 1e-4)
            assert all(R.LESION_MIN - 1e-6 <= f <= scan["lesion_contrast"] + 1e-6 for f in factors)
        else:
            assert scan["lesion_contrast"] <= 1 / R.LESION_MIN + 1e-6
            low = means["csf"] / reference / R.LESION_BEYOND_CSF
            assert scan["lesion_contrast"] >= low * (1 - 1e-4)
            assert all(
                scan["lesion_contrast"] - 1e-6 <= f <= 1 / R.LESION_MIN + 1e-6 for f in factors
            )
        np.testing.assert_allclose(means["lesion"], reference * scan["lesion_contrast"], rtol=1e-4)
        assert within(scan["lesion_heterogeneity"], R.LESION_HETEROGENEITY)
        assert within(scan["lesion_edge"], R.LESION_EDGE)
        assert within(scan["gamma"], R.GAMMA) and within(scan["peak_signal"], R.PEAK_SIGNAL)
        assert within(scan["bias_sd"], R.BIAS_SD) and len(scan["bias"]) == 5
        assert within(scan["snr"], R.SNR) and within(scan["blur_sigma_mm"], R.BLUR_MM)
        assert within(scan["slice_profile_sigma"], R.SLICE_PROFILE)
        assert within(scan["ringing"], R.RINGING) and scan["ringing_axis"] in (0, 1)
        resolution = R.RESOLUTION[PLANES[sequence]]
        assert within(scan["inplane_mm"], resolution["inplane_mm"])
        assert within(scan["thickness_mm"], resolution["thickness_mm"])
        # the scan is on the recorded grid, and its scanner entry is what was used
        spacing = voxel_sizes(subject.plans[stem].affine)
        np.testing.assert_allclose(
            spacing, [scan["inplane_mm"], scan["inplane_mm"], scan["thickness_mm"]], atol=1e-5
        )
        scanner = subject.plans[stem].scanner
        assert scanner["gamma"] == pytest.approx(scan["gamma"], abs=1e-6)
        assert scanner["noise"] == pytest.approx(scan["noise"], abs=1e-6)
        assert scanner["gain"] == pytest.approx(scan["gain"], abs=1e-5)

    def test_resolution_and_cord_size_vary(self, randomised):
        inplane, thickness, cord_scales = set(), set(), set()
        for subject in randomised:
            cord_scales.add(subject.randomised.cord_scale)
            for stem, plan in subject.plans.items():
                spacing = voxel_sizes(plan.affine)
                inplane.add(round(float(spacing[0]), 3))
                thickness.add(round(float(spacing[2]), 3))
                scan = subject.scans[stem]
                assert scan.image.shape == scan.cord_mask.shape == tuple(plan.shape)
        assert len(inplane) >= 5 and len(thickness) >= 5 and len(cord_scales) == len(randomised)


class TestPhysics:
    def test_lesions_on_the_physical_side_of_the_cord_in_the_signal(self, randomised):
        """Before the scanner degrades it (no blur, ringing, bias or noise to speak of), every
        lesion core is brighter than the cord around it where lesions are hyperintense and
        darker on T1Sag and MP2RAGE: the ordering the generator keeps."""
        seen = set()
        for subject in randomised:
            for stem, plan in subject.plans.items():
                if _local_contrast(subject.scans[stem], plan.sequence) is None:
                    continue  # no lesion core to measure: not worth imaging again
                look = dataclasses.replace(
                    subject.randomised.scans[stem],
                    bias=(0.0,) * 5,
                    snr=1e6,
                    blur_sigma_mm=0.0,
                    slice_profile_sigma=0.0,
                    ringing=0.0,
                )
                scan = acquire(
                    subject.anatomy,
                    plan.affine,
                    plan.shape,
                    CONTRASTS[plan.sequence],
                    sequence=plan.sequence,
                    motion=plan.motion,
                    displacement=plan.displacement,
                    scanner=plan.scanner,
                    rng=np.random.default_rng(0),
                    appearance=look,
                )
                contrast = _local_contrast(scan, plan.sequence)
                if contrast is None:
                    continue
                seen.add(plan.sequence)
                assert (contrast - 1) * LESION_SIGN[plan.sequence] > 0.05, (stem, contrast)
        assert {"T2Sag", "STIR", "T1Sag", "MP2RAGE"} <= seen

    def test_stored_lesions_differ_from_the_cord_on_average(self, randomised):
        """On the stored images (blurred, ringing, biased, noisy), lesions are still brighter
        than the cord around them on average on hyperintense sequences, darker on the others."""
        contrasts: dict[int, list[float]] = {1: [], -1: []}
        for subject in randomised:
            for stem, plan in subject.plans.items():
                contrast = _local_contrast(subject.scans[stem], plan.sequence)
                if contrast is not None:
                    contrasts[LESION_SIGN[plan.sequence]].append(contrast)
        assert len(contrasts[1]) >= 4 and len(contrasts[-1]) >= 2
        assert np.mean(contrasts[1]) > 1.1 and np.mean(contrasts[-1]) < 0.9

    def test_csf_on_its_side_of_the_cord_and_air_dark(self, randomised):
        for subject in randomised:
            for scan in subject.randomised.record()["scans"].values():
                means = scan["means"]
                bright = LESION_SIGN[scan["sequence"]] > 0
                cord = (means["wm"], means["gm"])
                assert means["csf"] > max(cord) if bright else means["csf"] < min(cord)
                assert means["air"] < min(cord)


class TestLabelsExact:
    def test_appearance_leaves_the_partial_volume_truth_alone(self):
        """The same anatomy on the same grid, imaged with a randomised appearance, has the very
        same cord and lesion fractions (hence masks) as the default scan."""
        subject = generate_subject(3, 2, "B")
        ((stem, plan),) = subject.plans.items()
        draws = R.Randomisation.draw(3, 2)
        look = R.SequenceLook.draw(R.stream(3, 2, 1, 0), "T2Sag", subject.anatomy.lesions, 3)
        scan_look = R.ScanLook.draw(R.stream(3, 2, 2, 0, 0), look, draws.labels[:3])
        scan = acquire(
            subject.anatomy,
            plan.affine,
            plan.shape,
            CONTRASTS["T2Sag"],
            sequence="T2Sag",
            motion=plan.motion,
            displacement=plan.displacement,
            scanner=plan.scanner,
            rng=np.random.default_rng(0),
            appearance=scan_look,
        )
        default = subject.scans[stem]
        assert subject.anatomy.lesions and default.lesion_mask.any()
        np.testing.assert_array_equal(scan.cord_fraction, default.cord_fraction)
        np.testing.assert_array_equal(scan.lesion_fraction, default.lesion_fraction)
        assert not np.array_equal(scan.image, default.image)

    def test_lesion_truth_inside_the_cord_on_every_randomised_t2sag(self, randomised):
        for subject in randomised:
            for stem in subject.stems("T2Sag"):
                scan = subject.scans[stem]
                assert not (scan.lesion_mask.astype(bool) & ~scan.cord_mask.astype(bool)).any()


class TestEntryPoints:
    def test_cli_writes_a_randomised_cohort(self, tmp_path, capsys):
        out = tmp_path / "cohort"
        argv = ["synth", str(out), "--subjects", "1", "--seed", "8", "--cohorts", "B"]
        assert main([*argv, "--randomise"]) == 0
        assert "Wrote 1 randomised synthetic subjects" in capsys.readouterr().out
        truth = json.loads((out / "derivatives/synth/sub-001_truth.json").read_text())
        assert set(truth["randomised"]["scans"]) == set(truth["scans"])
        description = json.loads((out / "dataset_description.json").read_text())
        assert description["GeneratedBy"][0]["Description"].endswith("randomised")

    def test_study_config_reads_and_writes_randomise(self, tmp_path):
        from cordfuse.study.config import StudyConfig

        config = StudyConfig.from_mapping(
            {"synthetic": {"subjects": 6, "randomise": True}}, tmp_path
        )
        assert config.synthetic_randomise
        assert config.to_mapping()["synthetic"]["randomise"] is True
        assert StudyConfig.from_mapping(config.to_mapping(), tmp_path) == config
        assert not StudyConfig.from_mapping(
            {"synthetic": {"subjects": 6}}, tmp_path
        ).synthetic_randomise

    @pytest.mark.slow
    def test_randomised_cohort_checks_and_prepares(self, tmp_path):
        root = write_cohort(
            tmp_path / "bids", subjects=2, seed=3, cohorts=("B", "C"), randomise=True
        )
        assert main(["check", str(root)]) == 0
        out = tmp_path / "prepared"
        assert main(["prepare", str(root), str(out), "--preset", "small", "--jobs", "1"]) == 0
        dataset = json.loads((out / "dataset.json").read_text())
        assert dataset["failed"] == [] and len(dataset["subjects"]) == 2
        assert all((out / sub / "prepared.npz").exists() for sub in ("sub-001", "sub-002"))
