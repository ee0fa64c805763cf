"""Coverage is an input (issue 21): each sequence's crop carries the voxels its scan covers, and
an uncovered voxel never reaches a network looking like a normal cord voxel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cordfuse.errors import CordfuseError
from cordfuse.preprocess.crop import CropGeometry
from cordfuse.preprocess.fusion import FusedSequence, Slab
from cordfuse.preprocess.pipeline import (
    PreparedSubject,
    PrepConfig,
    intensity_stats,
    is_prepared_with,
    sample_crop,
)
from cordfuse.sequences import SEQUENCES
from cordfuse.training.data import LIGHT, PatchDataset, SubjectArrays, normalise

GEOMETRY = CropGeometry(spacing=1.0, size=8, z0=-10.0, nz=40)  # slices at z = -10 ... 29 mm
CENTRES = np.full((GEOMETRY.nz, 2), 20.0)


def partial_slab() -> Slab:
    """A scan that covers x in [-0.5, 21.5] and z in [-0.5, 19.5] mm (identity affine), with a
    slice of true zero signal at z = 5 mm."""
    data = np.random.default_rng(0).uniform(50, 150, (22, 40, 20)).astype(np.float32)
    data[:, :, 5] = 0.0
    return Slab.from_array(data, np.eye(4))


def test_coverage_of_a_partial_field_of_view():
    crop, coverage = sample_crop(FusedSequence([partial_slab()]), GEOMETRY, CENTRES)
    # Crop voxel (i, j, k) sits at x = 20 - (i - 3.5), z = -10 + k.
    x = 20 - (np.arange(8) - 3.5)
    z = GEOMETRY.z
    expected = (x[:, None, None] <= 21.5) & (z[None, None, :] >= -0.5) & (z <= 19.5)
    expected = np.broadcast_to(expected, coverage.shape)
    assert coverage.dtype == bool
    np.testing.assert_array_equal(coverage, expected)
    assert not coverage[:2].any() and coverage[2:, :, 10:30].all()
    # Zero signal inside the field of view is covered; zero outside it is not.
    k5 = int(np.flatnonzero(z == 5.0)[0])
    assert (crop[2:, :, k5] == 0).all() and coverage[2:, :, k5].all()
    assert (crop[~coverage] == 0).all()


def test_intensity_statistics_count_only_covered_voxels():
    # The partial slab covers slices z = 0 ... 19 mm, and in them not the core's row i = 1
    # (x = 22.5 mm): those voxels are zero in the crop but are not cord signal.
    crop, coverage = sample_crop(FusedSequence([partial_slab()]), GEOMETRY, CENTRES)
    ii, jj = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    disk = np.hypot(ii - 3.5, jj - 3.5) <= 3.0
    assert not coverage[1][disk[1]].any() and coverage[2:, :, 10:30].all()
    stats = intensity_stats(crop, coverage, GEOMETRY)
    covered_core = crop[disk[:, :, None] & coverage]
    assert stats["mean"] == pytest.approx(float(covered_core.mean()), rel=1e-6)
    assert stats["std"] == pytest.approx(float(covered_core.std()), rel=1e-6)
    assert stats["covered_slices"] == 20
    # the percentiles are those of every covered voxel, the covered zero-signal slice included
    assert stats["p005"] == pytest.approx(float(np.percentile(crop[coverage], 0.5)))
    assert stats["p995"] == pytest.approx(float(np.percentile(crop[coverage], 99.5)))
    assert stats["p005"] == 0.0, "the covered slice of zero signal is signal"
    # the core of every slice with a non-zero voxel, as layout 2 took it: its uncovered zeros
    # pull the mean down and spread the values
    slices = np.abs(crop).sum(axis=(0, 1)) > 0
    with_zeros = crop[disk][:, slices]
    assert with_zeros.mean() < 0.95 * stats["mean"] and with_zeros.std() > 1.2 * stats["std"]
    # a crop no slab covers has no statistics to give: zeros (normalise then keeps a unit scale)
    none = intensity_stats(np.zeros_like(crop), np.zeros_like(coverage), GEOMETRY)
    assert none["mean"] == 0.0 and none["std"] == 0.0 and none["covered_slices"] == 0


def hand_made_subject() -> PreparedSubject:
    crop, coverage = sample_crop(FusedSequence([partial_slab()]), GEOMETRY, CENTRES)
    t2 = np.random.default_rng(1).uniform(50, 150, crop.shape).astype(np.float32)
    label = np.zeros(crop.shape, np.uint8)
    label[3:5, 3:5, 14:17] = 1
    return PreparedSubject(
        "sub-hand",
        None,
        GEOMETRY,
        {"T2Sag": t2, "STIR": crop},
        {"T2Sag": CENTRES, "STIR": CENTRES},
        label,
        {"T2Sag": {"mean": 100.0, "std": 20.0}, "STIR": {"mean": 100.0, "std": 25.0}},
        {},
        PrepConfig(spacing=1.0, crop_size=8),
        coverage={"T2Sag": np.ones(crop.shape, bool), "STIR": coverage},
    )


def test_normalise_gives_the_coverage_channels():
    prepared = hand_made_subject()
    stir = prepared.coverage["STIR"]
    images, available = normalise(prepared, list(SEQUENCES), coverage=True)
    assert images.shape == (12, 8, 8, 40)
    assert available.tolist() == [True, True, False, False, False, False]
    np.testing.assert_array_equal(images[6], 1.0)  # T2Sag covers its crop
    np.testing.assert_array_equal(images[7], stir.astype(np.float32))
    assert (images[1][~stir] == 0).all()
    # A covered voxel of zero signal is a dark voxel (its z-score), not "nothing here".
    k5 = 15
    np.testing.assert_allclose(images[1][2:, :, k5], (0 - 100.0) / 25.0)
    assert not images[2:6].any() and not images[8:].any(), "missing sequences: all zero"
    plain, _ = normalise(prepared, list(SEQUENCES))
    np.testing.assert_array_equal(plain, images[:6])


def arrays(prepared: PreparedSubject) -> SubjectArrays:
    images, available = normalise(prepared, list(SEQUENCES), coverage=True)
    assert prepared.label is not None
    return SubjectArrays(
        prepared.subject, None, images, available, prepared.label, np.argwhere(prepared.label)
    )


@pytest.mark.parametrize("augment", [False, True])
def test_patches_never_show_uncovered_voxels_as_cord(augment):
    subject = arrays(hand_made_subject())
    dataset = PatchDataset(
        [subject], (8, 8, 16), seed=0, foreground_fraction=0.5, augment=augment, augmentation=LIGHT
    )
    seen_uncovered = 0
    for n in range(40):
        image, _, available = dataset[n]
        image = image.numpy()
        cover = image[6:]
        assert set(np.unique(cover)) <= {0.0, 1.0}
        assert (image[:6][cover == 0] == 0).all(), "an uncovered voxel carries signal"
        assert not cover[~available.numpy()].any(), "a missing sequence has no coverage"
        seen_uncovered += int((cover[1] == 0).sum())
    assert seen_uncovered > 0, "the patches reached STIR's uncovered voxels"


def test_sequence_dropout_hides_the_coverage_too():
    subject = arrays(hand_made_subject())
    dataset = PatchDataset(
        [subject], (8, 8, 16), seed=0, foreground_fraction=0.5, augment=False, sequence_dropout=0.9
    )
    hidden = 0
    for n in range(30):
        image, _, available = dataset[n]
        if not available[1]:
            hidden += 1
            assert not image[1].any() and not image[7].any()
        assert available[0] and image[6].all(), "T2Sag is never dropped"
    assert hidden > 0


def test_old_prepared_subjects_are_refused_in_one_line(tmp_path):
    prepared = hand_made_subject()
    path = tmp_path / "sub-hand" / "prepared.npz"
    path.parent.mkdir()
    prepared.save(path)
    loaded = PreparedSubject.load(path)
    np.testing.assert_array_equal(loaded.coverage["STIR"], prepared.coverage["STIR"])
    assert is_prepared_with(path, prepared.config) is False  # no native T2Sag in this one
    with np.load(path) as npz:
        old = {k: npz[k] for k in npz.files if not k.startswith("coverage_")}
    meta = json.loads(old["meta"].tobytes().decode())
    del meta["format"]
    old["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **old)
    with pytest.raises(CordfuseError, match="coverage masks.*prepare again") as error:
        PreparedSubject.load(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    # layout 2 had coverage masks but statistics over uncovered voxels too
    meta["format"] = 2
    old["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **old)
    with pytest.raises(CordfuseError, match="outside the field of view.*prepare again"):
        PreparedSubject.load(path)
    # a layout from a newer cordfuse is not called older
    meta["format"] = 99
    old["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(path, **old)
    with pytest.raises(CordfuseError, match="layout 99, which this cordfuse does not know"):
        PreparedSubject.load(path)


def test_a_model_trained_on_crops_normalised_otherwise_is_flagged(tmp_path):
    import torch

    from cordfuse.checkpoint import Checkpoint, initial_network
    from cordfuse.inference import load_model
    from cordfuse.nn.networks import NET_PRESETS
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.data import NORMALISATION

    config = TrainConfig(model="baseline", preset="small")
    weights = initial_network(config, config.net, ["T2Sag"]).state_dict()
    layout_2 = "z-score per sequence on the cord core (disk of 3 mm around the centreline)"
    for name, normalisation in (("now", NORMALISATION), ("before", layout_2)):
        Checkpoint(
            weights,
            config,
            NET_PRESETS["small"],
            ["T2Sag"],
            PrepConfig(),
            normalisation=normalisation,
        ).save(tmp_path / name / "checkpoint_best.pt")
    assert load_model(tmp_path / "now", torch.device("cpu")).warnings == []
    (warning,) = load_model(tmp_path / "before", torch.device("cpu")).warnings
    assert "normalised otherwise" in warning and "retrain" in warning and "\n" not in warning


def test_diagnose_counts_uncovered_voxels_from_the_stored_coverage():
    from cordfuse.diagnostics import coverage

    prepared = hand_made_subject()
    stir = prepared.coverage["STIR"]
    result = coverage([prepared])
    assert result["STIR"]["subjects"] == 1
    # the covered slice of zero signal is not "outside the field of view"
    assert result["STIR"]["mean_uncovered_share"] == pytest.approx(1.0 - stir.mean())
    assert (prepared.images["STIR"] == 0).mean() > 1.0 - stir.mean() + 0.01
    assert result["T2Sag"]["mean_uncovered_share"] == 0.0
    assert result["T1Sag"] == {"subjects": 0, "mean_uncovered_share": None}
