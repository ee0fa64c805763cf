"""Cross-entropy + soft Dice with deep supervision (nnU-Net's loss)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5):
    """1 - soft Dice of the foreground (lesion) probabilities over the whole batch.

    Batch Dice (nnU-Net's choice for 3D full resolution): most patches hold no lesion, and a
    per-sample Dice of an empty patch would punish every foreground probability.
    """
    prob = torch.softmax(logits.float(), dim=1)[:, 1]
    truth = (target == 1).float()
    intersection = (prob * truth).sum()
    denominator = prob.sum() + truth.sum()
    return 1 - (2 * intersection + smooth) / (denominator + smooth)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target) + soft_dice_loss(logits, target)


def deep_supervision_weights(levels: int) -> list[float]:
    """1 / 2^i for level i (0 = full resolution), renormalised to sum to 1."""
    raw = [1 / 2**i for i in range(levels)]
    return [w / sum(raw) for w in raw]


def downsample_target(target: torch.Tensor, shape) -> torch.Tensor:
    """Nearest-neighbour resize of an integer label map ``(B, X, Y, Z)`` to ``shape``."""
    if tuple(target.shape[1:]) == tuple(shape):
        return target
    resized = F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest")
    return resized[:, 0].long()


def deep_supervision_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    weights = deep_supervision_weights(len(logits))
    return sum(w * ce_dice_loss(out, downsample_target(target, out.shape[2:]))
               for w, out in zip(weights, logits, strict=True))

