"""Quality-control pictures of a synthetic subject, as a radiologist would look at them.

One PNG per subject: every scan side by side; sagittal and 3D scans show the sagittal slice
through the cord, axial scans three axial slices (upper, middle, lower). Lesion ground truth is
outlined in red, the cord in cyan. Images are shown in RAS display space (anterior to the right,
superior up) with their true pixel aspect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cordfuse.io import voxel_sizes
from cordfuse.qc import (
    Plane,
    busiest_slice,
    canonical,
    draw_image,
    draw_outline,
    spread_slices,
    view,
    write_png,
)


def _panels(scan, sequence: str):
    image, affine = canonical(scan.image.astype(np.float32), scan.affine)
    cord, _ = canonical(scan.cord_mask, scan.affine)
    lesion, _ = canonical(scan.lesion_mask, scan.affine)
    spacing = voxel_sizes(affine)
    planes: list[tuple[Plane, int, str]]
    if sequence in ("T2starAx", "T2Ax"):
        planes = [("axial", k, f"z={k}") for k in spread_slices(cord)[::-1]]
    else:
        # The sagittal slice through the cord, lesions weighing more: the one worth looking at.
        x = busiest_slice(cord.astype(float) + lesion * 10.0)
        planes = [("sagittal", x, f"x={x}")]
    for plane, index, label in planes:
        shown, aspect = view(image, spacing, plane, index)
        yield (
            shown,
            view(cord, spacing, plane, index)[0],
            view(lesion, spacing, plane, index)[0],
            aspect,
            label,
        )


def write_subject_qc(subject, path: Path) -> None:
    """Write the subject's QC PNG to ``path`` (atomically).

    Args:
        subject: A generated subject (:class:`cordfuse.synth.cohort.SyntheticSubject`).
        path: The PNG file.
    """
    from cordfuse.figures import pyplot

    plt = pyplot()
    columns = []
    for stem, scan in subject.scans.items():
        sequence = subject.plans[stem].sequence
        columns.append((stem.split("_", 1)[1], list(_panels(scan, sequence))))
    n_rows = max(len(p) for _, p in columns)
    fig, axes = plt.subplots(
        n_rows,
        len(columns),
        figsize=(2.4 * len(columns), 2.6 * n_rows + 2.5),
        squeeze=False,
        facecolor="black",
    )
    for col, (title, panels) in enumerate(columns):
        for row in range(n_rows):
            ax = axes[row, col]
            ax.set_axis_off()
            if row >= len(panels):
                continue
            image, cord, lesion, aspect, label = panels[row]
            draw_image(ax, image, aspect=aspect)
            draw_outline(ax, cord, "cyan", linewidth=0.4)
            draw_outline(ax, lesion, "red", linewidth=0.7)
            ax.set_title(f"{title}\n{label}" if row == 0 else label, color="white", fontsize=7)
    n_lesions = len(subject.anatomy.lesions)
    fig.suptitle(
        f"{subject.subject_id} (cohort {subject.cohort}): {n_lesions} lesions; "
        "red = lesion truth, cyan = cord",
        color="white",
        fontsize=9,
    )
    write_png(fig, path, dpi=110)
