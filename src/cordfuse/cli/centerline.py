"""``cordfuse centerline``: the cord centreline of one image, as ``x,y,z`` world RAS+ mm
(inferior to superior) in a CSV file."""

from __future__ import annotations

import argparse

from cordfuse.cli._options import CENTERLINE_METHODS, given

#: ``--contrast``: the polarities of :func:`cordfuse.preprocess.centerline.detect_centerline`.
CONTRASTS = ("auto", "bright-csf", "dark-csf")


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``centerline`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser("centerline", help="cord centreline of one image (CSV)")
    parser.add_argument("image")
    parser.add_argument("-o", "--output", required=True, help="CSV: x,y,z world RAS mm")
    parser.add_argument(
        "--method",
        choices=CENTERLINE_METHODS,
        help="auto (the built-in detector), mask (--mask) or sct (Spinal Cord Toolbox, when "
        "installed)",
    )
    parser.add_argument("--mask", help="cord mask for --method mask")
    parser.add_argument(
        "--contrast",
        choices=CONTRASTS,
        help="CSF brighter (T2, STIR, T2*) or darker (T1, UNIT1); auto: from "
        "the BIDS suffix (_T1w, _T2w, ...), else from the image",
    )
    parser.add_argument("--qc", metavar="PNG", help="write a QC picture")
    return parser


def run(args: argparse.Namespace) -> int:
    """Find the centreline, write it (and the QC picture) and say where.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: an unreadable image, ``--method mask`` without ``--mask``, or no cord
            found.
    """
    from cordfuse.preprocess.pipeline import write_centerline

    line = write_centerline(
        args.image,
        args.output,
        mask=args.mask,
        qc=args.qc,
        **given(method=args.method, contrast=args.contrast),
    )
    low, high = line.z_range
    print(f"{len(line.points)} centreline points, z {low:.1f} .. {high:.1f} mm -> {args.output}")
    if args.qc:
        print(f"QC picture: {args.qc}")
    return 0
