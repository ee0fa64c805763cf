"""cordfuse.qc: every QC picture shows a volume the same way, whatever its storage order."""

from __future__ import annotations

import io
import os
import struct
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from cordfuse.figures import pyplot
from cordfuse.qc import (
    busiest_slice,
    canonical,
    draw_image,
    draw_outline,
    spread_slices,
    view,
    window,
    windowed,
    write_png,
)

SHAPE = (6, 7, 8)  # x (to the right), y (anterior), z (superior)
SPACING = (1.0, 0.5, 2.0)


def canonical_volume():
    """An image with no symmetry, a mask (a lesion through x = 4) and their RAS+ affine."""
    rng = np.random.default_rng(0)
    data = rng.uniform(10, 100, SHAPE).astype(np.float32) + np.arange(SHAPE[2])[None, None] * 20
    mask = np.zeros(SHAPE, np.uint8)
    mask[3:5, 2:5, 1:6] = 1
    mask[4, 2:6, 5] = 1
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-10.0, 20.0, 5.0)
    return data, mask, affine


def stored_otherwise(volume, affine):
    """The same voxels stored with axes (I, R, P): z first and reversed, then x, then y reversed;
    the affine says so, so every voxel keeps its world position."""
    _, ny, nz = volume.shape
    twin = volume[:, ::-1, ::-1].transpose(2, 0, 1)
    to_canonical = np.array(
        [[0, 1, 0, 0], [0, 0, -1, ny - 1], [-1, 0, 0, nz - 1], [0, 0, 0, 1]], float
    )
    return np.ascontiguousarray(twin), affine @ to_canonical


def pixels(png: bytes) -> np.ndarray:
    return pyplot().imread(io.BytesIO(png), format="png")


class TestCanonical:
    def test_a_volume_stored_otherwise_comes_back_as_its_canonical_twin(self):
        data, mask, affine = canonical_volume()
        twin, twin_affine = stored_otherwise(data, affine)
        assert twin.shape != data.shape and nib.aff2axcodes(twin_affine) == ("I", "R", "P")
        back, back_affine = canonical(twin, twin_affine)
        np.testing.assert_array_equal(back, data)
        np.testing.assert_allclose(back_affine, affine)
        labels, _ = canonical(*stored_otherwise(mask, affine))
        np.testing.assert_array_equal(labels, mask)
        assert labels.dtype == np.uint8

    def test_as_nibabel_does_for_an_oblique_affine(self):
        data, _, affine = canonical_volume()
        angle = np.deg2rad(20)
        rotation = np.eye(4)
        rotation[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
        twin, twin_affine = stored_otherwise(data, rotation @ affine)
        reference = nib.as_closest_canonical(nib.Nifti1Image(twin, twin_affine))
        back, back_affine = canonical(twin, twin_affine)
        np.testing.assert_array_equal(back, np.asarray(reference.dataobj))
        np.testing.assert_allclose(back_affine, reference.affine)


class TestView:
    @pytest.mark.parametrize(
        ("plane", "index", "corner", "aspect"),
        [
            ("sagittal", 2, (2, 6, 7), SPACING[2] / SPACING[1]),  # anterior right, superior up
            ("coronal", 3, (5, 3, 7), SPACING[2] / SPACING[0]),  # the right to the right
            ("axial", 4, (5, 6, 4), SPACING[1] / SPACING[0]),  # anterior up
        ],
    )
    def test_the_top_right_corner_is_where_the_plane_says(self, plane, index, corner, aspect):
        volume = np.zeros(SHAPE)
        volume[corner] = 1
        image, shown_aspect = view(volume, SPACING, plane, index)
        assert image[-1, -1] == 1 and image.sum() == 1  # origin="lower": the last row is on top
        assert shown_aspect == pytest.approx(aspect)


class TestSlices:
    def test_busiest_slice_follows_the_weight_and_falls_back_to_the_middle(self):
        _, mask, _ = canonical_volume()
        assert busiest_slice(mask) == 4
        assert busiest_slice(mask, axis=2) == 5
        weight = mask.astype(float)
        weight[1, 0, 0] = 100.0
        assert busiest_slice(weight) == 1
        assert busiest_slice(np.zeros(SHAPE)) == SHAPE[0] // 2

    def test_spread_slices_span_the_mask(self):
        _, mask, _ = canonical_volume()
        assert spread_slices(mask) == [1, 3, 5]
        assert spread_slices(mask, count=2, axis=0) == [3, 4]
        assert spread_slices(np.zeros(SHAPE)) == [SHAPE[2] // 2]


class TestWindow:
    def test_the_percentiles_of_the_nonzero_voxels_map_to_0_and_1(self):
        values = np.arange(1.0, 102.0)  # the 10th percentile is 11, the 90th 91
        image = np.concatenate([values, np.zeros(299)]).reshape(20, 20)  # padding is ignored
        assert window(image, (10, 90)) == (11.0, 91.0)
        shown = windowed(image, (10, 90))
        assert shown.dtype == np.float32 and shown.shape == image.shape
        for value, expected in ((11, 0.0), (91, 1.0), (51, 0.5), (3, 0.0), (0, 0.0), (101, 1.0)):
            assert shown[image == value] == pytest.approx(expected), value

    def test_empty_and_constant_images_stay_finite(self):
        assert window(np.zeros((3, 3))) == (0.0, 1.0)
        assert np.all(windowed(np.zeros((3, 3))) == 0)
        constant = windowed(np.full((3, 3), 7.0))
        assert np.all(np.isfinite(constant)) and constant.min() >= 0 and constant.max() <= 1


class TestDrawing:
    def test_the_outline_encloses_exactly_the_masks_voxels(self):
        from matplotlib.path import Path

        mask = np.zeros((9, 11), bool)
        mask[1:7, 1:3] = True  # an L
        mask[5:7, 3:6] = True
        mask[2:4, 8:10] = True  # and an island
        fig, ax = pyplot().subplots()
        draw_image(ax, np.random.default_rng(1).uniform(1, 2, mask.shape))
        assert draw_outline(ax, mask, "red")
        (contours,) = ax.collections
        rows, cols = np.indices(mask.shape)
        centres = np.column_stack([cols.ravel(), rows.ravel()])  # x = column, y = row
        inside = np.zeros(mask.size, bool)
        for path in contours.get_paths():
            for polygon in path.to_polygons():
                inside ^= Path(polygon).contains_points(centres)
        np.testing.assert_array_equal(inside.reshape(mask.shape), mask)
        assert ax.images[0].origin == "lower"
        pyplot().close(fig)

    def test_an_empty_mask_draws_nothing(self):
        fig, ax = pyplot().subplots()
        assert not draw_outline(ax, np.zeros((4, 4)), "red")
        assert not ax.collections
        pyplot().close(fig)

    def test_draw_image_shows_the_windowed_slice(self):
        image = np.random.default_rng(2).uniform(1, 50, (5, 8))
        fig, ax = pyplot().subplots()
        draw_image(ax, image, aspect=2.0)
        np.testing.assert_array_equal(ax.images[0].get_array(), windowed(image))
        assert not ax.axison
        pyplot().close(fig)


class TestWritePng:
    def test_the_png_has_the_figures_size_and_the_figure_is_closed(self, tmp_path):
        plt = pyplot()
        fig = plt.figure(figsize=(2, 3))
        path = tmp_path / "deep" / "qc.png"
        write_png(fig, path, dpi=50)
        header = path.read_bytes()
        assert header[:8] == b"\x89PNG\r\n\x1a\n"
        assert struct.unpack(">II", header[16:24]) == (100, 150)
        assert not plt.fignum_exists(fig.number)

    def test_an_interrupted_write_leaves_the_old_picture_and_no_stray_file(
        self, tmp_path, monkeypatch
    ):
        path = tmp_path / "qc.png"
        path.write_bytes(b"old picture")

        def interrupted(*args):
            raise OSError("disk full")

        monkeypatch.setattr(os, "replace", interrupted)
        with pytest.raises(OSError, match="disk full"):
            write_png(pyplot().figure(figsize=(1, 1)), path)
        assert path.read_bytes() == b"old picture"
        assert [p.name for p in tmp_path.iterdir()] == ["qc.png"]


# -- the four pictures: a volume stored otherwise is drawn pixel for pixel as its canonical twin


def centreline_png(data, affine, tmp_path):
    from cordfuse.preprocess.qc import write_centerline_qc

    _, ny, nz = SHAPE
    voxels = np.column_stack([np.full(nz, 3.0), np.linspace(2, ny - 2, nz), np.arange(nz)])
    points = voxels @ canonical_volume()[2][:3, :3].T + canonical_volume()[2][:3, 3]
    path = tmp_path / "centreline.png"
    write_centerline_qc(data, affine, SimpleNamespace(points=points), path)
    return path.read_bytes()


def prediction_png(data, mask, affine, tmp_path):
    from cordfuse.inference import write_prediction_qc

    prediction = SimpleNamespace(
        subject="sub-01",
        affine=affine,
        mask=mask,
        lesions=[{}],
        prepared=SimpleNamespace(native=SimpleNamespace(image=data)),
    )
    path = tmp_path / "prediction.png"
    write_prediction_qc(prediction, path)
    return path.read_bytes()


def report_png(data, mask, affine, tmp_path):
    from cordfuse.report import subject_qc_png

    prepared = SimpleNamespace(
        subject="sub-01",
        sequences=[],
        images={},
        label=None,
        geometry=SimpleNamespace(centre_index=0),
    )
    return subject_qc_png(prepared, data, affine, mask, [("model", mask)])


def synth_png(data, mask, affine, tmp_path):
    from cordfuse.synth.qc import write_subject_qc

    cord = np.zeros(SHAPE, bool)
    cord[2:5, 1:6, :] = True
    scan = SimpleNamespace(image=data, affine=affine, cord_mask=cord, lesion_mask=mask > 0)
    if data.shape != SHAPE:  # the twin: its masks are stored the same way as its image
        scan.cord_mask = stored_otherwise(cord, canonical_volume()[2])[0]
    subject = SimpleNamespace(
        subject_id="sub-01",
        cohort="A",
        anatomy=SimpleNamespace(lesions=[{}]),
        scans={"sub-01_T2Sag": scan, "sub-01_T2Ax": scan},
        plans={
            "sub-01_T2Sag": SimpleNamespace(sequence="T2Sag"),
            "sub-01_T2Ax": SimpleNamespace(sequence="T2Ax"),
        },
    )
    path = tmp_path / "synth.png"
    write_subject_qc(subject, path)
    return path.read_bytes()


@pytest.mark.parametrize("draw", [prediction_png, report_png, synth_png])
def test_every_picture_is_the_same_for_a_volume_stored_otherwise(draw, tmp_path):
    data, mask, affine = canonical_volume()
    reference = pixels(draw(data, mask, affine, tmp_path))
    twin, twin_affine = stored_otherwise(data, affine)
    twin_mask, _ = stored_otherwise(mask, affine)
    np.testing.assert_array_equal(pixels(draw(twin, twin_mask, twin_affine, tmp_path)), reference)
    # and the picture does see orientation: mirrored front to back, it is another picture
    mirrored = pixels(draw(data[:, ::-1].copy(), mask[:, ::-1].copy(), affine, tmp_path))
    assert reference.shape == mirrored.shape and not np.array_equal(reference, mirrored)


def test_the_centreline_picture_is_the_same_for_a_volume_stored_otherwise(tmp_path):
    data, _, affine = canonical_volume()
    reference = pixels(centreline_png(data, affine, tmp_path))
    twin, twin_affine = stored_otherwise(data, affine)
    np.testing.assert_array_equal(pixels(centreline_png(twin, twin_affine, tmp_path)), reference)
    mirrored = pixels(centreline_png(data[:, ::-1].copy(), affine, tmp_path))
    assert not np.array_equal(reference, mirrored)
