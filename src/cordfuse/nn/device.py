"""Where a network runs and in which precision: shared by training and prediction.

Here rather than in the trainer so that ``predict`` runs without importing it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cordfuse.errors import CordfuseError


def choose_device(requested: str = "auto") -> torch.device:
    """The torch device for ``--device``.

    Args:
        requested: ``auto`` (CUDA when available, else CPU) or a torch device name.

    Returns:
        The device.

    Raises:
        CordfuseError: CUDA was requested but is not available.
    """
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise CordfuseError("--device cuda requested but no CUDA device is available")
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); otherwise it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(
    amp: str, device: torch.device, *, cpu_auto_bf16: bool = False
) -> torch.dtype | None:
    """The autocast dtype for ``--amp``.

    Args:
        amp: ``auto``, ``bf16``, ``fp16`` or ``none``.
        device: Where the network runs.
        cpu_auto_bf16: With ``auto`` on a CPU, use bf16 where the CPU computes it natively
            (prediction); otherwise ``auto`` keeps fp32 on CPUs.

    Returns:
        The dtype, or None for full precision. ``auto`` uses bf16 on CUDA devices that support
        it, fp16 on the others.
    """
    if amp == "auto" and device.type == "cpu":
        return torch.bfloat16 if cpu_auto_bf16 and cpu_has_native_bf16() else None
    if amp == "none":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or device.type == "cpu":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
