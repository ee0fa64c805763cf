"""Lesions painted into real healthy scans (the real-scan bench's truth): the right size and
contrast, only inside the cord, deterministic positions, and they survive a thick re-acquisition."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from conftest import require_real_data
from cordfuse.synth.clinical import ClinicalGeometry, reacquire
from cordfuse.synth.paint import (
    PaintedLesion,
    draw_lesions,
    lesion_fraction,
    local_cord_signal,
    paint_lesion,
)


def test_the_fraction_holds_the_ellipsoids_volume():
    lesion = PaintedLesion((10.0, 10.0, 15.0), length_mm=12.0, width_mm=4.0, contrast=2.0)
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    fraction = lesion_fraction((40, 40, 60), affine, lesion)
    volume = fraction.sum() * 0.125
    assert volume == pytest.approx(4 / 3 * np.pi * 2 * 2 * 6, rel=0.1)
    # on a 3 mm sagittal grid the same lesion keeps its volume as partial volume
    thick = np.diag([3.0, 0.5, 0.5, 1.0])
    assert lesion_fraction((8, 40, 60), thick, lesion).sum() * 0.75 == pytest.approx(
        volume, rel=0.1
    )
    assert fraction.max() == 1.0 and fraction.min() == 0.0


@pytest.fixture(scope="module")
def real_t2():
    root = require_real_data()
    image = nib.load(root / "sct-errsm30" / "t2.nii.gz")
    cord = np.asarray(nib.load(root / "sct-errsm30" / "t2_seg-manual.nii.gz").dataobj) > 0
    return image.get_fdata(dtype=np.float32), image.affine, cord


def test_a_painted_lesion_is_brighter_by_its_contrast_and_only_in_the_cord(real_t2):
    image, affine, cord = real_t2
    (lesion,) = draw_lesions(affine, cord, [1.8], np.random.default_rng(0))
    painted, mask = paint_lesion(image, affine, cord, lesion)
    assert mask.any() and not (mask & ~cord).any()
    changed = painted != image
    assert not (changed & ~cord).any(), "nothing outside the cord changes"
    core = lesion_fraction(image.shape, affine, lesion) >= 0.99
    local = local_cord_signal(image, affine, cord, lesion.centre_mm[2])
    np.testing.assert_allclose(painted[core & cord], 1.8 * local, rtol=1e-5)


def test_drawn_lesions_are_deterministic_inside_the_cord_and_away_from_its_ends(real_t2):
    _, affine, cord = real_t2
    first = draw_lesions(affine, cord, [1.5, 2.0, 3.0], np.random.default_rng(7), per_contrast=3)
    again = draw_lesions(affine, cord, [1.5, 2.0, 3.0], np.random.default_rng(7), per_contrast=3)
    assert first == again and len(first) == 9
    assert [lesion.contrast for lesion in first] == [1.5] * 3 + [2.0] * 3 + [3.0] * 3
    z = nib.affines.apply_affine(affine, np.argwhere(cord))[:, 2]
    inverse = np.linalg.inv(affine)
    for lesion in first:
        assert z.min() + 10 <= lesion.centre_mm[2] <= z.max() - 10
        assert 3 <= lesion.length_mm <= 15 and 1 <= lesion.width_mm <= 5
        voxel = np.round(nib.affines.apply_affine(inverse, lesion.centre_mm)).astype(int)
        assert cord[tuple(voxel)]


def test_a_painted_lesion_survives_a_thick_clinical_reacquisition(real_t2):
    image, affine, cord = real_t2
    lesion = draw_lesions(affine, cord, [2.0], np.random.default_rng(3))[0]
    lesion = PaintedLesion(lesion.centre_mm, 12.0, 4.0, 2.0)  # a lesion a 3 mm slice can hold
    painted, mask = paint_lesion(image, affine, cord, lesion)
    geometry = ClinicalGeometry("sagittal", 3.0, 0.7)
    thick, thick_affine = reacquire(painted, affine, geometry)
    thick_mask, _ = reacquire(mask, affine, geometry, mask=True)
    plain, _ = reacquire(image, affine, geometry)
    assert thick_mask.any()
    # the lesion is still brighter than the same place unpainted, averaged over the slice
    assert thick[thick_mask > 0].mean() > 1.2 * plain[thick_mask > 0].mean()


def test_an_irregular_lesion_is_frayed_and_textured_yet_only_in_the_cord():
    """The bench's lesion model a painting-trained model never saw: a frayed edge and a
    heterogeneous interior around the asked contrast, drawn from the seed, inside the cord."""
    shape, affine = (40, 40, 80), np.diag([0.5, 0.5, 0.5, 1.0])
    ii, jj = np.ogrid[:40, :40]
    cord = np.broadcast_to(((ii - 20) ** 2 + (jj - 20) ** 2 <= 49)[..., None], shape)
    image = np.full(shape, 100.0, np.float32)
    lesion = PaintedLesion((10.0, 10.0, 20.0), length_mm=14.0, width_mm=6.0, contrast=2.0)
    smooth, smooth_mask = paint_lesion(image, affine, cord, lesion)

    def irregular(seed, ragged=0.6, texture=0.15):
        rng = np.random.default_rng(seed)
        return paint_lesion(image, affine, cord, lesion, ragged=ragged, texture=texture, rng=rng)

    painted, mask = irregular(0)
    np.testing.assert_array_equal(painted, irregular(0)[0])
    assert not np.array_equal(painted, irregular(1)[0])
    assert not ((painted != image) & ~cord).any() and not (mask & ~cord).any()
    # the edge moved both ways: voxels of the smooth lesion lost, voxels outside it gained
    _, frayed = irregular(0, texture=0.0)
    lost, gained = (smooth_mask > frayed).sum(), (frayed > smooth_mask).sum()
    assert lost > 0 and gained > 0 and frayed.sum() > 0.5 * smooth_mask.sum()
    # where the smooth lesion fills the voxel, the textured signal spreads around twice the cord's
    full = lesion_fraction(shape, affine, lesion) >= 0.99
    textured, textured_mask = irregular(0, ragged=0.0)
    np.testing.assert_array_equal(textured_mask, smooth_mask)
    inside = textured[full] / 200.0
    assert abs(np.median(inside) - 1.0) < 0.06 and 0.08 < inside.std() < 0.22
    assert np.ptp(smooth[full]) < 0.01 * 200
    with pytest.raises(ValueError, match="needs rng"):
        paint_lesion(image, affine, cord, lesion, ragged=0.6)
