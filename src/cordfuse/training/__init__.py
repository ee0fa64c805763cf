"""Training: configuration and presets, data and augmentation, losses, the trainer (resume, DDP)."""

import math


def describe_validation(summary: dict) -> str:
    """``best validation Dice 0.412`` from a training ``summary.json``, or why there is none.

    Here rather than in the trainer so that the report can use it without importing torch.

    Args:
        summary: The training run's ``summary.json``.

    Returns:
        One phrase.

    Example:
        >>> describe_validation({"best_val_dice": 0.4123})
        'best validation Dice 0.412'
    """
    best = summary.get("best_val_dice")
    if best is None or not math.isfinite(best):
        return "no validation subject fits this model (best = last epoch)"
    return f"best validation Dice {best:.3f}"
