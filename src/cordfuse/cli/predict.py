"""``cordfuse predict``: lesion masks on the native fused T2Sag grid from raw NIfTI or BIDS
(pre-processing on the fly, sliding window along S-I, an ensemble of models)."""

from __future__ import annotations

import argparse
import sys
import time

from cordfuse.cli._options import (
    ENSEMBLES,
    add_amp,
    add_centerline,
    add_device,
    add_jobs,
    add_mapping,
    add_overwrite,
    add_participant_label,
    add_qc,
    add_sequence_files,
    add_threshold,
    comma_list,
    given,
    progress_bar,
)
from cordfuse.errors import CordfuseError
from cordfuse.sequences import SEQUENCES


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "predict",
        help="lesion masks on the native T2Sag grid from raw NIfTI/BIDS",
        description="Pre-processing on the fly, sliding window along S-I, ensemble of models, "
        "back to the native fused T2Sag grid.",
    )
    parser.add_argument(
        "model",
        nargs="*",
        metavar="MODEL",
        help="training folder(s) or checkpoint(s); several form an ensemble (as -m)",
    )
    parser.add_argument(
        "-m",
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME|ZIP|RUN",
        help="an installed model's name (cordfuse model list), a model zip (cordfuse "
        "export-model) or a training folder; repeat for an ensemble",
    )
    parser.add_argument("-i", "--input", help="BIDS dataset or one subject folder")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        help="output folder: a BIDS derivative dataset for BIDS input, flat for explicit files",
    )
    add_sequence_files(parser)
    parser.add_argument("--sequences", help="use only these sequences, e.g. T2Sag,STIR")
    parser.add_argument("--tta", action="store_true", help="left-right mirroring")
    parser.add_argument(
        "--ensemble",
        choices=ENSEMBLES,
        help="how several models combine: the mean of their probabilities, their minimum "
        "(a voxel is lesion only where every model says so) or their median (where most do)",
    )
    add_centerline(
        parser,
        help="override the checkpoint's centreline backend (mask: cord "
        "masks in derivatives/labels)",
    )
    parser.add_argument("--save-probabilities", action="store_true")
    parser.add_argument("--per-slab", action="store_true", help="also one mask per T2Sag slab")
    add_threshold(parser)
    parser.add_argument("--min-volume", type=float, help="mm^3; smaller removed")
    add_device(parser)
    add_amp(parser, help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass")
    add_jobs(parser)
    add_participant_label(parser)
    add_mapping(parser, help="JSON/YAML file overriding the sequence rules")
    add_qc(parser)
    add_overwrite(
        parser,
        help="predict again the subjects already done in OUTPUT with the "
        "same models and options (by default they are skipped)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Predict every subject (``--jobs`` at once), say where each mask went and what failed.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0, or 1 when a subject failed (the others are predicted).

    Raises:
        CordfuseError: no model or no subject to predict, an unreadable model (or a packaged one
            that fails verification), or an output folder that ``predict`` does not own.
    """
    from cordfuse.inference import predict_dataset, predict_options, subjects_from_input
    from cordfuse.nn.device import choose_device

    models = [*args.model, *args.models]
    if not models:
        raise CordfuseError("no model: give -m NAME|ZIP|RUN (or training folders before -i)")
    files = {seq: getattr(args, seq.lower()) for seq in SEQUENCES if getattr(args, seq.lower())}
    subjects = subjects_from_input(
        args.input, files, mapping=args.mapping, participants=args.participant_label
    )
    if not subjects:
        raise CordfuseError(f"{args.input}: no subject to predict")
    # every option is recorded with the subject's outputs, so the API's defaults are spelled out
    options = predict_options(
        sequences=comma_list(args.sequences),
        tta=args.tta,
        device=str(choose_device(**given(requested=args.device))),
        per_slab=args.per_slab,
        save_probabilities=args.save_probabilities,
        qc=args.qc,
        centerline=args.centerline,
        overwrite=args.overwrite,
        **given(
            threshold=args.threshold,
            min_volume=args.min_volume,
            batch_size=args.batch_size,
            amp=args.amp,
            ensemble=args.ensemble,
        ),
    )
    start = time.perf_counter()
    results = predict_dataset(
        subjects,
        tuple(models),
        args.output,
        options,
        threads=args.threads,
        progress=progress_bar(len(subjects), "predict"),
        **given(jobs=args.jobs),
    )
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for result in results:
        counts[result.status] += 1
        for warning in result.warnings:
            print(f"warning {result.name}: {warning}")
        if result.status == "failed":
            print(f"FAILED {result.name}: {result.message}", file=sys.stderr)
        else:
            print(
                f"{result.name}: {result.files[0]}"
                + (" (done before)" if result.status == "skipped" else "")
            )
    print(
        f"{counts['done']} predicted, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(done before with the same models and options), in "
        f"{time.perf_counter() - start:.1f} s -> {args.output}"
    )
    return 1 if counts["failed"] else 0
