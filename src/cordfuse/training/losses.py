"""Cross-entropy + soft Dice with deep supervision (nnU-Net's loss)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5
) -> torch.Tensor:
    """1 - soft Dice of the foreground (lesion) probabilities over the whole batch.

    Batch Dice (nnU-Net's choice for 3D full resolution): most patches hold no lesion, and a
    per-sample Dice of an empty patch would punish every foreground probability.

    Args:
        logits: ``(B, 2, X, Y, Z)`` background and lesion logits.
        target: ``(B, X, Y, Z)`` labels (1 is lesion).
        smooth: Added to numerator and denominator (an empty batch scores 0).

    Returns:
        The loss (a scalar tensor), in [0, 1].

    Example:
        >>> target = torch.tensor([[1, 0]])
        >>> sure = torch.tensor([[[-20.0, 20.0], [20.0, -20.0]]])   # lesion where target is 1
        >>> round(soft_dice_loss(sure, target).item(), 4)
        0.0
    """
    prob = torch.softmax(logits.float(), dim=1)[:, 1]
    truth = (target == 1).float()
    intersection = (prob * truth).sum()
    denominator = prob.sum() + truth.sum()
    return 1 - (2 * intersection + smooth) / (denominator + smooth)


def ce_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus batch soft Dice loss (nnU-Net's loss), in float32.

    Args:
        logits: ``(B, 2, X, Y, Z)`` background and lesion logits.
        target: ``(B, X, Y, Z)`` integer labels.

    Returns:
        The loss (a scalar tensor).
    """
    return F.cross_entropy(logits.float(), target) + soft_dice_loss(logits, target)


def deep_supervision_weights(levels: int) -> list[float]:
    """1 / 2^i for level i (0 = full resolution), renormalised to sum to 1.

    Args:
        levels: Deep supervision outputs, finest first.

    Returns:
        One weight per level.

    Example:
        >>> deep_supervision_weights(2)
        [0.6666666666666666, 0.3333333333333333]
    """
    raw = [1 / 2**i for i in range(levels)]
    return [w / sum(raw) for w in raw]


def downsample_target(target: torch.Tensor, shape) -> torch.Tensor:
    """Nearest-neighbour resize of an integer label map ``(B, X, Y, Z)`` to ``shape``.

    Args:
        target: ``(B, X, Y, Z)`` integer labels.
        shape: The spatial shape of a coarser output.

    Returns:
        ``(B, *shape)`` labels (``target`` itself when it already has that shape).

    Example:
        >>> downsample_target(torch.ones(1, 4, 4, 4, dtype=torch.long), (2, 2, 2)).shape
        torch.Size([1, 2, 2, 2])
    """
    if tuple(target.shape[1:]) == tuple(shape):
        return target
    resized = F.interpolate(target[:, None].float(), size=tuple(shape), mode="nearest")
    return resized[:, 0].long()


def deep_supervision_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Weighted sum of :func:`ce_dice_loss` over the deep supervision outputs.

    Args:
        logits: The outputs, finest first (the full resolution one first).
        target: ``(B, X, Y, Z)`` labels at full resolution, resized to each output.

    Returns:
        The loss (a scalar tensor).
    """
    weights = deep_supervision_weights(len(logits))
    terms = [
        w * ce_dice_loss(out, downsample_target(target, out.shape[2:]))
        for w, out in zip(weights, logits, strict=True)
    ]
    total = terms[0]
    for term in terms[1:]:  # added in order, as sum() did: the same float result
        total = total + term
    return total
