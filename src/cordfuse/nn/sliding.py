"""Sliding-window prediction along S-I over a whole straightened crop (nnU-Net style).

The crop is covered by windows of the patch length (full in-plane size), 50 % overlap by default,
each weighted by a Gaussian along S-I (sigma = 1/8 of the patch length) so that window centres
count more than their edges; crops shorter than a patch are zero-padded.
"""

from __future__ import annotations

import numpy as np
import torch

from cordfuse.nn.device import use_onednn_convolutions


def window_starts(length: int, patch: int, overlap: float) -> list[int]:
    """Start indices covering ``[0, length)`` with windows of ``patch`` (last one flush).

    Args:
        length: The crop's length along S-I, in voxels.
        patch: The window's length.
        overlap: The fraction of a window the next one overlaps (0.5: half a window).

    Returns:
        The start of each window.

    Example:
        >>> window_starts(10, 4, 0.5)
        [0, 2, 4, 6]
        >>> window_starts(11, 4, 0.5), window_starts(3, 4, 0.5)
        ([0, 2, 4, 6, 7], [0])
    """
    if length <= patch:
        return [0]
    step = max(1, int(patch * (1 - overlap)))
    starts = list(range(0, length - patch + 1, step))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def gaussian_weights(patch: int, sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weight of each position of a window (1 at the centre, at least 1e-3).

    Args:
        patch: The window's length.
        sigma_scale: The Gaussian's sigma as a fraction of ``patch``.

    Returns:
        ``(patch,)`` float32 weights.

    Example:
        >>> [round(w, 3) for w in gaussian_weights(5, sigma_scale=1.0).tolist()]
        [0.923, 0.98, 1.0, 0.98, 0.923]
    """
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
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    mirror: bool = False,
) -> np.ndarray:
    """Lesion probability ``(X, Y, Z)`` for one subject's network input ``(C, X, Y, Z)``: its K
    normalised crops, then their K coverage masks for a network that reads them.

    With ``mirror``, each window is also predicted left-right flipped and the two averaged. On a
    CPU the model's convolutions become :class:`~cordfuse.nn.device.OneDNNConv3d` (in place;
    the trainer makes them so before its first step), so that a window alone never takes
    PyTorch's slow kernel.

    Args:
        model: A :class:`~cordfuse.nn.networks.CordNet` in eval mode.
        images: ``(K or 2K, X, Y, Z)`` normalised crops in the model's order (then their
            coverage masks; :func:`cordfuse.training.data.normalise`).
        available: ``(K,)`` booleans, which sequences the subject has.
        patch_z: The window length along S-I (the model's patch).
        overlap: The fraction of a window the next one overlaps.
        batch_size: Windows predicted together.
        device: Where the model runs.
        autocast_dtype: Mixed precision type (None: float32).
        mirror: Also predict each window flipped left-right (test-time augmentation).

    Returns:
        ``(X, Y, Z)`` float32 probabilities of lesion.
    """
    if torch.device(device).type == "cpu":
        use_onednn_convolutions(model)
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
        with torch.autocast(
            device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            prob = torch.softmax(model(batch, flags).logits[0].float(), dim=1)[:, 1]
            if mirror:
                flipped = model(torch.flip(batch, dims=(2,)), flags).logits[0].float()
                prob = 0.5 * (prob + torch.flip(torch.softmax(flipped, dim=1)[:, 1], dims=(1,)))
        for start, p in zip(chunk, prob.cpu().numpy(), strict=True):
            total[..., start : start + patch_z] += p * weights
            norm[start : start + patch_z] += weights
    return (total / norm)[..., :nz]
