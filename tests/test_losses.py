"""The lesion-wise (blob) loss: every truth lesion weighs the same, scored in its own sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordfuse.errors import CordfuseError
from cordfuse.training.config import TrainConfig
from cordfuse.training.losses import blob_loss, soft_dice_loss


def logits_for(prob: np.ndarray) -> torch.Tensor:
    """``(B, 2, ...)`` logits whose lesion probability (softmax) is ``prob``."""
    p = torch.tensor(np.clip(prob, 1e-9, 1 - 1e-9), dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))], dim=1)


def two_lesions() -> np.ndarray:
    """One sample: a 1-voxel lesion and a 27-voxel one (a 3^3 cube), far apart."""
    target = np.zeros((1, 8, 8, 8), np.int64)
    target[0, 1, 1, 1] = 1
    target[0, 4:7, 4:7, 4:7] = 1
    return target


def test_every_lesion_weighs_the_same_whatever_its_size():
    target = two_lesions()
    big_only = np.where(target == 1, 1.0, 0.0)
    big_only[0, 1, 1, 1] = 0.0
    logits, truth = logits_for(big_only), torch.from_numpy(target)
    # batch Dice barely notices the missed 1-voxel lesion; the blob loss counts it as half
    assert soft_dice_loss(logits, truth).item() == pytest.approx(1 - 54 / 55, abs=1e-4)
    assert blob_loss(logits, truth).item() == pytest.approx(0.5, abs=1e-4)
    assert blob_loss(logits_for(np.where(target == 1, 1.0, 0.0)), truth).item() < 1e-4


def test_other_lesions_and_other_samples_do_not_count_against_a_lesion():
    target = np.concatenate([two_lesions(), np.zeros((1, 8, 8, 8), np.int64)])
    target[1, 0, 0, 0] = 1
    prob = np.where(target == 1, 1.0, 0.0)
    # sample 1's false positives cost sample 1's lesion only: sample 0's two stay perfect
    prob[1, 5:, 5:, 5:] = 1.0
    loss = blob_loss(logits_for(prob), torch.from_numpy(target)).item()
    false = 27
    assert loss == pytest.approx((1 - 2 / (1 + false + 1)) / 3, abs=1e-4)


def test_lesions_are_face_connected_components_as_the_metrics_count_them():
    target = np.zeros((1, 4, 4, 4), np.int64)
    target[0, 0, 0, 0] = target[0, 1, 1, 0] = 1  # touching by an edge only: two lesions
    prob = np.zeros(target.shape)
    prob[0, 0, 0, 0] = 1.0
    assert blob_loss(logits_for(prob), torch.from_numpy(target)).item() == pytest.approx(
        0.5, abs=1e-4
    )


def test_no_lesion_is_zero_and_the_small_lesion_gets_the_gradient():
    empty = torch.zeros((2, 2, 4, 4, 4), requires_grad=True)
    loss = blob_loss(empty, torch.zeros((2, 4, 4, 4), dtype=torch.long))
    assert loss.item() == 0.0
    target = two_lesions()
    # a network that has learned the background (0.01) and is unsure of both lesions (0.5)
    unsure = logits_for(np.where(target == 1, 0.5, 0.01)).float().requires_grad_()
    pulls = []
    for loss_fn in (soft_dice_loss, blob_loss):
        unsure.grad = None
        loss_fn(unsure, torch.from_numpy(target)).backward()
        lesion_grad = -unsure.grad[0, 1]  # raising a lesion logit lowers the loss
        pulls.append((lesion_grad[1, 1, 1] / lesion_grad[5, 5, 5]).item())
    # batch Dice pulls every lesion voxel alike; the blob loss pulls the 1-voxel lesion's
    # voxel 9 times as hard as one of the 27-voxel lesion's
    assert pulls[0] == pytest.approx(1.0, abs=1e-5)
    assert pulls[1] > 5, pulls


def test_the_weight_is_a_training_option():
    assert TrainConfig().blob_loss == 0.0  # the paper's loss unless asked
    assert TrainConfig(blob_loss=0.5).blob_loss == 0.5
    with pytest.raises(CordfuseError, match="--blob-loss"):
        TrainConfig(blob_loss=-1.0)
