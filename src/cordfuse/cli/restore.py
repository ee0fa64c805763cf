"""``cordfuse restore``: map a crop-space mask or probability map back onto the native T2Sag
grid (fused, or one slab), the map ``predict`` uses."""

from __future__ import annotations

import argparse

from cordfuse.cli._options import add_threshold, given


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``restore`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser("restore", help="map a crop-space mask back to the native T2Sag")
    parser.add_argument("prepared", help="prepared subject folder or its prepared.npz")
    parser.add_argument("crop", help="crop-space mask/probabilities (.nii[.gz] or .npy)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument(
        "--slab",
        type=int,
        metavar="N",
        help="onto the T2Sag slab of chunk N, as in its BIDS file name "
        "(..._chunk-N_T2w.nii.gz; without chunks, N counts from 1 at the "
        "top) instead of the fused T2Sag",
    )
    parser.add_argument("--probabilities", action="store_true", help="keep float values")
    add_threshold(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Restore the crop, write it and say onto which grid.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: an unreadable input, no such slab, a crop of the wrong shape, or an
            output that is the T2Sag image itself.
    """
    from cordfuse.preprocess.pipeline import restore_to_file

    shape = restore_to_file(
        args.prepared,
        args.crop,
        args.output,
        slab=args.slab,
        probabilities=args.probabilities,
        **given(threshold=args.threshold),
    )
    where = "fused T2Sag" if args.slab is None else f"T2Sag slab {args.slab}"
    print(f"Restored {args.crop} onto the {where} grid {shape} -> {args.output}")
    return 0
