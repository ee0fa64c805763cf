"""Run by ``torchrun`` from ``test_training.py``: every model and variant trains a few steps under
DistributedDataParallel (gloo, CPU), then a Mean Imputation and an anchored run are interrupted and
resumed, next to the same runs straight. Rank 0 prints one JSON line: for each run, whether the
ranks ended bit-identical, and its weights digest."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from cordfuse.training.config import TrainConfig
from cordfuse.training.trainer import train


class StopTraining(Exception):
    pass


def main(prepared: str, out: str) -> None:
    base = TrainConfig(
        model="baseline",
        preset="small",
        epochs=1,
        iterations=2,
        batch_size=2,
        seed=3,
        deterministic=True,
        augment=True,
    )
    runs = {
        "baseline": base,
        "feature-aug": replace(base, variant="feature-aug"),
        "specific": replace(base, model="specific", sequences=("T2Sag", "STIR")),
        "mean-imputation": replace(base, model="mean-imputation"),
        "frozen-encoder": replace(
            base,
            model="mean-imputation",
            variant="frozen-encoder",
            frozen_from=str(Path(out) / "baseline"),
        ),
        "distillation": replace(base, model="mean-imputation", variant="distillation"),
        "sequence-supervision": replace(base, model="mean-imputation", sequence_supervision=0.5),
        "early-fusion": replace(base, model="early-fusion", sequence_dropout=0.5),
        "anchored": replace(
            base, model="anchored", anchor=str(Path(out) / "baseline"), sequence_dropout=0.25
        ),
        "anchored-all-levels": replace(
            base,
            model="anchored",
            anchor=str(Path(out) / "baseline"),
            sequence_dropout=0.25,
            correction="all-levels",
        ),
    }
    result = {}
    for name, config in runs.items():
        summary = train(prepared, Path(out) / name, config, progress=False)
        result[name] = {"in_sync": summary["ranks_in_sync"], "digest": summary["digest"]}

    def stop(step):
        if step == 3:  # in the middle of the second epoch, on every rank
            raise StopTraining

    for name in ("mean-imputation", "anchored"):
        config = replace(runs[name], epochs=2)
        summary = train(prepared, Path(out) / f"{name}-straight", config, progress=False)
        result[f"{name}-straight"] = {
            "in_sync": summary["ranks_in_sync"],
            "digest": summary["digest"],
        }
        try:
            train(prepared, Path(out) / f"{name}-resumed", config, stop_hook=stop, progress=False)
        except StopTraining:
            pass
        summary = train(
            prepared, Path(out) / f"{name}-resumed", config, resume=True, progress=False
        )
        result[f"{name}-resumed"] = {
            "in_sync": summary["ranks_in_sync"],
            "digest": summary["digest"],
        }
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
