"""``cordfuse evaluate``: Dice and lesion-wise metrics (Anima's rules) of predictions against
ground truth, per image and as mean and median per cohort, plus the per-lesion table."""

from __future__ import annotations

import argparse
import sys

from cordfuse.cli._options import given

#: ``--connectivity``: the neighbourhoods cc3d labels lesions with.
CONNECTIVITIES = (6, 18, 26)


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``evaluate`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "evaluate",
        help="Dice and lesion-wise metrics (Anima rules) against ground truth",
        description="Per-image Dice, lesion-wise sensitivity/precision/F1 exactly as Anima's "
        "animaSegPerfAnalyzer -l, then mean and median per cohort.",
    )
    parser.add_argument(
        "--pred",
        required=True,
        help="prediction file, or a predict output folder (its BIDS derivative dataset, or "
        "flat <subject>_lesion.nii.gz files)",
    )
    parser.add_argument(
        "--gt",
        required=True,
        help="ground-truth file or folder, a prepared folder (the fused native "
        "ground truth it stores) or a BIDS dataset (labels fused on the "
        "T2Sag grid)",
    )
    parser.add_argument("--json", action="store_true", help="JSON output")
    parser.add_argument(
        "-o",
        "--output",
        help="per-image metrics CSV (and, unless --lesions "
        "says otherwise, the per-lesion table beside it: metrics.csv -> metrics_lesions.csv)",
    )
    parser.add_argument(
        "--lesions",
        help="per-lesion CSV: every ground-truth lesion (detected "
        "or missed) and every predicted lesion (true or false positive)",
    )
    parser.add_argument("--participants", help="participants.tsv with a cohort column")
    parser.add_argument("--alpha", type=float, help="detected if > alpha covered")
    parser.add_argument("--beta", type=float, help="max fraction outside")
    parser.add_argument("--gamma", type=float, help="cumulated overlap share")
    parser.add_argument(
        "--min-volume", type=float, help="lesions <= this volume (mm^3) are removed"
    )
    parser.add_argument(
        "--connectivity",
        type=int,
        choices=CONNECTIVITIES,
        help="voxel neighbourhood of a lesion (6: faces)",
    )
    parser.add_argument(
        "--per-slab",
        action="store_true",
        help="with a BIDS --gt of several T2Sag slabs: score each slab label "
        "against the mask predict --per-slab wrote on that slab "
        "instead of the fused T2Sag grid",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Score, write the tables asked for and print the metrics (text or JSON).

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0, or 1 when a pair could not be scored (the others are).

    Raises:
        CordfuseError: a missing ``--pred`` or ``--gt``, nothing to pair, or no pair scored.
    """
    from cordfuse.evaluation.evaluate import evaluate_to_files, format_text

    evaluation = evaluate_to_files(
        args.pred,
        args.gt,
        output=args.output,
        lesions=args.lesions,
        participants=args.participants,
        per_slab=args.per_slab,
        on_problem=lambda problem: print(f"FAILED {problem}", file=sys.stderr),
        **given(
            alpha=args.alpha,
            beta=args.beta,
            gamma=args.gamma,
            min_volume_mm3=args.min_volume,
            connectivity=args.connectivity,
        ),
    )
    if args.json:
        print(evaluation.to_json())
    else:
        print(format_text(evaluation.rows, evaluation.summary))
        if evaluation.table:
            print(f"per-image metrics: {evaluation.table}")
        if evaluation.lesion_table:
            print(f"per-lesion table: {evaluation.lesion_table}")
    return 1 if evaluation.problems else 0
