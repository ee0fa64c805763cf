"""``cordfuse prepare``: pre-process a BIDS dataset onto the cropped reference grid (slab fusion,
centrelines, 0.5 mm grid, 48x48 centreline crops), one prepared subject per folder."""

from __future__ import annotations

import argparse
import sys
import time

from cordfuse.cli._options import (
    add_centerline,
    add_jobs,
    add_mapping,
    add_overwrite,
    add_participant_label,
    add_preset,
    add_qc,
    given,
    progress_bar,
)


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``prepare`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "prepare",
        help="pre-process a BIDS dataset onto the cropped reference grid",
        description="Slab fusion, centrelines, 0.5 mm reference grid and 48x48 centreline crops.",
    )
    parser.add_argument("dataset", help="BIDS dataset folder (read only)")
    parser.add_argument("out", help="output folder (one prepared subject per folder)")
    add_preset(
        parser,
        help="the grid and crops: paper (the paper's) or small (CPU work); train with the "
        "same preset",
    )
    parser.add_argument("--spacing", type=float, help="grid spacing in mm (overrides the preset)")
    parser.add_argument("--crop-size", type=int, help="crop size in voxels (overrides the preset)")
    parser.add_argument("--margin", type=float, help="S-I margin beyond the cord, mm")
    add_centerline(parser)
    parser.add_argument(
        "--no-register",
        action="store_true",
        help="do not register sagittal slabs before fusing them",
    )
    add_jobs(parser)
    add_participant_label(parser)
    add_mapping(parser)
    parser.add_argument("--nnunet", metavar="DIR", help="also write nnU-Net v2 raw format")
    add_qc(parser)
    add_overwrite(parser, help="redo finished subjects")
    return parser


def run(args: argparse.Namespace) -> int:
    """Prepare every subject (``--jobs`` at once), report each failure and warning, and write
    the nnU-Net copy when asked.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0, or 1 when a subject failed (the others are prepared).

    Raises:
        CordfuseError: a bad option value, an unreadable dataset, or an output folder that
            ``prepare`` does not own.
    """
    from cordfuse.dataset import open_dataset
    from cordfuse.preprocess.batch import load_prepared_dataset, prepare_dataset
    from cordfuse.preprocess.pipeline import preset_config

    config = preset_config(
        **given(
            preset=args.preset,
            spacing=args.spacing,
            crop_size=args.crop_size,
            margin_mm=args.margin,
            centerline=args.centerline,
            register_slabs=False if args.no_register else None,
        )
    )
    dataset = open_dataset(args.dataset, mapping=args.mapping, participants=args.participant_label)
    start = time.perf_counter()
    results = prepare_dataset(
        dataset,
        args.out,
        config,
        overwrite=args.overwrite,
        qc=args.qc,
        threads=args.threads,
        progress=progress_bar(len(dataset.subjects), "prepare"),
        **given(jobs=args.jobs),
    )
    counts = {k: sum(r.status == k for r in results) for k in ("prepared", "skipped", "failed")}
    for result in results:
        for warning in result.warnings:
            print(f"warning {result.name}: {warning}")
        if result.status == "failed":
            print(f"FAILED {result.name}: {result.message}", file=sys.stderr)
    fallbacks = sum(len(r.fallbacks) for r in results if r.status != "failed")
    print(
        f"{counts['prepared']} prepared, {counts['skipped']} skipped (already done), "
        f"{counts['failed']} failed, {fallbacks} centreline fallback(s) to T2Sag, in "
        f"{time.perf_counter() - start:.1f} s -> {args.out} "
        f"({config.spacing} mm, {config.crop_size}x{config.crop_size})"
    )
    if args.nnunet:
        from cordfuse.preprocess.nnunet import export_nnunet

        _, paths = load_prepared_dataset(args.out)
        count = export_nnunet(paths, args.nnunet)
        print(f"nnU-Net v2 raw dataset: {args.nnunet} ({count} training cases)")
    return 1 if counts["failed"] else 0
