"""Diagnostics of multi-sequence models: misalignment estimate, encoder learning, and the
``diagnose`` command on a finished study."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cordfuse.checkpoint import Checkpoint
from cordfuse.diagnostics import encoder_learning, inplane_misalignment
from cordfuse.preprocess.pipeline import PRESETS
from cordfuse.training.config import TrainConfig
from cordfuse.training.trainer import build_model


def _structured(seed=0):
    """A crop with a cord-like disk and some texture, zero outside a covered slab."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(24), np.arange(24), indexing="ij")
    disk = ((x - 12) ** 2 + (y - 11) ** 2 < 25).astype(float)
    ring = ((x - 12) ** 2 + (y - 11) ** 2 >= 25) & ((x - 12) ** 2 + (y - 11) ** 2 < 49)
    image = np.stack(
        [disk * 1.0 + ring * 3.0 + rng.normal(0, 0.2, (24, 24)) for _ in range(12)], axis=-1
    )
    return image


@pytest.mark.parametrize("shift", [(0, 0), (2, -1), (-3, 3)])
def test_misalignment_recovers_a_known_shift_of_either_polarity(shift):
    reference = _structured()
    moved = np.roll(reference, (-shift[0], -shift[1]), axis=(0, 1))
    assert inplane_misalignment(reference, moved) == shift
    assert inplane_misalignment(reference, -moved + 5.0) == shift  # dark CSF, like T1


def _checkpoint(tmp_path, model, config):
    path = tmp_path / "checkpoint_best.pt"
    Checkpoint(
        model.state_dict(), config, config.net, config.model_sequences, PRESETS[config.preset]
    ).save(path)
    return path


def test_encoder_learning_measures_change_from_the_seeded_initial_weights(tmp_path):
    config = TrainConfig(model="mean-imputation", preset="small", seed=7)
    torch.manual_seed(7)
    model = build_model(config)
    untouched = encoder_learning(_checkpoint(tmp_path, model, config))
    assert set(untouched["encoder_relative_change"].values()) == {0.0}
    with torch.no_grad():
        for parameter in model.encoders["STIR"].parameters():
            parameter.mul_(1.1)  # every STIR weight 10 % larger
        model.fusion.weight[:, :80] *= 3  # T2Sag's block of the fusion weighs 3x more
    result = encoder_learning(_checkpoint(tmp_path, model, config))
    change = result["encoder_relative_change"]
    assert change["STIR"] == pytest.approx(0.1, rel=1e-4)
    assert all(change[s] == 0.0 for s in change if s != "STIR")
    share = result["fusion_weight_share"]
    assert sum(share.values()) == pytest.approx(1.0)
    assert share["T2Sag"] == pytest.approx(3 / 8, rel=0.05)  # 3 / (3 + 5 blocks of ~equal norm)
