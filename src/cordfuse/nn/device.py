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


def training_layout(device: torch.device) -> torch.memory_format:
    """The memory layout a network and its batches train in on ``device``.

    oneDNN trains 3D convolutions on channels-last tensors 22-30 % faster on a CPU (a small
    preset step: baseline 168 -> 125 ms, early fusion 177 -> 124, Mean Imputation 481 -> 374;
    docs/training.md); CUDA keeps PyTorch's default layout.

    Args:
        device: Where the network trains.

    Returns:
        ``torch.channels_last_3d`` on a CPU, else ``torch.contiguous_format``.
    """
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


class OneDNNConv3d(torch.nn.Conv3d):
    """A 3D convolution that always takes oneDNN's kernel for float32 CPU inference.

    PyTorch gives a float32 CPU convolution of one sample to its slow im2col kernel whenever the
    input's batch, channel and first two spatial sizes multiply to at most 20,480: every deep
    level of a U-Net when a window is predicted alone. oneDNN's kernel computes the same
    convolution (to float32 rounding) faster: a paper-size window 12 % faster for the
    baseline, 17 % for Mean Imputation's six encoders (docs/inference.md). Training (gradients),
    autocast and other devices keep PyTorch's choice.
    """

    def _conv_forward(self, input, weight, bias):
        if (
            input.device.type == "cpu"
            and input.dtype == weight.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)  # not "same"/"valid"
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and input.dim() == 5
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
        ):
            return torch.mkldnn_convolution(
                input, weight, bias, self.padding, self.stride, self.dilation, self.groups
            )
        return super()._conv_forward(input, weight, bias)


def use_onednn_convolutions(model: torch.nn.Module) -> torch.nn.Module:
    """Make every 3D convolution of ``model`` an :class:`OneDNNConv3d` (same weights, same
    results to float32 rounding), for prediction on a CPU.

    Args:
        model: A network.

    Returns:
        The same network, changed in place.
    """
    for module in model.modules():
        if type(module) is torch.nn.Conv3d:
            module.__class__ = OneDNNConv3d
    return model
