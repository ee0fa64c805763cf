"""What self-contained prepared subjects save (issue 14), one core.

Study, demo and report need each test subject's fused native T2Sag image and ground truth. They
used to rebuild them from the raw scans (read every T2Sag slab and label, register the slabs, fuse
them) in every stage that needed them: the study's evaluation and lesion stages, and the report.
Now ``prepare`` stores them once and the stages read them back (``load_native``). This times both
per subject, and the price: the prepared file's size with and without them.

* Synthetic: a subject with all six sequences and two T2Sag slabs (small and paper presets).
* Real: the MS patient scan of ``../shared/data/real/sct-t2ms`` as a clinical two-slab T2Sag
  (17 x 3 mm slices) at 0.35 mm pixels, the voxel count of a real 17 x 548 x 157 slab.

Run: ``.venv/bin/python benchmarks/bench_native.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from _common import pin_one_core, print_table, write_full_subject


def measure(label: str, subject, config, folder: Path, repeats: int) -> list[tuple[str, str, str]]:
    from cordfuse.preprocess.pipeline import (
        REFERENCE_SEQUENCE,
        load_native,
        load_sequence,
        native_t2sag,
        prepare_subject,
    )

    prepared = prepare_subject(subject, config)
    prepared.save(folder / "with.npz")
    replace(prepared, native=None).save(folder / "without.npz")
    raw, stored = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        from_raw = native_t2sag(subject, load_sequence(subject, REFERENCE_SEQUENCE, config)[0])
        raw.append(time.perf_counter() - start)
        start = time.perf_counter()
        native = load_native(folder / "with.npz")
        stored.append(time.perf_counter() - start)
    assert np.array_equal(native.image, from_raw.image)
    assert np.array_equal(native.lesion, from_raw.lesion)
    size = {name: (folder / f"{name}.npz").stat().st_size / 1e6 for name in ("with", "without")}
    return [
        (f"{label}: fused grid", "x".join(map(str, native.image.shape)), ""),
        (f"{label}: from the raw scans", f"{min(raw):.3f} s", "per subject and stage, before"),
        (f"{label}: from prepared.npz", f"{min(stored):.3f} s", "per subject and stage, now"),
        (f"{label}: speed-up", f"{min(raw) / min(stored):.0f}x", ""),
        (
            f"{label}: prepared.npz",
            f"{size['without']:.2f} -> {size['with']:.2f} MB",
            "without -> with the native T2Sag",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pin_one_core()
    from cordfuse.dataset import discover
    from cordfuse.io import read_volume
    from cordfuse.preprocess.pipeline import PRESETS
    from cordfuse.synth.clinical import ClinicalGeometry, write_two_slab_subject

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subject = write_full_subject(Path(tmp) / "synth")
        for preset in ("small", "paper"):
            rows += measure(
                f"synthetic, {preset}", subject, PRESETS[preset], Path(tmp), args.repeats
            )
        real = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "sct-t2ms"
        if real.is_dir():
            data, affine = read_volume(real / "t2.nii.gz")
            mask = np.zeros_like(data)
            mask[data > np.percentile(data, 99.9)] = 1  # some label to fuse
            two = write_two_slab_subject(
                Path(tmp) / "two",
                data,
                affine,
                mask,
                subject="sub-ms01",
                geometry=ClinicalGeometry("sagittal", 3.0, 0.35),
                keep_slices=17,
                overlap_mm=30.0,
            )
            rows += measure(
                "real two-slab, paper",
                discover(two.root).subjects[0],
                PRESETS["paper"],
                Path(tmp),
                args.repeats,
            )
        else:
            print(f"(real two-slab measurement skipped: {real} not found)")
    print_table(
        f"native T2Sag and ground truth: rebuilt from raw scans vs stored (best of {args.repeats})",
        rows,
    )


if __name__ == "__main__":
    main()
