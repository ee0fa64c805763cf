"""``cordfuse train``: train a model on a prepared dataset with nnU-Net's recipe (resumable;
several GPUs through ``torchrun``)."""

from __future__ import annotations

import argparse
import os

from cordfuse.cli._options import (
    add_amp,
    add_device,
    add_overwrite,
    add_preset,
    add_seed,
    comma_list,
    given,
)
from cordfuse.errors import CordfuseError

#: ``--model``, ``--variant``, ``--fusion`` and ``--correction``:
#: ``cordfuse.training.config.MODELS`` and ``VARIANTS``, and ``cordfuse.nn.networks.FUSIONS``
#: and ``CORRECTIONS`` (the parser imports neither, so that ``--help`` stays fast).
MODELS = ("baseline", "specific", "mean-imputation", "early-fusion", "anchored")
VARIANTS = ("frozen-encoder", "distillation", "feature-aug")
FUSIONS = ("bottleneck", "all-levels")
CORRECTIONS = ("early-fusion", "all-levels")


def add_parser(verbs: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train`` and its options.

    Args:
        verbs: The ``cordfuse`` sub-parsers.

    Returns:
        The verb's parser.
    """
    parser = verbs.add_parser(
        "train",
        help="train a model on a prepared dataset",
        description="nnU-Net's recipe: SGD Nesterov 0.99, lr 0.01 poly (AdamW for the small "
        "preset), CE + Dice with deep supervision. Several GPUs: launch "
        "with torchrun --nproc_per_node N -m cordfuse train ...",
    )
    parser.add_argument("prepared", help="output folder of cordfuse prepare")
    parser.add_argument("out", help="training output folder (checkpoints, log, curves)")
    parser.add_argument(
        "--model",
        choices=MODELS,
        help="baseline (T2Sag only), specific (--sequences), mean-imputation (the paper's), "
        "early-fusion (one U-Net over the stacked sequences), anchored (a frozen "
        "T2Sag-only --anchor plus a correction from every sequence; T2Sag alone gives the "
        "anchor's answer)",
    )
    parser.add_argument(
        "--anchor",
        metavar="RUN",
        help="--model anchored: the T2Sag-only baseline (training folder or checkpoint) it "
        "keeps; copied into the new model's checkpoint",
    )
    parser.add_argument("--sequences", help="comma-separated, for --model specific")
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        help="frozen-encoder (--frozen-from) and distillation: of specific or mean-imputation; "
        "feature-aug: of the baseline (section 2.4)",
    )
    parser.add_argument("--frozen-from", help="baseline checkpoint for --variant frozen-encoder")
    parser.add_argument("--noise-params", help="JSON of the feature-aug mixture (analyze-features)")
    parser.add_argument(
        "--fusion",
        choices=FUSIONS,
        help="where the sequences meet: the paper's bottleneck, or "
        "every encoder level, Mean Imputation per level (beyond the paper)",
    )
    parser.add_argument(
        "--sequence-dropout",
        type=float,
        metavar="P",
        help="mean-imputation, early-fusion, anchored: hide each available non-T2Sag "
        "sequence of a training sample with probability P (0: the paper's recipe)",
    )
    parser.add_argument(
        "--reference-dropout",
        type=float,
        metavar="P",
        help="with --fusion all-levels: hide T2Sag itself with probability P in "
        "training samples whose other sequences cover the patch, so that "
        "they learn to find lesions on their own",
    )
    parser.add_argument(
        "--correction",
        choices=CORRECTIONS,
        help="--model anchored: the correction network, early fusion of the stacked "
        "sequences with the anchor's probability, or one encoder per sequence with "
        "all-level fusion",
    )
    parser.add_argument(
        "--sequence-supervision",
        type=float,
        metavar="W",
        help="mean-imputation: weight of an auxiliary loss segmenting lesions from one other "
        "sequence's features alone each step, so that no encoder stays idle",
    )
    parser.add_argument(
        "--lesion-contrast",
        type=float,
        metavar="P",
        help="scale the lesions' contrast over the cord by 0.5-3x in training, with "
        "probability P per sequence of a sample (real lesions range from just above the "
        "cord to beyond CSF, the default cohorts' stay below CSF)",
    )
    parser.add_argument(
        "--fov-truncation",
        type=float,
        metavar="P",
        help="with probability P, end a training sample's field of view inside the patch (5-50 "
        "%% of it cleared at one end), as a short real slab ends in the middle of the cord",
    )
    parser.add_argument(
        "--paint-lesions",
        type=float,
        metavar="P",
        help="with probability P, paint one small lesion (2-8 mm long, 1.5-3.5 mm wide, "
        "1.25-3x the local cord signal) into a training sample's cord and its label",
    )
    parser.add_argument(
        "--blob-loss",
        type=float,
        metavar="W",
        help="add W times a lesion-wise loss (the blob loss: each truth lesion's own Dice, every "
        "lesion weighing the same) to nnU-Net's, which weighs a lesion by its voxels",
    )
    add_preset(
        parser,
        help="the network and its schedule: paper (the paper's networks, GPU work) or small "
        "(CPU work); the same preset as prepare's (train refuses crops of another size)",
    )
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--iterations", type=int, help="iterations per epoch")
    parser.add_argument("--batch-size", type=int, help="patches per iteration")
    parser.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        help="sgd (nnU-Net's: Nesterov momentum 0.99) or adamw (leaves the all-background "
        "plateau within a CPU budget)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        metavar="LR",
        help="initial learning rate, decayed by the poly schedule",
    )
    add_seed(parser)
    parser.add_argument(
        "--val-fraction", type=float, help="share of the subjects that validate (no --fold-file)"
    )
    parser.add_argument("--fold-file", help='JSON {"train": [ids], "val": [ids]}')
    add_device(parser)
    add_amp(
        parser,
        help="autocast: auto = bf16 on CUDA (fp16 where bf16 is missing), fp32 on a CPU "
        "(unlike predict's auto; bf16 on a CPU only when asked)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="data-loading processes (default: the cores less one, at most 8, "
        "on CUDA; none on CPU)",
    )
    parser.add_argument(
        "--val-every",
        type=int,
        metavar="N",
        help="validate every N epochs and after the last",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the training step with torch.compile (one H200: Mean Imputation "
        "1.7x faster, the baseline not faster; a one-off compile of about a minute)",
    )
    parser.add_argument("--no-augment", action="store_true", help="no data augmentation")
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms (bit-exact resume on CPU)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt")
    add_overwrite(
        parser,
        help="start again in a folder holding an earlier run (its "
        "checkpoints, log and curves are replaced; nothing else is "
        "touched)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Train one model; the first process (rank 0) says how it went.

    Args:
        args: The parsed options.

    Returns:
        The exit status: 0.

    Raises:
        CordfuseError: ``--model specific`` without ``--sequences``, an inconsistent
            configuration (:class:`~cordfuse.training.config.TrainConfig`), an unreadable
            prepared dataset, or a training folder that is not to be replaced.
    """
    from cordfuse.nn.networks import FeatureNoise
    from cordfuse.training import describe_validation
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    sequences = comma_list(args.sequences)
    if args.model == "specific" and not sequences:
        raise CordfuseError("--model specific needs --sequences, e.g. T2Sag,STIR")
    noise = FeatureNoise.from_json(args.noise_params) if args.noise_params else None
    config = TrainConfig(
        augment=not args.no_augment,
        deterministic=args.deterministic,
        compile=args.compile,
        **given(
            model=args.model,
            sequences=tuple(sequences) if sequences else None,
            variant=args.variant,
            preset=args.preset,
            epochs=args.epochs,
            iterations=args.iterations,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            learning_rate=args.learning_rate,
            seed=args.seed,
            val_fraction=args.val_fraction,
            fold_file=args.fold_file,
            frozen_from=args.frozen_from,
            amp=args.amp,
            num_workers=args.workers,
            val_every=args.val_every,
            feature_noise=noise,
            fusion=args.fusion,
            sequence_dropout=args.sequence_dropout,
            reference_dropout=args.reference_dropout,
            anchor=args.anchor,
            correction=args.correction,
            sequence_supervision=args.sequence_supervision,
            lesion_contrast=args.lesion_contrast,
            fov_truncation=args.fov_truncation,
            paint_lesions=args.paint_lesions,
            blob_loss=args.blob_loss,
        ),
    )
    summary = train(
        args.prepared,
        args.out,
        config,
        resume=args.resume,
        overwrite=args.overwrite,
        **given(device=args.device),
    )
    # under torchrun every rank runs this verb: one of them speaks
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"Trained {config.model}"
            + (f" ({config.variant})" if config.variant else "")
            + f" for {config.schedule[0]} epochs in {summary['seconds']:.0f} s: "
            f"{describe_validation(summary)} -> {args.out}"
        )
        if "ranks_in_sync" in summary:
            print(
                f"DDP: {summary['world_size']} ranks, weights identical across ranks: "
                f"{summary['ranks_in_sync']}"
            )
    return 0
