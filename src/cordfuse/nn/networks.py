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

Beyond the paper, for a model whose extra sequences make a better answer than T2Sag alone:

* **Early fusion** (:class:`EarlyFusionNet`): one U-Net over the aligned crops stacked as
  channels, missing sequences zero.
* **Anchored** (:class:`AnchoredNet`): a frozen T2Sag-only model plus a correction over every
  available sequence added to its logits; with T2Sag alone it is its anchor, bit for bit.

Every network reads each sequence's coverage mask beside its image (``NetConfig.coverage_input``):
outside a scan's field of view its crop is zero, which after the z-score is an average cord
voxel; the mask tells the two apart.

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
    #: Each sequence's coverage mask is an input channel beside its image, so that "outside this
    #: scan's field of view" (image 0, coverage 0) never looks like an average cord voxel (image
    #: 0 after the z-score, coverage 1). Checkpoints from before it read False.
    coverage_input: bool = True

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
    def channels_per_sequence(self) -> int:
        """Input channels of one sequence: its image, and its coverage when :attr:`coverage_input`.

        Example:
            >>> NetConfig().channels_per_sequence
            2
            >>> NetConfig(coverage_input=False).channels_per_sequence
            1
        """
        return 2 if self.coverage_input else 1

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


def make_encoder(config: NetConfig, input_channels: int | None = None) -> PlainConvEncoder:
    """One sequence's nnU-Net encoder (3D convolutions, instance norm, LeakyReLU), with skips.

    Args:
        config: The architecture (channels and strides of each stage).
        input_channels: Its input channels (default: one sequence's,
            :attr:`NetConfig.channels_per_sequence`).

    Returns:
        The encoder, returning the features of every stage.
    """
    return PlainConvEncoder(
        input_channels=input_channels or config.channels_per_sequence,
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


def check_channels(x: torch.Tensor, sequences: int, config: NetConfig) -> None:
    """Refuse an input whose channels are not ``sequences`` images (and their coverage masks).

    Args:
        x: ``(B, C, X, Y, Z)`` network input.
        sequences: The number of sequences K.
        config: The architecture (whether coverage masks are input channels).

    Raises:
        ValueError: ``C`` is not ``K`` (or ``2K`` with coverage masks).
    """
    expected = sequences * config.channels_per_sequence
    if x.shape[1] != expected:
        raise ValueError(f"expected {expected} channels, got {x.shape[1]}")


def sequence_channels(x: torch.Tensor, index: int, sequences: int, coverage: bool) -> torch.Tensor:
    """The input channels of one sequence: its image, then its coverage mask when there is one.

    Args:
        x: ``(B, C, X, Y, Z)``: K images, then (``coverage``) K coverage masks.
        index: The sequence's channel.
        sequences: K.
        coverage: Whether ``x`` holds the coverage masks.

    Returns:
        ``(B, 1 or 2, X, Y, Z)``.

    Example:
        >>> x = torch.arange(4.0).view(1, 4, 1, 1, 1)    # 2 images, 2 coverage masks
        >>> sequence_channels(x, 1, 2, True).flatten().tolist()
        [1.0, 3.0]
    """
    if coverage:
        return x[:, [index, sequences + index]]
    return x[:, index : index + 1]


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
        sequence_supervision: In training, also segment from one other sequence's features alone
            (drawn per step) through the shared decoder, for an auxiliary loss that leaves no
            encoder idle (RFNet's and mmFormer's answer to modality imbalance); the output's
            ``extra["sequence_alone"]`` holds its logits, the samples that have it and its
            channel.

    Raises:
        ValueError: T2Sag is not first, an unknown fusion, all-level fusion of one sequence, or
            sequence supervision without Mean Imputation and several sequences.
    """

    def __init__(
        self,
        config: NetConfig,
        sequences: Sequence[str],
        *,
        mean_imputation: bool = False,
        feature_noise: FeatureNoise | None = None,
        fusion: str = "bottleneck",
        sequence_supervision: bool = False,
    ):
        super().__init__()
        if not sequences or sequences[0] != REFERENCE:
            raise ValueError(f"sequences must start with {REFERENCE}, got {list(sequences)}")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        if fusion == "all-levels" and len(sequences) < 2:
            raise ValueError("all-level fusion needs more than one sequence")
        if sequence_supervision and (not mean_imputation or len(sequences) < 2):
            raise ValueError("sequence supervision needs Mean Imputation of several sequences")
        self.sequence_supervision = sequence_supervision
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
        self.decoder, self.unused_heads = make_decoder(self.encoders[REFERENCE], config)
        self.apply(InitWeights_He(1e-2))
        self.register_load_state_dict_pre_hook(_skip_unused_heads)

    @property
    def skips_parameters(self) -> bool:
        """Whether a training step may leave parameters unused: Mean Imputation skips the
        encoder of a sequence missing from the whole batch (DDP must then search the graph)."""
        return self.mean_imputation

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None) -> NetOutput:
        """Segment a batch of patches.

        Args:
            x: ``(B, C, X, Y, Z)`` normalised images in ``self.sequences`` order, then (with
                :attr:`NetConfig.coverage_input`) their coverage masks in the same order.
            available: ``(B, K)`` booleans, which sequences each sample has (all when omitted).

        Returns:
            The logits of the deep supervision levels and the encoders' bottleneck features.

        Raises:
            ValueError: wrong channel count, a sample without T2Sag (bottleneck fusion), or a
                missing sequence without Mean Imputation.
        """
        batch, k = x.shape[0], len(self.sequences)
        check_channels(x, k, self.config)
        if available is None:
            available = torch.ones(batch, k, dtype=torch.bool, device=x.device)
        if self.skip_fusions is None and not bool(available[:, 0].all()):
            raise ValueError(f"every sample needs {REFERENCE} (it gives the decoder's skips)")
        if not self.mean_imputation and not bool(available.all()):
            raise ValueError("this model needs every one of its sequences for every sample")
        coverage = self.config.coverage_input
        skips = self.encoders[REFERENCE](sequence_channels(x, 0, k, coverage))
        per_sequence = [skips]
        for i, seq in enumerate(self.sequences[1:], start=1):
            if bool(available[:, i].any()):
                per_sequence.append(self.encoders[seq](sequence_channels(x, i, k, coverage)))
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
        output = NetOutput(logits[: self.config.deep_supervision_levels], stacked, available)
        if self.training and self.sequence_supervision:
            # The same draw on every DDP rank (the global RNG is seeded alike), so that ranks
            # agree on which encoder this step supervises.
            index = int(torch.randint(1, k, ()))
            has = available[:, index]
            if bool(has.any()):
                output.extra["sequence_alone"] = (self._alone(per_sequence, index), has, index)
        return output

    def _alone(self, per_sequence: list[list[torch.Tensor]], index: int) -> list[torch.Tensor]:
        """Logits from one sequence's features alone: every other sequence imputed by them
        (equation 1 with that sequence the only one available), at the bottleneck and, with
        all-level fusion, at every level; with the paper's fusion the skips are its own."""
        batch = per_sequence[0][0].shape[0]
        only = torch.zeros(batch, len(self.sequences), dtype=torch.bool)
        only[:, index] = True
        only = only.to(per_sequence[0][0].device)
        own = per_sequence[index]
        if self.skip_fusions is not None:
            skips = [
                self._fuse_level(fuse, [levels[depth] for levels in per_sequence], only)
                for depth, fuse in enumerate(self.skip_fusions)
            ]
        else:
            skips = list(own[:-1])
        stacked = mean_impute(torch.stack([levels[-1] for levels in per_sequence], dim=1), only)
        assert self.fusion is not None  # several sequences
        bottleneck = self.fusion(stacked.flatten(1, 2))
        return self.decoder([*skips, bottleneck])[: self.config.deep_supervision_levels]

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


def make_decoder(encoder: PlainConvEncoder, config: NetConfig) -> tuple[UNetDecoder, int]:
    """nnU-Net's decoder for ``encoder``, with deep supervision on the finest levels only.

    Only the ``deep_supervision_levels`` finest outputs reach the loss. The coarser heads would
    compute logits nobody uses and leave parameters without gradients, which
    DistributedDataParallel refuses unless it searches the graph every step: they are dropped.

    Args:
        encoder: The encoder whose skips the decoder takes.
        config: The architecture.

    Returns:
        ``(decoder, number of dropped heads)``; the dropped heads come first in
        ``decoder.seg_layers``.
    """
    decoder = UNetDecoder(
        encoder, config.num_classes, config.convs_per_stage, deep_supervision=True
    )
    unused = len(decoder.seg_layers) - config.deep_supervision_levels
    for index in range(unused):
        decoder.seg_layers[index] = nn.Identity()
    return decoder, unused


def _availability(x: torch.Tensor, sequences: int, available: torch.Tensor | None) -> torch.Tensor:
    """The ``(B, K)`` availability, every sequence when not given; T2Sag required."""
    if available is None:
        available = torch.ones(x.shape[0], sequences, dtype=torch.bool, device=x.device)
    if not bool(available[:, 0].all()):
        raise ValueError(f"every sample needs {REFERENCE}")
    return available


class EarlyFusionNet(nn.Module):
    """Early fusion: one U-Net over every sequence's aligned crop stacked as channels, with the
    coverage masks (the simple baseline of the missing-modality literature: HeMIS, RFNet and
    mmFormer are measured against it). A missing sequence is all zeros, image and coverage alike,
    so the network reads its absence; trained with sequence dropout, it learns every subset.

    Every sequence reaches the decoder at full resolution through the shared encoder's skips,
    unlike the paper's fusion at the bottleneck.

    Args:
        config: The architecture of the encoder and decoder.
        sequences: The model's sequences in channel order; T2Sag first.
        extra_channels: Input channels after the sequences' (the anchored model's correction
            reads its anchor's lesion probability there).

    Raises:
        ValueError: T2Sag is not first.
    """

    #: Missing sequences are zero channels, not imputed features.
    mean_imputation = False
    #: Every parameter takes part in every step.
    skips_parameters = False

    def __init__(self, config: NetConfig, sequences: Sequence[str], *, extra_channels: int = 0):
        super().__init__()
        if not sequences or sequences[0] != REFERENCE:
            raise ValueError(f"sequences must start with {REFERENCE}, got {list(sequences)}")
        self.config = config
        self.sequences = list(sequences)
        self.extra_channels = extra_channels
        self.encoder = make_encoder(
            config, len(self.sequences) * config.channels_per_sequence + extra_channels
        )
        self.decoder, self.unused_heads = make_decoder(self.encoder, config)
        self.apply(InitWeights_He(1e-2))

    def forward(
        self,
        x: torch.Tensor,
        available: torch.Tensor | None = None,
        extra: torch.Tensor | None = None,
    ) -> NetOutput:
        """Segment a batch of patches.

        Args:
            x: ``(B, C, X, Y, Z)`` as :meth:`CordNet.forward` takes it.
            available: ``(B, K)`` booleans (all when omitted); the channels of a missing sequence
                are zeroed whatever they hold.
            extra: ``(B, extra_channels, X, Y, Z)``, when the network has extra channels.

        Returns:
            The logits of the deep supervision levels and the bottleneck features ``(B, 1, C,
            ...)``.

        Raises:
            ValueError: wrong channel count, or a sample without T2Sag.
        """
        k = len(self.sequences)
        check_channels(x, k, self.config)
        available = _availability(x, k, available)
        keep = available.repeat(1, self.config.channels_per_sequence).to(x.dtype)
        stacked = x * keep[:, :, None, None, None]
        if self.extra_channels:
            if extra is None or extra.shape[1] != self.extra_channels:
                raise ValueError(f"expected {self.extra_channels} extra channels")
            stacked = torch.cat([stacked, extra.to(stacked.dtype)], dim=1)
        skips = self.encoder(stacked)
        logits = self.decoder(skips)
        return NetOutput(
            logits[: self.config.deep_supervision_levels], skips[-1][:, None], available
        )


#: The anchored model's corrections: early fusion (which also reads the anchor's lesion
#: probability), or one encoder per sequence with Mean Imputation and all-level fusion.
CORRECTIONS = ("early-fusion", "all-levels")


class AnchoredNet(nn.Module):
    """A frozen T2Sag-only model (the anchor) plus a correction over every available sequence,
    added to the anchor's logits.

    The correction is an :class:`EarlyFusionNet` that also reads the anchor's lesion
    probability, so it learns what the other sequences change in the anchor's answer, or a
    :class:`CordNet` with all-level fusion. Its output layers start at zero, so training starts
    from the anchor's answer. A sample with T2Sag alone gets the anchor's logits, bit for bit:
    with T2Sag alone the model cannot do worse than its anchor. The anchor stays in evaluation
    mode and receives no gradient.

    Args:
        config: The architecture of the anchor and the correction.
        sequences: The model's sequences in channel order; T2Sag first, more than one.
        correction: One of :data:`CORRECTIONS`.

    Raises:
        ValueError: T2Sag is not first, T2Sag alone, or an unknown correction.
    """

    mean_imputation = False

    def __init__(
        self, config: NetConfig, sequences: Sequence[str], *, correction: str = "early-fusion"
    ):
        super().__init__()
        if len(sequences) < 2:
            raise ValueError("an anchored model needs more sequences than its T2Sag anchor")
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}")
        self.config = config
        self.sequences = list(sequences)
        self.anchor = CordNet(config, [REFERENCE]).eval()
        self.anchor.requires_grad_(False)
        self.correction: EarlyFusionNet | CordNet
        if correction == "early-fusion":
            self.correction = EarlyFusionNet(config, sequences, extra_channels=1)
        else:
            self.correction = CordNet(config, sequences, mean_imputation=True, fusion="all-levels")
        for head in self.correction.decoder.seg_layers[self.correction.unused_heads :]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def skips_parameters(self) -> bool:
        """Whether a training step may leave parameters unused: those of its correction (the
        correction runs on every training batch; an all-level one skips missing encoders)."""
        return self.correction.skips_parameters

    def train(self, mode: bool = True) -> AnchoredNet:
        """Set the correction's mode; the anchor always predicts as in evaluation.

        Args:
            mode: Training (True) or evaluation.

        Returns:
            The network.
        """
        super().train(mode)
        self.anchor.eval()
        return self

    def forward(self, x: torch.Tensor, available: torch.Tensor | None = None) -> NetOutput:
        """Segment a batch of patches: the anchor's logits, plus the correction's where a sample
        has a sequence beside T2Sag.

        Args:
            x: ``(B, C, X, Y, Z)`` as :meth:`CordNet.forward` takes it.
            available: ``(B, K)`` booleans (all when omitted).

        Returns:
            The logits of the deep supervision levels and the correction's bottleneck features
            (the anchor's when no sample has another sequence, in evaluation).

        Raises:
            ValueError: wrong channel count, or a sample without T2Sag.
        """
        k = len(self.sequences)
        check_channels(x, k, self.config)
        available = _availability(x, k, available)
        with torch.no_grad():
            anchor = self.anchor(sequence_channels(x, 0, k, self.config.coverage_input))
        others = available[:, 1:].any(dim=1)
        if not self.training and not bool(others.any()):
            return NetOutput(anchor.logits, anchor.features, available)
        if isinstance(self.correction, EarlyFusionNet):
            probability = torch.softmax(anchor.logits[0].float(), dim=1)[:, 1:]
            correction = self.correction(x, available, probability)
        else:
            correction = self.correction(x, available)
        keep = others.view(-1, 1, 1, 1, 1)
        logits = [
            torch.where(keep, a + c, a)
            for a, c in zip(anchor.logits, correction.logits, strict=True)
        ]
        return NetOutput(logits, correction.features, available)


#: Every network class; each takes ``(x, available)`` and returns a :class:`NetOutput`.
Network = CordNet | EarlyFusionNet | AnchoredNet


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
