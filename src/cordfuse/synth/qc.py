"""Quality-control pictures of a synthetic subject, as a radiologist would look at them.

One PNG per subject: every scan side by side; sagittal and 3D scans show the sagittal slice
through the cord, axial scans three axial slices (upper, middle, lower). Lesion ground truth is
outlined in red, the cord in cyan. Images are shown in RAS display space (anterior to the right,
superior up) with their true pixel aspect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cordfuse.io import atomic_write_bytes, voxel_sizes


def _canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/transpose ``data`` so its axes point R, A, S; returns data and spacing."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    data = nib.orientations.apply_orientation(data, ornt)
    spacing = voxel_sizes(affine)[ornt[:, 0].astype(int).argsort()]
    return data, spacing


def _panels(scan, sequence: str):
    image, spacing = _canonical(scan.image.astype(np.float32), scan.affine)
    cord, _ = _canonical(scan.cord_mask, scan.affine)
    lesion, _ = _canonical(scan.lesion_mask, scan.affine)
    if sequence in ("T2starAx", "T2Ax"):
        slices = np.flatnonzero(cord.any(axis=(0, 1)))
        picks = (
            slices[np.linspace(0, len(slices) - 1, 3).round().astype(int)] if len(slices) else [0]
        )
        for k in picks[::-1]:
            yield (
                image[:, :, k].T,
                cord[:, :, k].T,
                lesion[:, :, k].T,
                spacing[1] / spacing[0],
                f"z={k}",
            )
    else:
        x = int(np.argmax(cord.sum(axis=(1, 2)) + lesion.sum(axis=(1, 2)) * 10))
        yield image[x].T, cord[x].T, lesion[x].T, spacing[2] / spacing[1], f"x={x}"


def write_subject_qc(subject, path: Path) -> None:
    """Write the subject's QC PNG to ``path`` (atomically)."""
    from cordfuse.figures import png_bytes, pyplot

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
            lo, hi = np.percentile(image, [1, 99.5])
            ax.imshow(
                image,
                cmap="gray",
                origin="lower",
                aspect=aspect,
                vmin=lo,
                vmax=hi,
                interpolation="nearest",
            )
            if cord.any():
                ax.contour(cord, levels=[0.5], colors="cyan", linewidths=0.4, origin="lower")
            if lesion.any():
                ax.contour(lesion, levels=[0.5], colors="red", linewidths=0.7, origin="lower")
            ax.set_title(f"{title}\n{label}" if row == 0 else label, color="white", fontsize=7)
    n_lesions = len(subject.anatomy.lesions)
    fig.suptitle(
        f"{subject.subject_id} (cohort {subject.cohort}): {n_lesions} lesions; "
        "red = lesion truth, cyan = cord",
        color="white",
        fontsize=9,
    )
    atomic_write_bytes(path, png_bytes(fig, dpi=110))

