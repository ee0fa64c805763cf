"""Training step time (issue 4): the paper's single-encoder net and the six-encoder Mean
Imputation net, fp32 and bf16 autocast, next to the trainer's own overhead (patch sampling and
augmentation), which must stay under 5 % of a step.

Run: ``.venv/bin/python benchmarks/bench_train.py [--steps 2] [--preset paper]``
Uses every core of the machine (as training would) and CUDA when present.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import network_batch, print_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--preset", default="paper")
    args = parser.parse_args()
    import numpy as np
    import torch

    from cordfuse.cli import main as cli
    from cordfuse.nn.device import choose_device, training_layout
    from cordfuse.preprocess.batch import load_prepared_dataset
    from cordfuse.synth.cohort import write_cohort
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.data import PatchDataset, load_subjects
    from cordfuse.training.losses import deep_supervision_loss
    from cordfuse.training.trainer import build_model, build_optimizer

    device = choose_device("auto")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        bids = write_cohort(Path(tmp) / "bids", subjects=3, seed=1)
        cli(["prepare", str(bids), str(Path(tmp) / "prep"), "--preset", args.preset])
        _, paths = load_prepared_dataset(Path(tmp) / "prep")
        for model_name in ("baseline", "mean-imputation"):
            config = TrainConfig(model=model_name, preset=args.preset)
            subjects = load_subjects(
                paths, config.model_sequences, coverage=config.net.coverage_input
            )
            dataset = PatchDataset(
                subjects, config.net.patch_size, seed=0, foreground_fraction=1 / 3, augment=True
            )
            start = time.perf_counter()
            n_batches = 4
            for n in range(n_batches * config.batch_size):
                dataset[n]
            data_time = (time.perf_counter() - start) / n_batches
            x, y, available = network_batch(config, device)
            layout = training_layout(device)  # the trainer's
            x = x.to(memory_format=layout)
            for dtype_name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                model = build_model(config).to(device)
                model.to(memory_format=layout)
                optimiser = build_optimizer(list(model.parameters()), config)  # the preset's
                times = []
                for step in range(args.steps + 1):
                    start = time.perf_counter()
                    with torch.autocast(
                        device.type, dtype=dtype or torch.float32, enabled=dtype is not None
                    ):
                        loss = deep_supervision_loss(model(x, available).logits, y)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if step:  # the first step warms up
                        times.append(time.perf_counter() - start)
                step_time = float(np.median(times))
                overhead = data_time / (data_time + step_time)
                rows.append(
                    (
                        f"{model_name} ({len(config.model_sequences)} enc) {dtype_name} step",
                        f"{step_time:.2f} s",
                        f"data+augment {data_time:.3f} s = {100 * overhead:.1f} % (target < 5 %)",
                    )
                )
    print_table(
        f"training step, {args.preset} preset, batch 2, {device} "
        f"({torch.get_num_threads()} threads)",
        rows,
    )


if __name__ == "__main__":
    main()
