"""Prediction speed and memory (issue 5): one subject, paper-size networks, one model, no TTA,
this machine's cores: <= 10 s end to end for the single-sequence net, <= 20 s for the six-encoder
net (bf16 autocast where it keeps the argmax on >= 99.9 % of voxels); peak RSS <= 4 GB. Issue 24
asks for <= 5 s (baseline) and <= 10 s (Mean Imputation) in fp32.

The compute floor says whether such a target can be met at all on this machine: the windows the
subject's crop needs, times the floating-point operations of one window (counted by
``torch.utils.flop_counter``), divided by what this machine's cores compute in a large fp32
matrix product (the best any convolution kernel does). The network's own throughput is printed
beside it.

Weights are random (speed and numerics do not depend on training). Each run is a separate
``cordfuse predict`` process, so its time includes start-up, model loading and pre-processing,
and its peak RSS is measured alone.

Run: ``.venv/bin/python benchmarks/bench_predict.py``
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, write_full_subject


def make_checkpoint(path: Path, model: str) -> None:
    import torch

    from cordfuse.checkpoint import Checkpoint, initial_network
    from cordfuse.preprocess.pipeline import PRESETS
    from cordfuse.training.config import TrainConfig

    config = TrainConfig(model=model, preset="paper")
    torch.manual_seed(0)
    net = initial_network(config, config.net, config.model_sequences)
    Checkpoint(net.state_dict(), config, config.net, config.model_sequences, PRESETS["paper"]).save(
        path
    )


def run(args: list[str]) -> tuple[float, float]:
    """Wall time (s) and peak RSS (GB) of one cordfuse process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "cordfuse", *args], check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
    return elapsed, peak / 1024**2


def agreement(subject, model_path: Path) -> float:
    """Fraction of crop voxels whose argmax is the same in fp32 and bf16."""
    import torch

    from cordfuse.inference import load_models, predict_subject

    models = load_models([model_path], torch.device("cpu"))
    p32 = predict_subject(subject, models, amp="none").probabilities
    p16 = predict_subject(subject, models, amp="bf16").probabilities
    return float(((p32 > 0.5) == (p16 > 0.5)).mean())


def trained_agreement(root: Path) -> tuple[str, str]:
    """Random weights put logits at the decision boundary; a trained net is what matters. Train
    the small preset (~2 min) and compare fp32 and bf16 argmax on its validation subjects."""
    from cordfuse.cli import main as cli
    from cordfuse.dataset import discover
    from cordfuse.synth.cohort import write_cohort
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    bids = write_cohort(root / "small_bids", subjects=10, seed=21)
    cli(["prepare", str(bids), str(root / "small_prep"), "--preset", "small", "--jobs", "2"])
    config = TrainConfig(model="baseline", preset="small", epochs=50, iterations=25, seed=0)
    summary = train(root / "small_prep", root / "small_run", config, progress=False)
    values = [
        agreement(s, root / "small_run")
        for s in discover(bids).subjects
        if s.subject_id in summary["val"]
    ]
    return (
        f"{100 * min(values):.3f} %",
        f"worst of {len(values)} validation subjects (val Dice {summary['best_val_dice']:.2f})",
    )


def matmul_gflops(size: int = 4096, repeats: int = 5) -> float:
    """This machine's fp32 throughput on a large matrix product (GFLOP/s), the best of
    ``repeats``: the ceiling of what a convolution kernel reaches on these cores."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def compute_floor(subject) -> list[tuple[str, str, str]]:
    """Per paper-size network: its windows on this subject's crop, GFLOP per window, the
    seconds those windows need at the matrix-product ceiling, and one window's measured time."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cordfuse.checkpoint import initial_network
    from cordfuse.nn.device import use_onednn_convolutions
    from cordfuse.nn.sliding import window_starts
    from cordfuse.preprocess.pipeline import PRESETS, prepare_subject
    from cordfuse.training.config import TrainConfig

    prepared = prepare_subject(subject, PRESETS["paper"])
    length = next(iter(prepared.images.values())).shape[-1]
    ceiling = matmul_gflops()
    rows = [("fp32 matrix product (4096^2)", f"{ceiling:.0f} GFLOP/s", "this machine's ceiling")]
    for model in ("baseline", "mean-imputation"):
        config = TrainConfig(model=model, preset="paper")
        net = initial_network(config, config.net, config.model_sequences).eval()
        patch = config.net.patch_size
        k = len(config.model_sequences)
        x = torch.randn(1, k * config.net.channels_per_sequence, *patch)
        available = torch.ones(1, k, dtype=torch.bool)
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                net(x, available)
            gflop = counter.get_total_flops() / 1e9
            use_onednn_convolutions(net)
            net(x, available)  # warm-up: oneDNN picks its kernels
            start = time.perf_counter()
            net(x, available)
            window = time.perf_counter() - start
        windows = len(window_starts(max(length, patch[2]), patch[2], 0.5))
        floor = windows * gflop / ceiling
        rows.append(
            (
                f"{model}: network floor",
                f"{floor:.1f} s",
                f"{windows} windows (crop {length} long, 50 % overlap) x {gflop:.0f} GFLOP "
                f"at {ceiling:.0f} GFLOP/s",
            )
        )
        rows.append(
            (
                f"{model}: one window, fp32",
                f"{window:.2f} s",
                f"{gflop / window:.0f} GFLOP/s ({100 * gflop / window / ceiling:.0f} % of "
                "the ceiling)",
            )
        )
    return rows


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subject = write_full_subject(root / "bids")
        for model in ("baseline", "mean-imputation"):
            checkpoint = root / f"{model}.pt"
            make_checkpoint(checkpoint, model)
            target = "<= 10 s" if model == "baseline" else "<= 20 s"
            for amp in ("none", "bf16"):
                seconds, rss = run(
                    [
                        "predict",
                        str(checkpoint),
                        "-i",
                        str(root / "bids"),
                        "-o",
                        str(root / f"out-{model}-{amp}"),
                        "--amp",
                        amp,
                    ]
                )
                label = f"{model} ({'1' if model == 'baseline' else '6'} enc), {amp}"
                rows.append(
                    (label, f"{seconds:.1f} s", f"target {target}; peak RSS {rss:.2f} GB (<= 4 GB)")
                )
            same = agreement(subject, checkpoint)
            rows.append(
                (
                    f"{model}: bf16 = fp32, random weights",
                    f"{100 * same:.3f} %",
                    "uninformative: untrained logits sit at the boundary",
                )
            )
        rows.append(("subject", f"{len(subject.sequences)} sequences", "two T2Sag slabs"))
        rows.append(("trained small model: bf16 = fp32", *trained_agreement(root)))
        print_table("predict: one subject end to end (fresh process), paper-size nets", rows)
        print_table("the network's compute floor on this subject, fp32", compute_floor(subject))


if __name__ == "__main__":
    main()
