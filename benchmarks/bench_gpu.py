"""Paper-scale training on a GPU (issue 13): does the trainer keep the GPU busy?

For the ``paper`` preset, the T2Sag baseline and the six-encoder Mean Imputation model, bf16 and
fp32, batch 2: iterations per second of the real trainer (prepared synthetic subjects,
augmentation on, its data loader and workers) next to a bare loop of the same network on
GPU-resident tensors (goal: ratio >= 0.95), peak GPU memory, validation seconds per epoch, and the
projected wall time of 1000 x 250 iterations; also with ``torch.compile`` (``train --compile``).
Then the options worth
knowing on the baseline: cuDNN benchmark mode, ``channels_last_3d`` and ``torch.compile``.

Without CUDA it says so and measures the same ratio on CPU with the ``small`` preset.

Run: ``python benchmarks/bench_gpu.py [--iterations 60] [--json OUT.json]`` (under 8 minutes on
one GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from _common import network_batch, print_table, register_full_cohort


def bare_loop(
    config,
    device,
    steps: int,
    *,
    channels_last: bool = False,
    compiled: bool = False,
    benchmark: bool = False,
) -> float:
    """Iterations per second of the network alone on GPU-resident random tensors."""
    import torch

    from cordfuse.nn.device import autocast_dtype
    from cordfuse.training.losses import deep_supervision_loss
    from cordfuse.training.trainer import build_model

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = benchmark
    model = build_model(config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    x, y, available = network_batch(config, device, foreground=0.03)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    dtype = autocast_dtype(config.amp, device)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = deep_supervision_loss(net(x, available).logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
        optimizer.step()

    for _ in range(10 if compiled else 5):  # the first compiled steps compile
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return steps / (time.perf_counter() - start)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="iterations per measured epoch (default 60 on CUDA, 4 on CPU)",
    )
    parser.add_argument("--subjects", type=int, default=6)
    parser.add_argument("--json", help="also write the numbers here")
    parser.add_argument("--models", default="baseline,mean-imputation")
    parser.add_argument("--repeats", type=int, default=1, help="trainer runs per setting")
    parser.add_argument("--no-options", action="store_true", help="skip the options table")
    args = parser.parse_args()
    import torch

    from cordfuse.dataset import discover
    from cordfuse.preprocess.batch import prepare_dataset
    from cordfuse.preprocess.pipeline import PRESETS
    from cordfuse.synth.cohort import write_cohort
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import data_workers, train

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = "paper" if cuda else "small"
    iterations = args.iterations or (60 if cuda else 4)
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"device: {name}, torch {torch.__version__}, {os.cpu_count()} cores")
    if not cuda:
        print(
            "CUDA is not available: measuring the trainer / bare-loop ratio on CPU with the "
            "small preset instead (no GPU numbers)."
        )
    results: dict = {"device": name, "preset": preset, "iterations": iterations, "runs": []}
    cohort = register_full_cohort()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cohort(root / "bids", subjects=args.subjects, seed=1, cohorts=(cohort,))
        # Without slab registration: the benchmark is about training, and SimpleITK need not be
        # installed on the GPU machine.
        prep = replace(PRESETS[preset], register_slabs=False)
        prepare_dataset(
            discover(root / "bids"), root / "prepared", prep, jobs=min(8, os.cpu_count() or 1)
        )
        rows = []
        variants = [(amp, False) for amp in (("bf16", "none") if cuda else ("none",))]
        variants += [("bf16", True)] if cuda else []  # torch.compile on the real trainer
        for model in args.models.split(","):
            for (amp, compiled), repeat in [(v, r) for v in variants for r in range(args.repeats)]:
                config = TrainConfig(
                    model=model,
                    preset=preset,
                    epochs=2,
                    iterations=iterations,
                    amp=amp,
                    seed=0,
                    val_fraction=0.2,
                    compile=compiled,
                )
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                out = root / f"{model}-{amp}-{compiled}-{repeat}"
                train(root / "prepared", out, config, device=device.type, progress=False)
                last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
                train_seconds = last["epoch_seconds"] - last["val_seconds"]
                trainer = iterations / train_seconds
                peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
                bare = bare_loop(config, device, iterations, compiled=compiled)
                hours = 1000 * (250 / trainer + last["val_seconds"]) / 3600
                run = {
                    "model": model,
                    "amp": amp,
                    "compile": compiled,
                    "trainer_it_s": trainer,
                    "bare_it_s": bare,
                    "ratio": trainer / bare,
                    "peak_gib": peak,
                    "val_seconds": last["val_seconds"],
                    "projected_hours": hours,
                    "workers": data_workers(config, device),
                }
                results["runs"].append(run)
                rows.append(
                    (
                        f"{model}, {amp}" + (", compiled" if compiled else ""),
                        f"{trainer:.2f} / {bare:.2f} it/s = {trainer / bare:.2f}",
                        f"peak {peak:.1f} GiB, val {last['val_seconds']:.1f} s/epoch, "
                        f"1000x250 = {hours:.1f} h, {run['workers']} workers",
                    )
                )
        print_table(
            f"trainer / bare loop, {preset} preset, batch 2, {iterations} iterations "
            "(goal ratio >= 0.95)",
            rows,
        )
        if cuda and not args.no_options:
            options = []
            base = TrainConfig(model="baseline", preset=preset, amp="bf16")
            for label, kwargs in (
                ("bare loop, bf16", {}),
                ("cudnn.benchmark", {"benchmark": True}),
                ("channels_last_3d", {"channels_last": True}),
                ("torch.compile (train --compile)", {"compiled": True}),
            ):
                try:
                    speed = bare_loop(base, device, iterations, **kwargs)
                    options.append((label, f"{speed:.2f} it/s", ""))
                    results[label] = speed
                except Exception as exc:  # an option that fails to run is reported, not fatal
                    options.append((label, "failed", str(exc).splitlines()[0][:60]))
            print_table("options, T2Sag baseline, bf16, bare loop", options)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
