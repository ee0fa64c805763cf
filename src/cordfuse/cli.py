"""``cordfuse <verb>``: argument parsing, progress and error reporting; no logic of its own.

Every verb is a function ``cmd_<verb>(args) -> int`` and :func:`main` takes ``argv``, so tests call
the CLI in-process. A :class:`~cordfuse.errors.CordfuseError` (a user mistake: bad file, bad
option) is printed as one line ``cordfuse: error: ...`` with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cordfuse import __version__
from cordfuse.errors import CordfuseError
from cordfuse.sequences import SEQUENCES


def _progress(total: int, desc: str):
    """A tqdm bar on stderr (hidden when stderr is not a terminal); returns an update callback."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="subject", disable=None, file=sys.stderr)

    def update(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return update


# ---------------------------------------------------------------------------------------------
# synth


def cmd_synth(args: argparse.Namespace) -> int:
    from cordfuse.synth import write_cohort

    cohorts = [c.strip() for c in args.cohorts.split(",") if c.strip()]
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
        progress=_progress(args.subjects, "synth"),
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(
        f"Wrote {args.subjects} synthetic subjects (cohorts {', '.join(cohorts)}, "
        f"seed {args.seed}) to {out} in {elapsed:.1f} s ({size / 1e6:.1f} MB)."
    )
    if args.qc:
        print(f"QC pictures: {out / 'derivatives' / 'synth' / 'qc'}")
    return 0


# ---------------------------------------------------------------------------------------------
# check


def run_check(dataset: str | Path, *, mapping: str | None = None, as_json: bool = False,
              participants: list[str] | None = None) -> int:
    from cordfuse.check import check_dataset
    from cordfuse.dataset import discover
    from cordfuse.sequences import load_rules

    ds = discover(dataset, rules=load_rules(mapping)).select(participants)
    report = check_dataset(ds, progress=_progress(len(ds.subjects), "check"))
    print(json.dumps(report.to_json(), indent=2) if as_json else report.format_text())
    return 0 if report.ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    return run_check(args.dataset, mapping=args.mapping, as_json=args.json,
                     participants=args.participant_label)


# ---------------------------------------------------------------------------------------------
# prepare, centerline, restore


def _prep_config(args: argparse.Namespace):
    from dataclasses import replace

    from cordfuse.preprocess.pipeline import PRESETS

    config = PRESETS[args.preset]
    changes = {"centerline": args.centerline, "register_slabs": not args.no_register}
    if args.spacing is not None:
        changes["spacing"] = args.spacing
    if args.crop_size is not None:
        changes["crop_size"] = args.crop_size
    if args.margin is not None:
        changes["margin_mm"] = args.margin
    return replace(config, **changes)


def cmd_prepare(args: argparse.Namespace) -> int:
    from cordfuse.dataset import discover
    from cordfuse.preprocess.batch import load_prepared_dataset, prepare_dataset
    from cordfuse.sequences import load_rules

    config = _prep_config(args)
    dataset = discover(args.dataset, rules=load_rules(args.mapping)).select(args.participant_label)
    start = time.perf_counter()
    results = prepare_dataset(dataset, args.out, config, jobs=args.jobs, overwrite=args.overwrite,
                              qc=args.qc, progress=_progress(len(dataset.subjects), "prepare"))
    counts = {k: sum(r.status == k for r in results) for k in ("prepared", "skipped", "failed")}
    for result in results:
        for warning in result.warnings:
            print(f"warning {result.name}: {warning}")
        if result.status == "failed":
            print(f"FAILED {result.name}: {result.message}", file=sys.stderr)
    fallbacks = sum(len(r.fallbacks) for r in results if r.status != "failed")
    print(f"{counts['prepared']} prepared, {counts['skipped']} skipped (already done), "
          f"{counts['failed']} failed, {fallbacks} centreline fallback(s) to T2Sag, in "
          f"{time.perf_counter() - start:.1f} s -> {args.out} "
          f"({config.spacing} mm, {config.crop_size}x{config.crop_size})")
    if args.nnunet:
        from cordfuse.preprocess.nnunet import export_nnunet

        _, paths = load_prepared_dataset(args.out)
        n = export_nnunet(paths, args.nnunet)
        print(f"nnU-Net v2 raw dataset: {args.nnunet} ({n} training cases)")
    return 1 if counts["failed"] else 0


def cmd_centerline(args: argparse.Namespace) -> int:
    from cordfuse.io import read_volume
    from cordfuse.preprocess.centerline import (
        centerline_from_mask,
        detect_centerline,
        polarity_from_name,
        sct_centerline,
    )

    data, affine = read_volume(args.image)
    if args.method == "mask":
        if not args.mask:
            raise CordfuseError("--method mask needs --mask CORD_MASK")
        mask, mask_affine = read_volume(args.mask)
        line = centerline_from_mask(mask, mask_affine, smooth_mm=3.0)
    elif args.method == "sct":
        line = sct_centerline(args.image)
    else:
        try:
            polarity = args.contrast
            if polarity == "auto":  # a BIDS suffix that states the contrast beats a guess
                polarity = polarity_from_name(args.image) or "auto"
            line = detect_centerline(data, affine, polarity=polarity)
        except CordfuseError as exc:
            raise CordfuseError(f"{args.image}: {exc}") from exc
    line.to_csv(args.output)
    low, high = line.z_range
    print(f"{len(line.points)} centreline points, z {low:.1f} .. {high:.1f} mm -> {args.output}")
    if args.qc:
        from cordfuse.preprocess.qc import write_centerline_qc

        write_centerline_qc(data, affine, line, args.qc)
        print(f"QC picture: {args.qc}")
    return 0


def _read_crop(path: str):
    import numpy as np

    from cordfuse.io import read_volume

    if path.endswith(".npy"):
        try:
            return np.load(path).astype(np.float32)
        except (OSError, ValueError) as exc:
            raise CordfuseError(f"{path}: unreadable array ({exc})") from exc
    return read_volume(path)[0]


def cmd_restore(args: argparse.Namespace) -> int:
    import numpy as np

    from cordfuse.io import load_nifti, make_nifti, save_nifti
    from cordfuse.preprocess.pipeline import PreparedSubject, restore, slab_index

    prepared = PreparedSubject.load(args.prepared)
    crop = _read_crop(args.crop)
    index = None if args.slab is None else slab_index(prepared, args.slab)
    data, affine = restore(prepared, crop, slab=index)
    source = prepared.t2sag["slabs"][index or 0]["path"]
    like = None
    if Path(source).exists() and (index is not None or len(prepared.t2sag["slabs"]) == 1):
        like = load_nifti(source)  # keep the T2Sag header (descriptions, units, qform codes)
    if args.probabilities:
        out = make_nifti(data.astype(np.float32), affine, like=like)
    else:
        out = make_nifti((data > args.threshold).astype(np.uint8), affine, like=like)
    if Path(args.output).resolve() == Path(source).resolve():
        raise CordfuseError(f"{args.output}: refusing to overwrite the input T2Sag image")
    save_nifti(out, args.output)
    where = "fused T2Sag" if args.slab is None else f"T2Sag slab {args.slab}"
    print(f"Restored {args.crop} onto the {where} grid {data.shape} -> {args.output}")
    return 0


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args: argparse.Namespace) -> int:
    from cordfuse.nn.networks import FeatureNoise
    from cordfuse.training import describe_validation
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    sequences = tuple(s.strip() for s in args.sequences.split(",")) if args.sequences else None
    if args.model == "specific" and not sequences:
        raise CordfuseError("--model specific needs --sequences, e.g. T2Sag,STIR")
    noise = FeatureNoise()
    if args.noise_params:
        noise = FeatureNoise.from_json(args.noise_params)
    config = TrainConfig(
        model=args.model,
        sequences=sequences or SEQUENCES,
        variant=args.variant, preset=args.preset, epochs=args.epochs,
        iterations=args.iterations, batch_size=args.batch_size, seed=args.seed,
        val_fraction=args.val_fraction, fold_file=args.fold_file, frozen_from=args.frozen_from,
        augment=not args.no_augment, amp=args.amp, deterministic=args.deterministic,
        num_workers=args.workers, val_every=args.val_every, compile=args.compile,
        feature_noise=noise,
        fusion=args.fusion,
        sequence_dropout=args.sequence_dropout, reference_dropout=args.reference_dropout,
    )
    summary = train(args.prepared, args.out, config, device=args.device, resume=args.resume,
                    overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"Trained {config.model}" + (f" ({config.variant})" if config.variant else "")
              + f" for {config.epochs} epochs in {summary['seconds']:.0f} s: "
              f"{describe_validation(summary)} -> {args.out}")
        if "ranks_in_sync" in summary:
            print(f"DDP: {summary['world_size']} ranks, weights identical across ranks: "
                  f"{summary['ranks_in_sync']}")
    return 0


# ---------------------------------------------------------------------------------------------
# predict


def cmd_predict(args: argparse.Namespace) -> int:
    from cordfuse.inference import predict_dataset, subjects_from_input
    from cordfuse.nn.device import choose_device

    files = {seq: getattr(args, seq.lower()) for seq in SEQUENCES if getattr(args, seq.lower())}
    subjects = subjects_from_input(args.input, files, mapping=args.mapping,
                                   participants=args.participant_label)
    if not subjects:
        raise CordfuseError(f"{args.input}: no subject to predict")
    options = {
        "sequences": args.sequences.split(",") if args.sequences else None, "tta": args.tta,
        "threshold": args.threshold, "min_volume": args.min_volume,
        "device": str(choose_device(args.device)), "batch_size": args.batch_size, "amp": args.amp,
        "per_slab": args.per_slab, "save_probabilities": args.save_probabilities, "qc": args.qc,
        "centerline": args.centerline, "overwrite": args.overwrite,
    }
    start = time.perf_counter()
    results = predict_dataset(subjects, tuple(args.model), args.output, options, jobs=args.jobs,
                              threads=args.threads,
                              progress=_progress(len(subjects), "predict"))
    counts = {"done": 0, "skipped": 0, "failed": 0}
    for result in results:
        counts[result.status] += 1
        for warning in result.warnings:
            print(f"warning {result.name}: {warning}")
        if result.status == "failed":
            print(f"FAILED {result.name}: {result.message}", file=sys.stderr)
        else:
            print(f"{result.name}: {result.files[0]}"
                  + (" (done before)" if result.status == "skipped" else ""))
    failed = counts["failed"]
    print(f"{counts['done']} predicted, {failed} failed, {counts['skipped']} skipped (done "
          f"before with the same models and options), in {time.perf_counter() - start:.1f} s -> "
          f"{args.output}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# evaluate


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cordfuse.evaluation.evaluate import (
        evaluate,
        format_text,
        rows_to_csv,
        summary_table,
        to_json,
    )
    from cordfuse.io import atomic_write_text

    pred, gt = Path(args.pred), Path(args.gt)
    for path in (pred, gt):
        if not path.exists():
            raise CordfuseError(f"{path}: not found")
    options = {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma,
               "min_volume_mm3": args.min_volume, "connectivity": args.connectivity}
    participants = Path(args.participants) if args.participants else None
    rows, problems = evaluate(pred, gt, participants=participants, per_slab=args.per_slab,
                              **options)
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    if not rows:
        raise CordfuseError("no pair could be evaluated")
    summary = summary_table(rows)
    if args.output:
        atomic_write_text(args.output, rows_to_csv(rows))
    lesions_path = args.lesions or (_lesions_beside(args.output) if args.output else None)
    if lesions_path:
        from cordfuse.evaluation.lesions import rows_to_csv as lesions_to_csv

        atomic_write_text(lesions_path, lesions_to_csv([lesion for row in rows
                                                        for lesion in row.lesions]))
    if args.json and pred.is_file():
        import json as _json

        document = _json.loads(to_json(rows, summary))["images"][0]
        print(_json.dumps(document, indent=2))
    elif args.json:
        print(to_json(rows, summary))
    else:
        print(format_text(rows, summary))
        if args.output:
            print(f"per-image metrics: {args.output}")
        if lesions_path:
            print(f"per-lesion table: {lesions_path}")
    return 1 if problems else 0


def _lesions_beside(output: str) -> str:
    """``metrics.csv`` -> ``metrics_lesions.csv``: the per-lesion table next to the per-image."""
    path = Path(output)
    return str(path.with_name(f"{path.stem}_lesions{path.suffix or '.csv'}"))


# ---------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from cordfuse.demo import DemoSettings, run_demo

    settings = DemoSettings(subjects=args.subjects, seed=args.seed, epochs=args.epochs,
                            iterations=args.iterations, test_per_cohort=args.test_per_cohort)
    result = run_demo(args.out, settings, overwrite=args.overwrite)
    return 0 if result["ok"] else 1


def cmd_diagnose(args: argparse.Namespace) -> int:
    from cordfuse.diagnostics import diagnose_study

    experiments = [e.strip() for e in args.experiments.split(",")] if args.experiments else None
    result = diagnose_study(args.study_dir, device=args.device, experiments=experiments)
    print(f"Diagnosed {len(result['models'])} model(s): "
          f"{Path(args.study_dir) / 'diagnostics.md'} (and .json)")
    return 0


# ---------------------------------------------------------------------------------------------
# study, analyze-features


def cmd_study(args: argparse.Namespace) -> int:
    from cordfuse.study import EXAMPLE_CONFIG, run_study

    if args.example:
        print(EXAMPLE_CONFIG, end="")
        return 0
    if not args.config:
        raise CordfuseError("give the study CONFIG (cordfuse study --example prints one)")
    result = run_study(args.config, args.out, tables_only=args.tables_only)
    for name in ("table1.md", "table2.md"):
        path = result["tables"].get(name)
        if path:
            print()
            print(path.read_text(), end="")
    skipped = [r for r in result["runs"] if r.status == "skipped"]
    for r in skipped:
        print(f"skipped {r.experiment} seed {r.seed}: {r.message}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cordfuse.report import write_report

    path = write_report(args.run_dir, args.out,
                        progress=lambda title: print(f"  {title}", file=sys.stderr))
    print(f"Report: {path.resolve()}")
    return 0


def cmd_analyze_features(args: argparse.Namespace) -> int:
    from cordfuse.features import analyze_features

    out = Path(args.out)
    fit = analyze_features(args.model, args.prepared, out, device=args.device,
                           max_values=args.max_values, seed=args.seed)
    noise = fit.noise
    print(f"Fitted on {fit.n_values} feature differences: weight {noise.weight:.4f}, "
          f"logistic scale {noise.logistic_scale:.4g}, normal sigma {noise.normal_sigma:.4g}")
    print(f"Wrote {out / 'noise_params.json'} (train --noise-params), {out / 'fit.json'}, "
          f"{out / 'histogram.png'}")
    return 0


# ---------------------------------------------------------------------------------------------


def _add_participant_label(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="only these participants (01 or sub-01), as a BIDS App: one job per "
                             "participant may write into the same output folder at once")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cordfuse",
        description="Multi-sequence MS lesion segmentation in spinal cord MRI.",
    )
    parser.add_argument("--version", action="version", version=f"cordfuse {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    synth = verbs.add_parser(
        "synth",
        help="write a synthetic multi-sequence BIDS cohort",
        description="Write a realistic synthetic BIDS cohort with ground truth.",
    )
    synth.add_argument("out", help="output folder (created)")
    synth.add_argument("--subjects", type=int, default=10, help="number of subjects (default 10)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--cohorts", default="A,B,C", help="cohort names, assigned in turn (A,B,C)")
    synth.add_argument("--qc", action="store_true", help="also write QC pictures per subject")
    synth.add_argument(
        "--overwrite", action="store_true", help="replace an existing synthetic dataset in OUT"
    )
    synth.set_defaults(func=cmd_synth)

    check = verbs.add_parser(
        "check",
        help="availability matrix and problems of a BIDS dataset",
        description="Report the subjects x sequences matrix and every problem; "
        "exit status 0 only when nothing is wrong.",
    )
    check.add_argument("dataset", help="BIDS dataset folder")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_participant_label(check)
    check.add_argument("--mapping", help="JSON/YAML file overriding the sequence matching rules")
    check.set_defaults(func=cmd_check)

    prepare = verbs.add_parser(
        "prepare", help="pre-process a BIDS dataset onto the cropped reference grid",
        description="Slab fusion, centrelines, 0.5 mm reference grid and 48x48 centreline crops.")
    prepare.add_argument("dataset", help="BIDS dataset folder (read only)")
    prepare.add_argument("out", help="output folder (one prepared subject per folder)")
    prepare.add_argument("--preset", choices=("paper", "small"), default="paper",
                         help="paper: 0.5 mm, 48x48 (default); small: 1 mm, 24x24 for CPU work")
    prepare.add_argument("--spacing", type=float, help="grid spacing in mm (overrides preset)")
    prepare.add_argument("--crop-size", type=int, help="crop size in voxels (overrides preset)")
    prepare.add_argument("--margin", type=float, help="S-I margin beyond the cord, mm")
    prepare.add_argument("--centerline", choices=("auto", "mask", "sct"), default="auto")
    prepare.add_argument("--no-register", action="store_true",
                         help="do not register sagittal slabs before fusing them")
    prepare.add_argument("--jobs", type=int, default=1, help="subjects in parallel (processes)")
    _add_participant_label(prepare)
    prepare.add_argument("--mapping", help="JSON/YAML file overriding the sequence matching rules")
    prepare.add_argument("--nnunet", metavar="DIR", help="also write nnU-Net v2 raw format")
    prepare.add_argument("--qc", action="store_true", help="QC picture per subject")
    prepare.add_argument("--overwrite", action="store_true", help="redo finished subjects")
    prepare.set_defaults(func=cmd_prepare)

    centerline = verbs.add_parser("centerline", help="cord centreline of one image (CSV)")
    centerline.add_argument("image")
    centerline.add_argument("-o", "--output", required=True, help="CSV: x,y,z world RAS mm")
    centerline.add_argument("--method", choices=("auto", "mask", "sct"), default="auto")
    centerline.add_argument("--mask", help="cord mask for --method mask")
    centerline.add_argument("--contrast", choices=("auto", "bright-csf", "dark-csf"),
                            default="auto",
                            help="CSF brighter (T2, STIR, T2*) or darker (T1, UNIT1); auto: from "
                                 "the BIDS suffix (_T1w, _T2w, ...), else from the image")
    centerline.add_argument("--qc", metavar="PNG", help="write a QC picture")
    centerline.set_defaults(func=cmd_centerline)

    restore = verbs.add_parser("restore", help="map a crop-space mask back to the native T2Sag")
    restore.add_argument("prepared", help="prepared subject folder or its prepared.npz")
    restore.add_argument("crop", help="crop-space mask/probabilities (.nii[.gz] or .npy)")
    restore.add_argument("-o", "--output", required=True)
    restore.add_argument("--slab", type=int, metavar="N",
                         help="onto the T2Sag slab of chunk N, as in its BIDS file name "
                              "(..._chunk-N_T2w.nii.gz; without chunks, N counts from 1 at the "
                              "top) instead of the fused T2Sag")
    restore.add_argument("--probabilities", action="store_true", help="keep float values")
    restore.add_argument("--threshold", type=float, default=0.5)
    restore.set_defaults(func=cmd_restore)

    train = verbs.add_parser("train", help="train a model on a prepared dataset",
                             description="nnU-Net's recipe: SGD Nesterov 0.99, lr 0.01 poly, "
                                         "CE + Dice with deep supervision. Several GPUs: launch "
                                         "with torchrun --nproc_per_node N -m cordfuse train ...")
    train.add_argument("prepared", help="output folder of cordfuse prepare")
    train.add_argument("out", help="training output folder (checkpoints, log, curves)")
    train.add_argument("--model", choices=("baseline", "specific", "mean-imputation"),
                       default="mean-imputation")
    train.add_argument("--sequences", help="comma-separated, for --model specific")
    train.add_argument("--variant", choices=("frozen-encoder", "distillation", "feature-aug"))
    train.add_argument("--frozen-from", help="baseline checkpoint for --variant frozen-encoder")
    train.add_argument("--noise-params", help="JSON of the feature-aug mixture (analyze-features)")
    train.add_argument("--fusion", choices=("bottleneck", "all-levels"), default="bottleneck",
                       help="where the sequences meet: the paper's bottleneck (default), or every "
                            "encoder level, Mean Imputation per level (beyond the paper)")
    train.add_argument("--sequence-dropout", type=float, default=0.0, metavar="P",
                       help="Mean Imputation: hide each available non-T2Sag sequence of a "
                            "training sample with probability P (default 0, the paper's recipe)")
    train.add_argument("--reference-dropout", type=float, default=0.0, metavar="P",
                       help="with --fusion all-levels: hide T2Sag itself with probability P in "
                            "training samples whose other sequences cover the patch, so that "
                            "they learn to find lesions on their own (default 0)")
    train.add_argument("--preset", choices=("paper", "small"), default="paper")
    train.add_argument("--epochs", type=int, default=1000)
    train.add_argument("--iterations", type=int, default=250, help="iterations per epoch")
    train.add_argument("--batch-size", type=int, default=2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--fold-file", help='JSON {"train": [ids], "val": [ids]}')
    train.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:N")
    train.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                       help="autocast: auto = bf16/fp16 on CUDA, none on CPU")
    train.add_argument("--workers", type=int, default=None,
                       help="data-loading processes (default: the cores less one, at most 8, on "
                            "CUDA; none on CPU)")
    train.add_argument("--val-every", type=int, default=1, metavar="N",
                       help="validate every N epochs and after the last (default 1)")
    train.add_argument("--compile", action="store_true",
                       help="compile the training step with torch.compile (CUDA: about 1.9x "
                            "faster steps after a one-off compile)")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic algorithms (bit-exact resume on CPU)")
    train.add_argument("--resume", action="store_true", help="continue from checkpoint_latest.pt")
    train.add_argument("--overwrite", action="store_true",
                       help="start again in a folder holding an earlier run (its checkpoints, "
                            "log and curves are replaced; nothing else is touched)")
    train.set_defaults(func=cmd_train)

    predict = verbs.add_parser(
        "predict", help="lesion masks on the native T2Sag grid from raw NIfTI/BIDS",
        description="Pre-processing on the fly, sliding window along S-I, ensemble of models, "
                    "back to the native fused T2Sag grid.")
    predict.add_argument("model", nargs="+", help="training folder(s) or checkpoint(s)")
    predict.add_argument("-i", "--input", help="BIDS dataset or one subject folder")
    predict.add_argument("-o", "--output", required=True, help="output folder")
    for seq in SEQUENCES:
        predict.add_argument(f"--{seq.lower()}", nargs="+", metavar="NIFTI",
                             help=f"explicit {seq} file(s) (several = slabs, top first)")
    predict.add_argument("--sequences", help="use only these sequences, e.g. T2Sag,STIR")
    predict.add_argument("--tta", action="store_true", help="left-right mirroring")
    predict.add_argument("--centerline", choices=("auto", "mask", "sct"),
                         help="override the checkpoint's centreline backend (mask: cord masks "
                              "in derivatives/labels)")
    predict.add_argument("--save-probabilities", action="store_true")
    predict.add_argument("--per-slab", action="store_true", help="also one mask per T2Sag slab")
    predict.add_argument("--threshold", type=float, default=0.5)
    predict.add_argument("--min-volume", type=float, default=0.0, help="mm^3; smaller removed")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                         help="auto: bf16 on CUDA and on CPUs with native bf16, else fp32")
    predict.add_argument("--batch-size", type=int, default=2, help="windows per forward pass")
    predict.add_argument("--jobs", type=int, default=1, help="subjects in parallel (processes)")
    predict.add_argument("--threads", type=int,
                         help="CPU threads of each process (default: the usable cores / --jobs)")
    _add_participant_label(predict)
    predict.add_argument("--mapping", help="JSON/YAML file overriding the sequence rules")
    predict.add_argument("--qc", action="store_true", help="QC picture per subject")
    predict.add_argument("--overwrite", action="store_true",
                         help="predict again the subjects already done in OUTPUT with the same "
                              "models and options (by default they are skipped)")
    predict.set_defaults(func=cmd_predict)

    evaluate = verbs.add_parser(
        "evaluate", help="Dice and lesion-wise metrics (Anima rules) against ground truth",
        description="Per-image Dice, lesion-wise sensitivity/precision/F1 exactly as Anima's "
                    "animaSegPerfAnalyzer -l, then mean and median per cohort.")
    evaluate.add_argument("--pred", required=True, help="prediction file or folder")
    evaluate.add_argument("--gt", required=True,
                          help="ground-truth file or folder, a prepared folder (the fused native "
                               "ground truth it stores) or a BIDS dataset (labels fused on the "
                               "T2Sag grid)")
    evaluate.add_argument("--json", action="store_true", help="JSON output")
    evaluate.add_argument("-o", "--output", help="per-image metrics CSV (and, unless --lesions "
                          "says otherwise, the per-lesion table as <name>_lesions.csv)")
    evaluate.add_argument("--lesions", help="per-lesion CSV: every ground-truth lesion (detected "
                          "or missed) and every predicted lesion (true or false positive)")
    evaluate.add_argument("--participants", help="participants.tsv with a cohort column")
    evaluate.add_argument("--alpha", type=float, default=0.10, help="detected if > alpha covered")
    evaluate.add_argument("--beta", type=float, default=0.70, help="max fraction outside")
    evaluate.add_argument("--gamma", type=float, default=0.65, help="cumulated overlap share")
    evaluate.add_argument("--min-volume", type=float, default=3.0,
                          help="lesions <= this volume (mm^3) are removed")
    evaluate.add_argument("--connectivity", type=int, choices=(6, 18, 26), default=6)
    evaluate.add_argument("--per-slab", action="store_true",
                          help="with a BIDS --gt of several T2Sag slabs: score each slab label "
                               "against <subject>_slab-N_lesion.nii.gz (predict --per-slab) "
                               "instead of the fused T2Sag grid")
    evaluate.set_defaults(func=cmd_evaluate)

    demo = verbs.add_parser("demo", help="run the whole pipeline on a small synthetic cohort")
    demo.add_argument("out", nargs="?", default="cordfuse-demo", help="output folder")
    demo.add_argument("--subjects", type=int, default=24, help="subjects (default 24)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=50, help="training epochs per model")
    demo.add_argument("--iterations", type=int, default=25, help="iterations per epoch")
    demo.add_argument("--test-per-cohort", type=int, default=3, help="held-out test subjects")
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an earlier demo in OUT (only what the demo wrote there)")
    demo.set_defaults(func=cmd_demo)

    study = verbs.add_parser("study", help="the paper's experiment grid, Tables 1 and 2",
                             description="Train every model of the paper for n seeds, evaluate "
                             "the test cohorts and write Tables 1 and 2 (resumable).")
    study.add_argument("config", nargs="?", help="study YAML/JSON (see --example)")
    study.add_argument("-o", "--out", help="study folder (default: CONFIG without its suffix)")
    study.add_argument("--example", action="store_true", help="print an example config")
    study.add_argument("--tables-only", action="store_true",
                       help="rebuild the tables from the metrics already computed")
    study.set_defaults(func=cmd_study)

    report = verbs.add_parser("report", help="the self-contained HTML report of a run folder",
                              description="One HTML file (pictures embedded) for a demo or study "
                              "folder: availability, metrics, box plots, QC, curves, versions.")
    report.add_argument("run_dir", help="folder written by cordfuse demo or cordfuse study")
    report.add_argument("-o", "--out", help="HTML file (default RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)

    features = verbs.add_parser(
        "analyze-features", help="fit the latent-noise mixture of a Mean Imputation model",
        description="Bottleneck feature differences (other sequences - T2Sag) of a trained "
        "multi-encoder model, fitted by maximum likelihood with the logistic/normal mixture.")
    features.add_argument("model", help="training folder or checkpoint of a Mean Imputation model")
    features.add_argument("prepared", help="prepared dataset folder")
    features.add_argument("-o", "--out", default="features", help="output folder")
    features.add_argument("--max-values", type=int, default=2_000_000,
                          help="subsample of differences to fit (default 2e6)")
    features.add_argument("--seed", type=int, default=0)
    features.add_argument("--device", default="auto")
    features.set_defaults(func=cmd_analyze_features)

    diagnose = verbs.add_parser(
        "diagnose", help="why the extra sequences do (not) change a study's answers",
        description="Measurements on a finished study: encoder learning and fusion weights per "
        "sequence, bottleneck and probability change when sequences are added, lesion contrast "
        "and misalignment per sequence in the prepared crops, field-of-view coverage.")
    diagnose.add_argument("study_dir", help="folder of a finished cordfuse study")
    diagnose.add_argument("--experiments", help="comma-separated experiments (default: every "
                          "Mean Imputation model of the study)")
    diagnose.add_argument("--device", default="cpu")
    diagnose.set_defaults(func=cmd_diagnose)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except CordfuseError as exc:
        print(f"cordfuse: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cordfuse: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
