"""Pre-processing speed (issue 3): one synthetic subject with all six sequences, paper preset,
one core: <= 3 s without the slab registration, <= 10 s with it.

Run: ``.venv/bin/python benchmarks/bench_prepare.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _common import pin_one_core, print_table, register_full_cohort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pin_one_core()
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    from cordfuse.dataset import discover
    from cordfuse.preprocess.pipeline import PRESETS, prepare_subject
    from cordfuse.synth.cohort import generate_subject, write_subject

    register_full_cohort()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_subject(generate_subject(0, 1, "full"), root, 0)
        subject = discover(root).subjects[0]
        scans = sum(len(v) for v in subject.scans.values())
        prepare_subject(subject, PRESETS["small"])  # warm-up: imports, caches (not timed)
        for label, config in (
            ("paper preset, no registration", replace(PRESETS["paper"], register_slabs=False)),
            ("paper preset, with registration", PRESETS["paper"]),
            ("small preset, with registration", PRESETS["small"]),
        ):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                prepared = prepare_subject(subject, config)
                times.append(time.perf_counter() - start)
            target = {"paper preset, no registration": "target <= 3 s",
                      "paper preset, with registration": "target <= 10 s"}.get(label, "")
            rows.append((label, f"{min(times):.2f} s", target))
            if label.startswith("paper preset, with"):
                shape = f"{len(prepared.sequences)}/{scans}/{prepared.geometry.nz}"
        rows.append(("sequences / scans / paper slices", shape, "0.5 mm slices along S-I"))
    print_table("prepare: one subject, all six sequences, one core (best of repeats)", rows)


if __name__ == "__main__":
    main()
