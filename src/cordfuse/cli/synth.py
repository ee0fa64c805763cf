"""``cordfuse synth``: write a synthetic multi-sequence BIDS cohort with exact ground truth."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cordfuse.cli._options import comma_list, keyword_defaults, progress_bar
from cordfuse.errors import CordfuseError


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``synth`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "synth",
        help="write a synthetic multi-sequence BIDS cohort",
        description="Write a realistic synthetic BIDS cohort with ground truth.",
    )
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--subjects", type=int, default=10, help="number of subjects")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--cohorts", help="cohort names, assigned in turn")
    parser.add_argument("--qc", action="store_true", help="also write QC pictures per subject")
    parser.add_argument(
        "--randomise",
        action="store_true",
        help="draw every scan's appearance, resolution and the cord's size at random, far "
        "beyond the realistic range (domain randomisation, for training)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic dataset in OUT"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the cohort and say where, how big and how fast.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: fewer than one subject or no cohort name, or ``OUT`` holds something
            ``synth`` did not write (or an earlier cohort, without ``--overwrite``).
    """
    from cordfuse.synth import write_cohort

    cohorts = (
        comma_list(args.cohorts)
        if args.cohorts is not None
        else list(keyword_defaults(write_cohort)["cohorts"])
    )
    if args.subjects < 1:
        raise CordfuseError("--subjects must be at least 1")
    if not cohorts:
        raise CordfuseError("--cohorts needs at least one name, e.g. A,B,C")
    out = Path(args.out)
    start = time.perf_counter()
    write_cohort(
        out,
        subjects=args.subjects,
        seed=args.seed,
        cohorts=cohorts,
        qc=args.qc,
        progress=progress_bar(args.subjects, "synth"),
        overwrite=args.overwrite,
        randomise=args.randomise,
    )
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    kind = "randomised synthetic" if args.randomise else "synthetic"
    print(
        f"Wrote {args.subjects} {kind} subjects (cohorts {', '.join(cohorts)}, "
        f"seed {args.seed}) to {out} in {elapsed:.1f} s ({size / 1e6:.1f} MB)."
    )
    if args.qc:
        print(f"QC pictures: {out / 'derivatives' / 'synth' / 'qc'}")
    return 0
