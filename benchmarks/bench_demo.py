"""The main job timed end to end (issue 7): ``cordfuse demo`` with its defaults in <= 15 min on
this 2-core machine, in a fresh process, as ``make demo`` runs it (report included).

Run: ``.venv/bin/python benchmarks/bench_demo.py [--keep DIR]``; prints the time of every stage
and the demo's metric table.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep", help="write the demo here and keep it (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep or Path(tmp) / "demo")
        start = time.perf_counter()
        stages: list[tuple[str, float]] = []
        process = subprocess.Popen(
            [sys.executable, "-m", "cordfuse", "demo", str(out)], stdout=subprocess.PIPE, text=True
        )
        lines = []
        for line in process.stdout:
            lines.append(line)
            # the study runner's stage lines: [data], [check], [train 1/2], [evaluate 2/2], ...
            match = re.match(r"\[(\w+(?: \d+/\d+)?)\] (.*)", line)
            if match:
                stages.append(
                    (f"{match.group(1)}: {match.group(2).strip()}", time.perf_counter() - start)
                )
        status = process.wait()
        total = time.perf_counter() - start
        if status != 0:
            sys.exit(f"cordfuse demo failed with status {status}")
        table = (out / "results.md").read_text()
        report = out / "report.html"
        size = report.stat().st_size / 1e6
    rows = []
    for (name, begun), (_, ended) in zip(stages, stages[1:] + [("end", total)], strict=True):
        rows.append((name[:60], f"{ended - begun:.0f} s", ""))
    rows.append(
        ("total (fresh process, report included)", f"{total / 60:.1f} min", "target <= 15 min")
    )
    rows.append(("report.html", f"{size:.1f} MB", "self-contained"))
    print_table("cordfuse demo, defaults (24 subjects, 2 models x 50 x 25 iterations)", rows)
    print()
    print(table)


if __name__ == "__main__":
    main()
