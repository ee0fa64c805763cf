"""How many sliding windows a prediction needs (issue 24): today's 50 % overlap against fewer
windows (25 % and no overlap) and one pass over the whole crop, on a trained model's test
subjects.

The network is fully convolutional, but its instance normalisation sees the window it is given,
so fewer or longer windows change the answer; only measurement says by how much. For each way,
the windows computed, the network's seconds, lesion-wise F1 (pooled over subjects and the mean
per subject) and Dice against the truth on the crop grid, and the share of crop voxels whose
mask agrees with today's.

Input: a finished study (its ``fold.json`` test subjects and ``prepared/``) and one of its
trainings, e.g. ``s12/runs/baseline/seed-0``.

Run: ``.venv/bin/python benchmarks/bench_windows.py STUDY RUN [--sequences T2Sag]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("study", type=Path)
    parser.add_argument("run", type=Path)
    parser.add_argument("--sequences", help="predict with these only (e.g. T2Sag)")
    args = parser.parse_args()

    import torch

    from cordfuse.evaluation.metrics import LesionDetection, evaluate_masks
    from cordfuse.inference import load_model, restrict_prepared
    from cordfuse.nn.sliding import predict_probabilities, window_starts
    from cordfuse.preprocess.pipeline import PreparedSubject
    from cordfuse.threads import set_threads, threads_budget
    from cordfuse.training.data import normalise

    set_threads(threads_budget(None))
    model = load_model(args.run, torch.device("cpu"))
    patch = model.net.patch_size[2]
    divisor = int(np.prod([s[2] for s in model.net.strides]))
    ways = {
        "50 % overlap (today)": 0.5,
        "25 % overlap": 0.25,
        "no overlap": 0.0,
        "whole crop": None,
    }
    totals = {
        w: {"windows": 0, "seconds": 0.0, "f1": [], "dice": [], "agree": [], "counts": np.zeros(4)}
        for w in ways
    }
    test = json.loads((args.study / "fold.json").read_text())["test"]
    for subject in test:
        prepared = PreparedSubject.load(args.study / "prepared" / subject)
        if prepared.label is None:
            continue
        if args.sequences:
            prepared = restrict_prepared(prepared, args.sequences.split(","))
        images, available = normalise(prepared, model.sequences, coverage=model.net.coverage_input)
        length = images.shape[-1]
        today = None
        for way, overlap in ways.items():
            window = patch if overlap is not None else max(patch, -(-length // divisor) * divisor)
            start = time.perf_counter()
            probabilities = predict_probabilities(
                model.model, images, available, patch_z=window, overlap=overlap or 0.0
            )
            total = totals[way]
            total["seconds"] += time.perf_counter() - start
            total["windows"] += len(window_starts(max(length, window), window, overlap or 0.0))
            mask = probabilities > 0.5
            today = mask if today is None else today
            metrics = evaluate_masks(
                mask, prepared.label > 0, voxel_volume_mm3=prepared.geometry.spacing**3
            )
            total["f1"].append(metrics.lesion_f1)
            total["dice"].append(metrics.dice)
            total["agree"].append(float((mask == today).mean()))
            total["counts"] += (
                metrics.n_gt,
                metrics.gt_detected,
                metrics.n_pred,
                metrics.pred_true_positive,
            )
    subjects = len(totals["no overlap"]["f1"])
    print(f"\n== sliding windows: {args.run} on the {subjects} test subjects of {args.study}")
    header = ("windows", "seconds", "pooled F1", "mean F1", "Dice", "found", "false")
    print(f"  {'way':22s} " + " ".join(f"{h:>9s}" for h in header) + "  voxels as today (worst)")
    for way, total in totals.items():
        n_gt, found, n_pred, true = (int(c) for c in total["counts"])
        pooled = LesionDetection(n_gt, n_pred, found, true).f1  # the Anima rules' F1, pooled
        print(
            f"  {way:22s} {total['windows']:9d} {total['seconds']:9.1f} {pooled:9.4f} "
            f"{np.nanmean(total['f1']):9.4f} {np.nanmean(total['dice']):9.4f} "
            f"{f'{found}/{n_gt}':>9s} {n_pred - true:9d}  {min(total['agree']):.5f}"
        )


if __name__ == "__main__":
    main()
