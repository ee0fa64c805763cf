"""The paper's networks (sections 2.3-2.4), built from nnU-Net's network library.

One class, :class:`CordNet`, covers every model of the paper:

* **T2Sag baseline**: ``sequences=["T2Sag"]``: a plain nnU-Net 3D U-Net (``PlainConvEncoder`` +
  ``UNetDecoder``).
* **Specific sequences**: one encoder per sequence; the bottleneck features (320 channels each)
  are concatenated and a convolution brings them back to 320 channels; skip connections come
  from the T2Sag encoder only. Every sample must have every sequence.
* **Mean Imputation**: six encoders; for each sample, the bottleneck features of a missing
  sequence are the mean of that sample's available sequences (equation 1).
* **Latent feature augmentation**: noise from :class:`FeatureNoise` is added to the bottleneck
  during training, followed by a LeakyReLU.
* **All-level fusion** (``fusion="all-levels"``, beyond the paper, along its stated future work
  "fusing at different depths"): every encoder level is fused like the bottleneck (Mean
  Imputation per level, then a 1x1x1 convolution back to that level's channels), so the decoder's
  skip connections carry every sequence at full resolution instead of T2Sag's alone.

The fusion is a plain (linear) convolution, so replicated features through it equal one
convolution with the summed weights, as the paper remarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn

REFERENCE = "T2Sag"
FUSIONS = ("bottleneck", "all-levels")


@dataclass(frozen=True)
class NetConfig:
    """Architecture of one encoder-decoder. ``paper``: 32-64-128-256-320, patch 48x48x320 RPI."""

    features: tuple[int, ...] = (32, 64, 128, 256, 320)
    strides: tuple[tuple[int, int, int], ...] = (
        (1, 1, 1),
        (2, 2, 2),
        (2, 2, 2),
        (2, 2, 2),
        (1, 1, 2),
    )
    patch_size: tuple[int, int, int] = (48, 48, 320)
    kernel_size: int = 3
    convs_per_stage: int = 2
    num_classes: int = 2
    deep_supervision_levels: int = 2  # the decoder outputs closest to full resolution
    fusion_kernel: int = 1

    def __post_init__(self):
        if len(self.features) != len(self.strides):
            raise ValueError("features and strides need one entry per stage")
        for axis in range(3):
            factor = 1
            for stride in self.strides:
                factor *= stride[axis]
            if self.patch_size[axis] % factor:
                raise ValueError(
                    f"patch size {self.patch_size} not divisible by the downsampling "
                    f"{factor} along axis {axis}"
                )

    @property
    def bottleneck_channels(self) -> int:
        """Feature channels at the bottleneck, where the sequences are fused.

        Example:
            >>> NetConfig().bottleneck_channels
            320
        """
        return self.features[-1]


NET_PRESETS = {
    "paper": NetConfig(),
    "small": NetConfig(
        features=(8, 16, 32, 64, 80),
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 1, 2), (1, 1, 2)),
        patch_size=(24, 24, 64),
    ),
}


@dataclass(frozen=True)
class FeatureNoise:
    """Two-part noise of the paper's latent feature augmentation (section 2.4).

    Each element is drawn from ``logistic(0, logistic_scale)`` with probability ``weight``, else
    from ``normal(0, normal_sigma)``.
    """

    weight: float = 0.25
    logistic_scale: float = 0.002
    normal_sigma: float = 0.4

    @classmethod
    def from_json(cls, path) -> FeatureNoise:
        """Read the parameters ``cordfuse analyze-features`` writes (``noise_params.json``).

        Args:
            path: The JSON file, with ``weight``, ``logistic_scale`` and ``normal_sigma``.

        Returns:
            The noise.

        Raises:
            CordfuseError: unreadable file, missing parameter, or a weight outside [0, 1] or a
                scale that is not positive.
        """
        import json
        from pathlib import Path

        from cordfuse.errors import CordfuseError

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise CordfuseError(f"{path}: unreadable noise parameters ({exc})") from exc
        keys = ("weight", "logistic_scale", "normal_sigma")
        if not isinstance(data, dict) or any(k not in data for k in keys):
            raise CordfuseError(f"{path}: noise parameters need {', '.join(keys)}")
        noise = cls(*(float(data[k]) for k in keys))
        if not (0 <= noise.weight <= 1 and noise.logistic_scale > 0 and noise.normal_sigma > 0):
            raise CordfuseError(f"{path}: need 0 <= weight <= 1 and positive scales ({noise})")
        return noise

    def sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> torch.Tensor:
        """Draw one noise element per feature (computed in float64, returned in ``dtype``).

        Args:
            shape: The shape of the features the noise is added to.
            device: Where the noise is drawn.
            dtype: The returned tensor's type.
            generator: A torch generator, for reproducible draws.

        Returns:
            The noise, of ``shape``.

        Example:
            >>> noise = FeatureNoise(weight=0.0, normal_sigma=1.0)
            >>> noise.sample((2, 3), generator=torch.Generator().manual_seed(0)).shape
            torch.Size([2, 3])
        """
        u = torch.rand(shape, device=device, generator=generator, dtype=torch.float64)
        u = u.clamp(1e-12, 1 - 1e-12)
        logistic = self.logistic_scale * torch.log(u / (1 - u))
        normal = (
            torch.randn(shape, device=device, generator=generator, dtype=torch.float64)
            * self.normal_sigma
        )
        pick = torch.rand(shape, device=device, generator=generator) < self.weight
        return torch.where(pick, logistic, normal).to(dtype)


def make_encoder(config: NetConfig) -> PlainConvEncoder:
    """One sequence's nnU-Net encoder (3D convolutions, instance norm, LeakyReLU), with skips.

    Args:
        config: The architecture (channels and strides of each stage).

    Returns:
        The encoder, on one input channel, returning the features of every stage.
    """
    return PlainConvEncoder(
        input_channels=1,
        n_stages=len(config.features),
        features_per_stage=list(config.features),
        conv_op=nn.Conv3d,
        kernel_sizes=config.kernel_size,
        strides=[list(s) for s in config.strides],
        n_conv_per_stage=config.convs_per_stage,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
        return_skips=True,
    )


@dataclass
class NetOutput:
    """Segmentation logits, finest first (deep supervision levels), and bottleneck features
    ``(B, K, C, ...)`` of each encoder before imputation (for the distillation loss)."""

    logits: list[torch.Tensor]
    features: torch.Tensor
    available: torch.Tensor
    extra: dict = field(default_factory=dict)


def mean_impute(features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Replace each sample's missing-sequence features by the mean of its available ones.

    Args:
        features: ``(B, K, C, ...)`` bottleneck features of the K sequences.
        available: ``(B, K)`` booleans; every sample needs at least one available sequence.

    Returns:
        The features, a missing sequence's replaced by its sample's available mean.

    Example:
        >>> features = torch.tensor([[[1.0], [3.0], [0.0]]])   # B=1, K=3, C=1
        >>> mean_impute(features, torch.tensor([[True, True, False]])).flatten().tolist()
        [1.0, 3.0, 2.0]
    """
    if not bool(available.any(dim=1).all()):
        raise ValueError("every sample needs at least one available sequence")
    mask = available.to(features.dtype).view(*available.shape, *([1] * (features.dim() - 2)))
    mean = (features * mask).sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True)
    return torch.where(mask.bool(), features, mean.expand_as(features))


class CordNet(nn.Module):
    """Encoders (one per sequence), bottleneck fusion, one decoder with T2Sag skips.

    Args:
        config: The architecture of each encoder and of the decoder.
        sequences: The model's sequences in channel order; T2Sag first.
        mean_imputation: Impute a missing sequence's features by the mean of the available ones
            (equation 1); without it every sample needs every sequence.
        feature_noise: Latent feature augmentation added to the bottleneck during training.
        fusion: ``"bottleneck"`` (the paper) or ``"all-levels"`` (every skip level fused too).

    Raises:
        ValueError: T2Sag is not first, an unknown fusion, or all-level fusion of one sequence.
    """

    def __init__(
        self,
        config: NetConfig,
        sequences: Sequence[str],
        *,
        mean_imputation: bool = False,
        feature_noise: FeatureNoise | None = None,
        fusion: str = "bottleneck",
    ):
        super().__init__()
        if not sequences or sequences[0] != REFERENCE:
            raise ValueError(f"sequences must start with {REFERENCE}, got {list(sequences)}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if fusion == "all-levels" and len(sequences) < 2:
            raise ValueError("all-level fusion needs more than one sequence")
        self.config = config
        self.sequences = list(sequences)
        self.mean_imputation = mean_imputation
        self.feature_noise = feature_noise
        self.fusion_levels = fusion
        self.encoders = nn.ModuleDict({seq: make_encoder(config) for seq in self.sequences})
        channels = config.bottleneck_channels
        self.fusion: nn.Conv3d | None
        if len(self.sequences) > 1:
            self.fusion = nn.Conv3d(
                channels * len(self.sequences),
                channels,
                config.fusion_kernel,
                padding=config.fusion_kernel // 2,
            )
        else:
            self.fusion = None
        # One 1x1x1 fusion per skip level (finest first); a kernel of 1 keeps each voxel's
        # sequences together without mixing in neighbours that a misalignment could bring.
        self.skip_fusions = (
            nn.ModuleList(nn.Conv3d(c * len(self.sequences), c, 1) for c in config.features[:-1])
            if fusion == "all-levels"
            else None
        )
        self.decoder = UNetDecoder(
            self.encoders[REFERENCE],
            config.num_classes,
            config.convs_per_stage,
            deep_supervision=True,
        )
        self.apply(InitWeights_He(1e-2))
        # Only the deep_supervision_levels finest outputs reach the loss. The coarser heads would
        # compute logits nobody uses and leave parameters without gradients, which
        # DistributedDataParallel refuses unless it searches the graph every step: drop them.
        self.unused_heads = len(self.decoder.seg_layers) - config.deep_supervision_levels
        for index in range(self.unused_heads):
            self.decoder.seg_layers[index] = nn.Identity()
        self.register_load_state_dict_pre_hook(_skip_unused_heads)

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None) -> NetOutput:
        """Segment a batch of patches.

        Args:
            x: ``(B, K, X, Y, Z)`` normalised images, channels in ``self.sequences`` order.
            available: ``(B, K)`` booleans, which sequences each sample has (all when omitted).

        Returns:
            The logits of the deep supervision levels and the encoders' bottleneck features.

        Raises:
            ValueError: wrong channel count, a sample without T2Sag (bottleneck fusion), or a
                missing sequence without Mean Imputation.
        """
        batch, k = x.shape[:2]
        if k != len(self.sequences):
            raise ValueError(f"expected {len(self.sequences)} channels, got {k}")
        if available is None:
            available = torch.ones(batch, k, dtype=torch.bool, device=x.device)
        if self.skip_fusions is None and not bool(available[:, 0].all()):
            raise ValueError(f"every sample needs {REFERENCE} (it gives the decoder's skips)")
        if not self.mean_imputation and not bool(available.all()):
            raise ValueError("this model needs every one of its sequences for every sample")
        skips = self.encoders[REFERENCE](x[:, :1])
        per_sequence = [skips]
        for i, seq in enumerate(self.sequences[1:], start=1):
            if bool(available[:, i].any()):
                per_sequence.append(self.encoders[seq](x[:, i : i + 1]))
            else:  # nobody in the batch has it: it is imputed anyway
                per_sequence.append([torch.zeros_like(s) for s in skips])
        stacked = torch.stack([levels[-1] for levels in per_sequence], dim=1)
        fused_input = mean_impute(stacked, available) if self.mean_imputation else stacked
        if self.skip_fusions is not None:
            skips = [
                self._fuse_level(fuse, [levels[depth] for levels in per_sequence], available)
                for depth, fuse in enumerate(self.skip_fusions)
            ] + [skips[-1]]
        if self.fusion is not None:
            bottleneck = self.fusion(fused_input.flatten(1, 2))
        else:
            bottleneck = fused_input[:, 0]
        if self.training and self.feature_noise is not None:
            noise = self.feature_noise.sample(
                bottleneck.shape, device=bottleneck.device, dtype=bottleneck.dtype
            )
            bottleneck = nn.functional.leaky_relu(bottleneck + noise, 0.01)
        logits = self.decoder([*skips[:-1], bottleneck])
        return NetOutput(logits[: self.config.deep_supervision_levels], stacked, available)

    def _fuse_level(
        self, fuse: nn.Module, features: list[torch.Tensor], available: torch.Tensor
    ) -> torch.Tensor:
        """Mean Imputation (or plain stacking) and a 1x1x1 fusion of one skip level."""
        stacked = torch.stack(features, dim=1)
        if self.mean_imputation:
            stacked = mean_impute(stacked, available)
        return fuse(stacked.flatten(1, 2))

    def freeze_encoder(self, sequence: str = REFERENCE) -> None:
        """Freeze one encoder's weights (the frozen-encoder variant).

        Args:
            sequence: The encoder's sequence.
        """
        for parameter in self.encoders[sequence].parameters():
            parameter.requires_grad_(False)


def _skip_unused_heads(module: CordNet, state_dict, prefix, *_args) -> None:
    """Checkpoints written before the unused deep-supervision heads were dropped still hold their
    weights: leave them out when loading."""
    for index in range(module.unused_heads):
        head = f"{prefix}decoder.seg_layers.{index}."
        for key in [k for k in state_dict if k.startswith(head)]:
            del state_dict[key]


def distillation_loss(features: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """Equation 2: mean over the other available sequences of the L1 distance between their
    bottleneck features and T2Sag's (mean absolute difference per element), averaged over the
    batch; a sample with T2Sag only contributes zero.

    Args:
        features: ``(B, K, C, ...)`` bottleneck features before imputation, T2Sag first.
        available: ``(B, K)`` booleans.

    Returns:
        The loss (a scalar tensor).

    Example:
        >>> features = torch.tensor([[[0.0], [2.0], [9.0]]])   # T2Sag, and two others
        >>> distillation_loss(features, torch.tensor([[True, True, False]])).item()
        2.0
    """
    teacher = features[:, :1]
    diff = (features[:, 1:] - teacher).abs().flatten(2).mean(dim=2)  # (B, K-1)
    others = available[:, 1:].to(diff.dtype)
    count = others.sum(dim=1)
    per_sample = (diff * others).sum(dim=1) / count.clamp(min=1)
    return per_sample.mean()
