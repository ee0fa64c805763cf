"""QC pictures of the pre-processing: misalignment between sequences visible at a glance.

:func:`write_prepared_qc` puts the straightened crops of every sequence side by side, in a
mid-sagittal (anterior to the right) and a mid-coronal view (left to the right), superior up,
with the lesion label outlined. :func:`write_centerline_qc` draws a centreline on an image.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from cordfuse.figures import pyplot
from cordfuse.io import apply_affine, voxel_sizes
from cordfuse.qc import Plane, canonical, draw_image, draw_outline, view, write_png


def write_prepared_qc(prepared, path: str | Path) -> None:
    """Write :func:`prepared_qc_figure` as a PNG.

    Args:
        prepared: A prepared subject.
        path: The PNG file to write (atomically).
    """
    write_png(prepared_qc_figure(prepared), path)


def prepared_qc_figure(prepared):
    """The straightened crops of a prepared subject side by side (a matplotlib figure); a
    sequence whose centreline fell back to T2Sag's is titled in orange.

    Args:
        prepared: A prepared subject.

    Returns:
        The figure (not closed).
    """
    plt = pyplot()
    seqs = prepared.sequences
    geometry = prepared.geometry
    c = int(round(geometry.centre_index))
    width = max(6.4, 1.6 * 2 * len(seqs))
    fig, axes = plt.subplots(1, 2 * len(seqs), figsize=(width, 9), squeeze=False, facecolor="black")
    fallbacks = getattr(prepared, "fallbacks", {})
    for col, seq in enumerate(seqs):
        crop = prepared.images[seq]
        views = {"sagittal": crop[c, :, :].T, "coronal": crop[::-1, c, :].T}
        labels = None
        if prepared.label is not None:
            labels = {
                "sagittal": prepared.label[c, :, :].T,
                "coronal": prepared.label[::-1, c, :].T,
            }
        for v, (plane, image) in enumerate(views.items()):
            ax = axes[0, 2 * col + v]
            draw_image(ax, image)
            if labels is not None:
                draw_outline(ax, labels[plane], "red", linewidth=0.6)
            if seq in fallbacks:  # its own centreline was not trusted: say so on the picture
                ax.set_title(f"{seq}\n{plane}\nT2Sag centreline", color="orange", fontsize=8)
            else:
                ax.set_title(f"{seq}\n{plane}", color="white", fontsize=8)
    title = (
        f"{prepared.subject}: straightened {geometry.size}x{geometry.size} crops, "
        f"{geometry.spacing} mm, {geometry.nz} slices (red: lesion label)"
    )
    if fallbacks:
        title += f"; centreline fallback to T2Sag: {', '.join(fallbacks)}"
    # Wrapped to the figure's width: a one-sequence picture is narrow and cut a long title.
    fig.suptitle(textwrap.fill(title, width=int(width * 11)), color="white", fontsize=9)
    return fig


def write_centerline_qc(data: np.ndarray, affine: np.ndarray, centerline, path: str | Path) -> None:
    """Sagittal and coronal views (RAS display) of an image with its centreline.

    Args:
        data: The 3D image.
        affine: Its voxel-to-world affine.
        centerline: Its centreline (:class:`cordfuse.preprocess.centerline.Centerline`).
        path: The PNG file to write (atomically).
    """
    plt = pyplot()
    canon, canon_affine = canonical(np.asarray(data, np.float32), affine)
    vox = apply_affine(np.linalg.inv(canon_affine), centerline.points)
    x = int(np.clip(np.round(np.median(vox[:, 0])), 0, canon.shape[0] - 1))
    y = int(np.clip(np.round(np.median(vox[:, 1])), 0, canon.shape[1] - 1))
    spacing = voxel_sizes(canon_affine)
    fig, axes = plt.subplots(1, 2, figsize=(8, 8), facecolor="black")
    panels: tuple[tuple[Plane, int, np.ndarray], ...] = (
        ("sagittal", x, vox[:, 1]),
        ("coronal", y, vox[:, 0]),
    )
    for ax, (plane, index, u) in zip(axes, panels, strict=True):
        image, aspect = view(canon, spacing, plane, index)
        draw_image(ax, image, aspect=aspect)
        ax.plot(u, vox[:, 2], color="red", linewidth=1.0)
        ax.set_title(plane, color="white")
    write_png(fig, path)
