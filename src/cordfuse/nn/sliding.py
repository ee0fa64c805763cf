"""Sliding-window prediction along S-I over a whole straightened crop (nnU-Net style).

The crop is covered by windows of the patch length (full in-plane size), 50 % overlap by default,
each weighted by a Gaussian along S-I (sigma = 1/8 of the patch length) so that window centres
count more than their edges; crops shorter than a patch are zero-padded.
"""

from __future__ import annotations

import numpy as np
import torch


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices covering ``[0, length)`` with windows of ``patch`` (last one flush)."""
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    starts = list(range(0, length - patch + 1, step))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def gaussian_weights(patch: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    centre = (patch - 1) / 2
    sigma = patch * sigma_scale
    weights = np.exp(-0.5 * ((np.arange(patch) - centre) / sigma) ** 2)
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module,
    images: np.ndarray,
    available: np.ndarray,
    *,
    patch_z: int,
    overlap: float = 0.5,
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    mirror: bool = False,
) -> np.ndarray:
    """Lesion probability ``(X, Y, Z)`` for one subject's normalised crops ``(K, X, Y, Z)``.

    With ``mirror``, each window is also predicted left-right flipped and the two averaged.
    """
    k, x, y, nz = images.shape
    length = max(nz, patch_z)
    padded = np.zeros((k, x, y, length), np.float32)
    padded[..., :nz] = images
    weights = gaussian_weights(patch_z)
    total = np.zeros((x, y, length), np.float32)
    norm = np.zeros(length, np.float32)
    starts = window_starts(length, patch_z, overlap)
    avail = torch.as_tensor(available, dtype=torch.bool, device=device)
    device_type = torch.device(device).type
    for i in range(0, len(starts), batch_size):
        chunk = starts[i : i + batch_size]
        batch = torch.from_numpy(np.stack([padded[..., s : s + patch_z] for s in chunk])).to(device)
        flags = avail[None].expand(len(chunk), -1)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            prob = torch.softmax(model(batch, flags).logits[0].float(), dim=1)[:, 1]
            if mirror:
                flipped = model(torch.flip(batch, dims=(2,)), flags).logits[0].float()
                prob = 0.5 * (prob + torch.flip(torch.softmax(flipped, dim=1)[:, 1], dims=(1,)))
        prob = prob.cpu().numpy()
        for start, p in zip(chunk, prob, strict=True):
            total[..., start : start + patch_z] += p * weights
            norm[start : start + patch_z] += weights
    return (total / norm)[..., :nz]
