"""Synthetic cohort speed and size (issue 2): <= 2 s per subject on one core, 10 subjects < 100 MB.

Run: ``.venv/bin/python benchmarks/bench_synth.py [--subjects 10]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import pin_one_core, print_table, register_full_cohort


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subjects", type=int, default=10)
    args = parser.parse_args()
    pin_one_core()
    from cordfuse.synth.cohort import cohort_of, generate_subject, write_subject

    times, with_write = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for index in range(1, args.subjects + 1):
            start = time.perf_counter()
            subject = generate_subject(0, index, cohort_of(index, "ABC"))
            mid = time.perf_counter()
            write_subject(subject, root, 0)
            times.append(mid - start)
            with_write.append(time.perf_counter() - start)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    start = time.perf_counter()
    generate_subject(0, 1, register_full_cohort())  # every sequence, two T2Sag slabs
    worst = time.perf_counter() - start
    n = args.subjects
    print_table(
        f"synth: {n} subjects, cohorts A/B/C, one core",
        [
            ("generate, mean per subject", f"{sum(times) / n:.2f} s", "target <= 2 s"),
            ("generate, slowest subject", f"{max(times):.2f} s", ""),
            ("generate + write, mean", f"{sum(with_write) / n:.2f} s", ""),
            ("all six sequences + 2 slabs", f"{worst:.2f} s", "worst case"),
            (
                f"{n}-subject cohort on disk",
                f"{size / 1e6:.1f} MB",
                f"target < {10 * n:.0f} MB" if n == 10 else "",
            ),
        ],
    )


if __name__ == "__main__":
    main()
