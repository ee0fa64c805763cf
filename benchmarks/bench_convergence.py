"""CPU convergence of the small preset (issue 24): validation Dice against iterations and wall
time, and lesion-wise F1 on a held-out cohort, for each training recipe over several seeds.

Each (recipe, seed) trains a T2Sag baseline on one synthetic cohort at the study's default
budget (100 x 25 iterations), then predicts a second cohort nothing was tuned on and scores it
with the Anima rules. Printed per run and as mean +- sd per recipe:

* ``left zero at``: the first iteration whose validation Dice exceeds 0.05 (the end of the
  all-background plateau; target: within 250);
* validation Dice at a quarter, half, three quarters and the end of the budget;
* ``last 20 %``: best validation Dice of the last 20 % of the epochs minus the best before
  (converged: < 0.01);
* lesion-wise F1 and Dice of the held-out cohort (mean over subjects), with the best checkpoint.

Run (about 7 min per run in fp32 on 2 cores; the defaults are the issue's 3 seeds):
``.venv/bin/python benchmarks/bench_convergence.py [--recipes sgd,adamw] [--seeds 3]
[--amp none] [--out DIR]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

#: The recipes compared: nnU-Net's SGD (the small preset's recipe before issue 24) and AdamW.
RECIPES = {
    "sgd": {"optimizer": "sgd"},
    "adamw": {"optimizer": "adamw"},
}


def left_zero(history: list[dict], iterations: int) -> int | None:
    """The first iteration count at which validation Dice exceeded 0.05 (None: never)."""
    for record in history:
        if record["val_dice"] == record["val_dice"] and record["val_dice"] > 0.05:
            return record["epoch"] * iterations
    return None


def dice_at(history: list[dict], fraction: float) -> float:
    """The last validation Dice at or before ``fraction`` of the epochs."""
    cut = round(fraction * len(history))
    values = [r["val_dice"] for r in history[:cut] if r["val_dice"] == r["val_dice"]]
    return values[-1] if values else float("nan")


def last_gain(history: list[dict]) -> float:
    """Best validation Dice of the last 20 % of the epochs minus the best before them."""
    cut = round(0.8 * len(history))
    values = [r["val_dice"] if r["val_dice"] == r["val_dice"] else -1.0 for r in history]
    return max(values[cut:]) - max(values[:cut])


def held_out_scores(run: Path, test_bids: Path, out: Path) -> tuple[float, float]:
    """Mean lesion-wise F1 and Dice of ``run``'s predictions on the held-out cohort."""
    from cordfuse.cli import main as cli
    from cordfuse.evaluation.evaluate import evaluate, summary_table

    assert cli(["predict", str(run), "-i", str(test_bids), "-o", str(out)]) == 0
    rows, _ = evaluate(out, test_bids)
    summary = summary_table(rows)["all"]
    return summary["lesion_f1"]["mean"], summary["dice"]["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="sgd,adamw", help=f"of {', '.join(RECIPES)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=40, help="training cohort (seed 5)")
    parser.add_argument("--test-subjects", type=int, default=20, help="held-out cohort (seed 6)")
    parser.add_argument("--amp", default="none", help="train's --amp")
    parser.add_argument("--val-every", type=int, default=2)
    parser.add_argument("--out", help="keep the cohorts and runs here (default: a temporary one)")
    args = parser.parse_args()

    from cordfuse.cli import main as cli
    from cordfuse.synth.cohort import write_cohort
    from cordfuse.training.config import TrainConfig
    from cordfuse.training.trainer import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        bids, test_bids, prepared = root / "bids", root / "test_bids", root / "prepared"
        if not prepared.exists():
            write_cohort(bids, subjects=args.subjects, seed=5)
            write_cohort(test_bids, subjects=args.test_subjects, seed=6)
            assert cli(["prepare", str(bids), str(prepared), "--preset", "small"]) == 0
        results: dict[str, list[dict]] = {}
        for name in args.recipes.split(","):
            for seed in range(args.seeds):
                config = TrainConfig(
                    model="baseline",
                    preset="small",
                    seed=seed,
                    amp=args.amp,
                    val_every=args.val_every,
                    **RECIPES[name],
                )
                run = root / "runs" / f"{name}-seed{seed}"
                train(prepared, run, config, progress=False, overwrite=True)
                history = [json.loads(line) for line in (run / "log.jsonl").open()]
                f1, dice = held_out_scores(run, test_bids, root / "predictions" / run.name)
                row = {
                    "left_zero": left_zero(history, config.schedule[1]),
                    "quarters": [dice_at(history, q) for q in (0.25, 0.5, 0.75, 1.0)],
                    "last_gain": last_gain(history),
                    "train_s": sum(r["epoch_seconds"] - r["val_seconds"] for r in history),
                    "f1": f1,
                    "dice": dice,
                }
                results.setdefault(name, []).append(row)
                quarters = " ".join(f"{d:.3f}" for d in row["quarters"])
                print(
                    f"{name:6s} seed {seed}: left zero at {row['left_zero']} it | val Dice at "
                    f"25/50/75/100 %: {quarters} | last 20 %: {row['last_gain']:+.3f} | "
                    f"train {row['train_s']:.0f} s | held-out lesion F1 {f1:.3f}, Dice "
                    f"{dice:.3f}",
                    flush=True,
                )
    print(f"\n== small preset, {args.seeds} seeds, amp {args.amp}: mean +- sd")
    for name, rows in results.items():

        def spread(values: list[float]) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.3f} +- {sd:.3f}"

        zero = [r["left_zero"] for r in rows]
        print(
            f"  {name:6s} left zero at {zero} it | final val Dice "
            f"{spread([r['quarters'][-1] for r in rows])} | last 20 % "
            f"{spread([r['last_gain'] for r in rows])} | held-out lesion F1 "
            f"{spread([r['f1'] for r in rows])}, Dice {spread([r['dice'] for r in rows])} | "
            f"train {statistics.mean(r['train_s'] for r in rows):.0f} s"
        )


if __name__ == "__main__":
    main()
