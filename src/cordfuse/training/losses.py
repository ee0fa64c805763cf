"""Cross-entropy + soft Dice with deep supervision (nnU-Net's loss), and a lesion-wise term."""

from __future__ import annotations

import torch
from scipy import ndimage
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


def blob_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - the mean over the batch's truth lesions of each lesion's own soft Dice (the blob loss of
    Kofler et al., 2023), 0 when the batch holds none.

    Batch Dice weighs a lesion by its voxels: a 20 mm^3 lesion beside a 200 mm^3 one moves it by a
    tenth as much, so the small lesions that lesion-wise F1 counts as much as any are the ones
    the network learns last. Here every lesion (a face-connected component of the truth, as the
    metrics count them) weighs the same. Lesion k is scored within its own sample, with the other
    lesions' voxels left out so that finding them is neither a reward nor a fault of k's:
    ``2 sum(p L_k) / (sum(p L_k) + sum(p B) + |L_k|)``, B the sample's background.

    Args:
        logits: ``(B, 2, X, Y, Z)`` background and lesion logits.
        target: ``(B, X, Y, Z)`` labels (1 is lesion).

    Returns:
        The loss (a scalar tensor), in [0, 1].

    Example:
        >>> target = torch.tensor([[[[1, 0, 0, 0, 1, 1, 1, 1]]]])   # a 1-voxel and a 4-voxel lesion
        >>> big_only = torch.tensor([[[[[20.0, 20, 20, 20, -20, -20, -20, -20]]]],
        ...                          [[[[-20.0, -20, -20, -20, 20, 20, 20, 20]]]]]).transpose(0, 1)
        >>> round(blob_loss(big_only, target).item(), 3)   # one lesion of two missed
        0.5
    """
    prob = torch.softmax(logits.float(), dim=1)[:, 1]
    truth = target == 1
    background = (prob * ~truth).flatten(1).sum(dim=1)
    scores = []
    for sample, lesions in enumerate(truth.cpu().numpy()):
        components, count = ndimage.label(lesions)
        if not count:
            continue
        components = torch.from_numpy(components).to(prob.device)
        for k in range(1, count + 1):  # a loop, not a scatter: deterministic on CUDA too
            inside = components == k
            found = prob[sample][inside].sum()
            scores.append(2 * found / (found + background[sample] + inside.sum()))
    if not scores:
        return prob.new_zeros(())
    return 1 - torch.stack(scores).mean()


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
