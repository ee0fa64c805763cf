"""Training data: prepared subjects in memory, deterministic patches, augmentation.

* **Normalisation**: per sequence, z-score with the mean/std of the cord core (stored by
  ``prepare``); voxels outside a scan's coverage stay exactly zero, and missing sequences are
  zero and flagged unavailable. Networks with coverage input also get each sequence's coverage
  mask as a channel after the K images, so an uncovered voxel (0, 0) never reads as an average
  cord voxel (0, 1).
* **Patches**: the full in-plane crop, a random window along S-I (padded when the cord is
  shorter); a third of patches are centred on a lesion voxel (nnU-Net's foreground
  oversampling).
* **Augmentation** (:class:`Augmentation`): nnU-Net v2's default recipe for the ``paper`` preset
  (a lighter one for ``small``). The same spatial transform for every sequence and the label;
  intensity transforms drawn per available sequence, only inside its coverage (found before any
  intensity change), so out-of-coverage zeros and missing sequences stay exactly zero.

Sample ``n`` of the run is drawn from ``SeedSequence([seed, n])`` only: any worker, any resume,
gets the same patch, which is what makes an interrupted run resume bit for bit.

**Sequence dropout** (option, Mean Imputation): each available non-T2Sag sequence of a sample is
hidden (zeroed, flagged unavailable) with probability ``sequence_dropout``, so the network trains
on every subset of a subject's sequences and cannot tie a lesion's evidence to one combination.

**Reference dropout** (option, all-level fusion): with probability ``reference_dropout`` T2Sag
itself is hidden, when the other available sequences cover at least :data:`REFERENCE_DROP_COVER`
of the patch and every lesion voxel in it, so that the other encoders learn to find lesions on
their own instead of leaving it to T2Sag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cordfuse.preprocess.crop import core_disk
from cordfuse.preprocess.pipeline import PreparedSubject

NORMALISATION = (
    "z-score per sequence on the cord core (the covered voxels of a disk of 3 mm around the "
    "centreline; prepared layout 3)"
)
#: Share of a patch the other sequences must cover before T2Sag may be hidden (reference dropout).
REFERENCE_DROP_COVER = 0.8


@dataclass
class SubjectArrays:
    """One subject ready for training: ``images`` (K, X, Y, Z), ``available`` (K,), ``label``;
    ``signal`` (K,) is each sequence's cord-core mean in its z-score's units (0 where
    missing): the cord's signal in the z-scored units of ``images``, which painted lesions are
    measured against (:class:`Augmentation`'s ``paint_contrast``)."""

    name: str
    cohort: str | None
    images: np.ndarray
    available: np.ndarray
    label: np.ndarray
    lesion_voxels: np.ndarray
    signal: np.ndarray | None = None


def normalise(
    prepared: PreparedSubject, sequences: list[str], *, coverage: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Z-scored crops of ``sequences`` (zeros for missing ones and outside each scan's field of
    view), then their coverage masks when asked: the input a network reads.

    Args:
        prepared: A prepared subject.
        sequences: The model's sequences, in channel order.
        coverage: Append each sequence's coverage mask (1 inside its field of view, 0 outside
            and for a missing sequence) after the K images, as networks with
            ``NetConfig.coverage_input`` read them.

    Returns:
        ``(images, available)``: ``(K or 2K, X, Y, Z)`` float32 channels and ``(K,)`` booleans.
    """
    g = prepared.geometry
    k = len(sequences)
    images = np.zeros(((2 if coverage else 1) * k, g.size, g.size, g.nz), np.float32)
    available = np.zeros(k, bool)
    for i, seq in enumerate(sequences):
        if seq not in prepared.images:
            continue
        crop = prepared.images[seq]
        covered = prepared.coverage[seq]
        stats = prepared.stats[seq]
        scaled = (crop - stats["mean"]) / core_spread(stats)
        images[i] = np.where(covered, scaled, 0.0)
        if coverage:
            images[k + i] = covered
        available[i] = True
    return images, available


def core_spread(stats: dict[str, float]) -> float:
    """The unit of a sequence's z-score: its cord core's standard deviation, 1 where the core is
    flat. Relative, not an absolute floor: scanners store intensities on any scale (1e-6..1e6).

    Args:
        stats: The sequence's intensity statistics (:attr:`PreparedSubject.stats`).

    Returns:
        The divisor of :func:`normalise`.
    """
    return stats["std"] if stats["std"] > 0 else 1.0


def split_coverage(image: np.ndarray, sequences: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The images and coverage masks of a network input (see :func:`normalise`).

    Args:
        image: ``(K or 2K, ...)`` channels.
        sequences: K.

    Returns:
        ``(images, covered, has_coverage)``: the K images, the K boolean masks (taken from the
        coverage channels when there are some, else the non-zero voxels, as before coverage
        masks were stored) and whether the input holds coverage channels.
    """
    if image.shape[0] == 2 * sequences:
        return image[:sequences], image[sequences:] > 0.5, True
    return image, image != 0, False


def load_subjects(
    paths: list[Path], sequences: list[str], *, coverage: bool = False
) -> list[SubjectArrays]:
    """Read prepared subjects into the arrays training samples from.

    Args:
        paths: Prepared subject files.
        sequences: The model's sequences, in channel order.
        coverage: Hold the coverage masks as channels after the images (:func:`normalise`).

    Returns:
        One entry per file (an empty label for a subject without one).
    """
    subjects = []
    for path in paths:
        prepared = PreparedSubject.load(path)
        images, available = normalise(prepared, sequences, coverage=coverage)
        label = prepared.label
        if label is None:
            label = np.zeros(images.shape[1:], np.uint8)
        subjects.append(
            SubjectArrays(
                prepared.subject,
                prepared.cohort,
                images,
                available,
                label.astype(np.uint8),
                np.argwhere(label > 0),
                cord_signal(prepared, sequences),
            )
        )
    return subjects


def lesion_signs(sequences: list[str]) -> tuple[int, ...]:
    """+1 for each sequence where MS lesions are hyperintense (T2-weighted, STIR, T2*), -1
    where hypointense (T1Sag, MP2RAGE), in channel order.

    Args:
        sequences: The model's sequences, in channel order.

    Returns:
        One sign per sequence.

    Example:
        >>> lesion_signs(["T2Sag", "STIR", "MP2RAGE"])
        (1, 1, -1)
    """
    from cordfuse.synth.protocol import LESION_SIGN

    return tuple(LESION_SIGN[seq] for seq in sequences)


def cord_signal(prepared: PreparedSubject, sequences: list[str]) -> np.ndarray:
    """Each sequence's cord-core mean in the units of its z-score (:func:`core_spread`; 0 for a
    missing one): where the cord's own signal lies in the z-scored crop, whose 0 is the cord's
    mean.

    Args:
        prepared: A prepared subject.
        sequences: The model's sequences, in channel order.

    Returns:
        ``(K,)`` float32.
    """
    signal = np.zeros(len(sequences), np.float32)
    for i, seq in enumerate(sequences):
        if seq in prepared.images:
            stats = prepared.stats[seq]
            signal[i] = stats["mean"] / core_spread(stats)
    return signal


class PatchDataset(torch.utils.data.Dataset):
    """Sample ``n`` is a deterministic function of ``(seed, n)``; ``len`` is unbounded in use.

    Args:
        subjects: The training subjects' arrays.
        patch_size: The patch, ``(X, Y, Z)``; X and Y are the crops' full in-plane size.
        seed: The training seed.
        foreground_fraction: The share of patches centred on a lesion voxel.
        augment: Apply the spatial and intensity augmentation.
        sequence_dropout: Probability of hiding each available non-T2Sag sequence.
        reference_dropout: Probability of hiding T2Sag where the others cover the patch.
        rank: This process's DDP rank.
        world_size: The number of DDP processes.
        augmentation: The augmentation's ranges (default: nnU-Net's).
    """

    def __init__(
        self,
        subjects,
        patch_size,
        *,
        seed: int,
        foreground_fraction: float,
        augment: bool,
        sequence_dropout: float = 0.0,
        reference_dropout: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        augmentation: Augmentation | None = None,
    ):
        self.subjects = subjects
        self.patch_size = tuple(patch_size)
        self.seed = seed
        self.foreground_fraction = foreground_fraction
        self.augment = augment
        self.sequence_dropout = sequence_dropout
        self.reference_dropout = reference_dropout
        self.rank, self.world_size = rank, world_size
        self.augmentation = (augmentation or NNUNET) if augment else None

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, n: int):
        index = n * self.world_size + self.rank  # each DDP rank draws its own samples
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        subject = self.subjects[int(rng.integers(len(self.subjects)))]
        image, label = extract_patch(
            subject, self.patch_size, rng, foreground=rng.random() < self.foreground_fraction
        )
        available = subject.available.copy()
        k = len(available)
        channels = image.shape[0] // k  # the image, and its coverage mask when there is one
        if self.sequence_dropout:  # no draw at 0, so the paper's recipe keeps its samples
            hide = rng.random(k) < self.sequence_dropout
            hide[0] = False  # T2Sag carries the skips and the label: never hidden
            available &= ~hide
            image[np.tile(~available, channels)] = 0.0
        if self.reference_dropout and rng.random() < self.reference_dropout:
            _, covered, _ = split_coverage(image, k)
            others = covered[1:][available[1:]].any(axis=0)
            if others.mean() >= REFERENCE_DROP_COVER and others[label > 0].all():
                available[0] = False
                image[np.arange(channels) * k] = 0.0  # its image and its coverage mask
        if self.augmentation is not None:
            image, label = augment_patch(
                image, label, available, self.augmentation, rng, signal=subject.signal
            )
        return (
            torch.from_numpy(np.ascontiguousarray(image)),
            torch.from_numpy(np.ascontiguousarray(label)).long(),
            torch.from_numpy(available),
        )


def extract_patch(subject: SubjectArrays, patch_size, rng, *, foreground: bool):
    """Full in-plane patch along S-I; centred on a random lesion voxel when ``foreground``.

    Args:
        subject: The subject's arrays.
        patch_size: The patch, ``(X, Y, Z)``.
        rng: A numpy random generator.
        foreground: Centre the patch (up to a quarter patch) on a lesion voxel, when any.

    Returns:
        ``(image, label)``: ``(K, X, Y, Z)`` and ``(X, Y, Z)``, zero-padded past the crop.

    Raises:
        ValueError: the crop's in-plane size is not the patch's.
    """
    k, x, y, nz = subject.images.shape
    pz = patch_size[2]
    if x != patch_size[0] or y != patch_size[1]:
        raise ValueError(f"crop {x}x{y} does not match the patch {patch_size[:2]}")
    if foreground and len(subject.lesion_voxels):
        z = subject.lesion_voxels[rng.integers(len(subject.lesion_voxels))][2]
        start = int(z) - pz // 2 + int(rng.integers(-pz // 4, pz // 4 + 1))
    else:
        start = int(rng.integers(min(0, nz - pz), max(0, nz - pz) + 1))
    start = int(np.clip(start, min(0, nz - pz), max(0, nz - pz)))
    image = np.zeros((k, x, y, pz), np.float32)
    label = np.zeros((x, y, pz), np.uint8)
    lo, hi = max(start, 0), min(start + pz, nz)
    image[..., lo - start : hi - start] = subject.images[..., lo:hi]
    label[..., lo - start : hi - start] = subject.label[..., lo:hi]
    return image, label


@dataclass(frozen=True)
class Augmentation:
    """Ranges and probabilities of the training augmentation (per sample unless said).

    :data:`NNUNET` is nnU-Net v2's default 3D recipe (``nnUNetTrainer``) adapted to the
    straightened crop: rotations about the S-I axis keep nnU-Net's +-30 degrees, but about the
    in-plane axes only +-15 degrees, since the crop follows the cord and a larger tilt turns it out
    of the 24 mm wide patch; mirroring is left-right and superior-inferior, not
    anterior-posterior (the dorsal columns, where most cord MS lesions sit, stay behind).
    :data:`LIGHT` is the lighter recipe the ``small`` CPU preset keeps.

    Attributes:
        rotation_deg: maximum rotation about (left-right, antero-posterior, S-I) axes.
        p_rotation: probability of a rotation.
        scaling: range of the isotropic zoom factor.
        p_scaling: probability of a zoom.
        mirror_axes: voxel axes mirrored, each with probability 1/2.
        noise_variance: range of the Gaussian noise variance.
        p_noise: probability of noise (all available sequences).
        blur_sigma: range of the Gaussian blur sigma (voxels).
        p_blur: probability of blur; each available sequence then with ``p_blur_channel``.
        p_blur_channel: see ``p_blur``.
        brightness: range of the multiplicative brightness factor.
        p_brightness: probability, drawn per available sequence.
        contrast: range of the contrast factor (about the mean, range preserved).
        p_contrast: probability, drawn per available sequence.
        low_resolution: range of the zoom of the low-resolution simulation.
        p_low_resolution: probability; each available sequence then with ``p_low_channel``.
        p_low_channel: see ``p_low_resolution``.
        gamma: range of the gamma exponent (on the channel rescaled to [0, 1], stats kept).
        p_gamma: probability of gamma, per available sequence.
        p_gamma_inverted: probability of a gamma on the inverted image, per available sequence.
        lesion_contrast: range (log-uniform) of the factor applied to the lesions' contrast over
            the cord: each lesion's mean z-score (0 is the cord's mean) is multiplied by it, with
            a soft edge. The default cohorts' lesions stay between the cord and CSF (T2Sag:
            at most 2x the cord's signal), real ones range from just above the cord to beyond
            CSF; 0.5-3 turns a 2x lesion into a 1.5-4x one.
        p_lesion_contrast: probability, drawn per available sequence of a sample with a lesion;
            0 (the presets) draws nothing, so the other transforms keep their random numbers.
        fov_truncation: range of the share of the patch, along S-I, that a truncated field of
            view leaves uncovered at one end (the end drawn at random).
        p_fov_truncation: probability of a truncated field of view per sample: every sequence,
            its coverage and the label are cleared past a slice, as where a short real slab ends
            in the middle of the cord (in the default cohorts a scan's end lies about the S-I
            margin from the crop's end, in 8 % of random patches); 0 (the presets) draws
            nothing.
        paint_length_mm: range of a painted lesion's length along S-I (mm).
        paint_width_mm: range of its diameter in the axial plane (mm).
        paint_contrast: range of its signal as a multiple of the local cord signal, drawn per
            sequence: that multiple where lesions are hyperintense, its inverse where they are
            hypointense (:data:`cordfuse.synth.protocol.LESION_SIGN`).
        p_paint: probability of one lesion painted into a sample's cord and its label (the
            smooth-edged ellipsoid of :mod:`cordfuse.synth.paint`, centred within
            :data:`PAINT_OFFSET_MM` of the centreline): small, clearly visible lesions, which the
            default cohorts' 3 mm sagittal slices seldom show and the models miss in domain as on
            real scans; 0 (the presets) draws nothing.
        spacing_mm: the crops' voxel size, which painted lesions are drawn in.
        lesion_signs: per channel of the model's sequences, +1 where lesions are hyperintense
            and -1 where hypointense (:func:`lesion_signs`), which painting needs.
    """

    rotation_deg: tuple[float, float, float] = (15.0, 15.0, 30.0)
    p_rotation: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    p_scaling: float = 0.2
    mirror_axes: tuple[int, ...] = (0, 2)
    noise_variance: tuple[float, float] = (0.0, 0.1)
    p_noise: float = 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    p_blur: float = 0.2
    p_blur_channel: float = 0.5
    brightness: tuple[float, float] = (0.75, 1.25)
    p_brightness: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    low_resolution: tuple[float, float] = (0.5, 1.0)
    p_low_resolution: float = 0.25
    p_low_channel: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3
    p_gamma_inverted: float = 0.1
    lesion_contrast: tuple[float, float] = (0.5, 3.0)
    p_lesion_contrast: float = 0.0
    fov_truncation: tuple[float, float] = (0.05, 0.5)
    p_fov_truncation: float = 0.0
    paint_length_mm: tuple[float, float] = (2.0, 8.0)
    paint_width_mm: tuple[float, float] = (1.5, 3.5)
    paint_contrast: tuple[float, float] = (1.25, 3.0)
    p_paint: float = 0.0
    spacing_mm: float = 1.0
    lesion_signs: tuple[int, ...] = ()


NNUNET = Augmentation()
LIGHT = Augmentation(
    rotation_deg=(10.0, 10.0, 10.0),
    p_rotation=0.3,
    scaling=(0.9, 1.1),
    p_scaling=0.3,
    mirror_axes=(0,),
    noise_variance=(0.0, 0.01),
    p_noise=0.15,
    blur_sigma=(0.0, 0.5),
    p_blur=0.2,
    p_blur_channel=1.0,
    p_low_resolution=0.0,
    p_gamma_inverted=0.0,
)
#: The recipe of each preset.
PRESET_AUGMENTATION = {"paper": NNUNET, "small": LIGHT}


def augment_patch(
    image,
    label,
    available,
    params: Augmentation,
    rng,
    drawn: dict | None = None,
    *,
    signal: np.ndarray | None = None,
):
    """One augmented sample: the same spatial transform for every sequence and the label, then
    intensity transforms per available sequence, only inside each sequence's coverage (its
    coverage channel moved with it, or without one the non-zero voxels after the spatial
    transform). Missing sequences stay zero.

    Args:
        image: ``(K, X, Y, Z)`` normalised sequences, or ``(2K, X, Y, Z)`` with their coverage
            masks (:func:`normalise`).
        label: ``(X, Y, Z)`` lesion label.
        available: ``(K,)`` booleans.
        params: the recipe.
        rng: NumPy generator of this sample (the augmentation is a function of it).
        drawn: if given, filled with the parameters drawn (for tests and curiosity).
        signal: ``(K,)`` the cord's signal in z-scored units (:attr:`SubjectArrays.signal`),
            which painted lesions need.

    Raises:
        ValueError: painting without ``signal``.
    """
    drawn = {} if drawn is None else drawn
    k = len(available)
    if params.p_paint and rng.random() < params.p_paint:
        if signal is None or len(params.lesion_signs) != k:
            raise ValueError("painting a lesion needs each sequence's cord signal and polarity")
        # on the straightened patch, where the centreline is the crop's centre at every slice;
        # the spatial transform then moves the lesion with the cord
        images, covered, _ = split_coverage(image, k)
        painted, label = _paint(images, covered, label, available, signal, params, rng, drawn)
        image = np.concatenate([painted, image[k:]])
    image, label = _spatial(image, label, params, rng, drawn)
    if params.p_fov_truncation and rng.random() < params.p_fov_truncation:
        image, label = _truncate_fov(image, label, params, rng, drawn)
    images, covered, has_coverage = split_coverage(image, k)
    if params.p_lesion_contrast and label.any():
        images = _lesion_contrast(images, covered, label, available, params, rng, drawn)
    out = np.zeros_like(image)
    for i in np.flatnonzero(available):
        out[i] = _intensity(images[i], covered[i], params, rng, drawn.setdefault(i, {}))
    if has_coverage:  # the masks moved with the images; resampled, they are whole again
        out[len(available) :] = covered
    return out, label


def _spatial(image, label, params: Augmentation, rng, drawn):
    from scipy import ndimage

    angles = np.zeros(3)
    if rng.random() < params.p_rotation:
        angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.asarray(params.rotation_deg))
    zoom = rng.uniform(*params.scaling) if rng.random() < params.p_scaling else 1.0
    mirror = [axis for axis in params.mirror_axes if rng.random() < 0.5]
    drawn.update(angles_deg=np.rad2deg(angles), zoom=zoom, mirror=mirror)
    if angles.any() or zoom != 1.0:
        from cordfuse.synth.acquire import rotation_matrix

        # Output voxel p samples the input at centre + R (p - centre) / zoom.
        matrix = rotation_matrix(np.rad2deg(angles)) / zoom
        centre = (np.asarray(label.shape) - 1) / 2
        offset = centre - matrix @ centre
        image = np.stack(
            [  # an empty (missing) sequence stays empty: no need to resample it
                ndimage.affine_transform(
                    channel, matrix, offset, order=1, mode="constant", cval=0.0
                )
                if channel.any()
                else channel
                for channel in image
            ]
        )
        label = (
            ndimage.affine_transform(
                label.astype(np.float32), matrix, offset, order=1, mode="constant", cval=0.0
            )
            > 0.5
        ).astype(np.uint8)
    for axis in mirror:
        image = np.flip(image, axis=axis + 1)
        label = np.flip(label, axis=axis)
    return np.ascontiguousarray(image, dtype=np.float32), np.ascontiguousarray(label)


def _truncate_fov(image, label, params: Augmentation, rng, drawn):
    """The field of view ends inside the patch: past a slice drawn at one end, every channel
    (images and coverage masks) and the label are 0, as outside a real scan's coverage; the
    intensity transforms that follow then see only what is left covered."""
    nz = label.shape[-1]
    cut = max(1, round(rng.uniform(*params.fov_truncation) * nz))
    inferior = bool(rng.random() < 0.5)
    drawn["fov_truncation"] = {"slices": cut, "end": "inferior" if inferior else "superior"}
    image, label = image.copy(), label.copy()
    cleared = np.s_[..., :cut] if inferior else np.s_[..., nz - cut :]
    image[cleared] = 0.0
    label[cleared] = 0
    return image, label


#: How far from the centreline (the crop's in-plane centre) a painted lesion's centre may lie
#: (mm): with a 3.5 mm wide lesion it stays inside a cord 7 mm across, as the cervical cord's
#: antero-posterior diameter is.
PAINT_OFFSET_MM = 1.0
#: The cord a painted lesion's local signal is measured on (as the bench measures it,
#: :func:`cordfuse.synth.paint.local_cord_signal`): the covered voxels within this radius of the
#: centreline (mm).
CORE_RADIUS_MM = 2.0


def _paint(images, covered, label, available, signal, params: Augmentation, rng, drawn):
    """One lesion painted into the cord of every available sequence and into the label: the
    smooth-edged ellipsoid of :func:`cordfuse.synth.paint.lesion_fraction`, where T2Sag (whose
    grid the label is on) covers the centreline over its whole length, its signal ``contrast``
    times the local cord signal blended by each voxel's fraction, as the real-scan bench paints,
    before the spatial and scanner-like transforms act on it. Nothing is painted in a sample
    without T2Sag."""
    from cordfuse.synth.paint import PaintedLesion, lesion_fraction, local_cord_signal

    _, x, y, _ = images.shape
    spacing = params.spacing_mm
    length = float(rng.uniform(*params.paint_length_mm))
    width = float(rng.uniform(*params.paint_width_mm))
    angle, offset = rng.uniform(0, 2 * np.pi), PAINT_OFFSET_MM * np.sqrt(rng.random())
    contrasts = rng.uniform(*params.paint_contrast, len(available))
    centre = np.array([(x - 1) / 2, (y - 1) / 2]) + offset / spacing * np.array(
        [np.cos(angle), np.sin(angle)]
    )
    # a centre whose whole length T2Sag covers (not across a gap between two slabs)
    column = covered[0][int(round(centre[0])), int(round(centre[1]))]
    reach = int(np.ceil(length / 2 / spacing))
    runs = np.convolve(column, np.ones(2 * reach + 1), mode="same") >= 2 * reach + 1
    places = np.flatnonzero(runs)
    if not available[0] or not places.size:
        return images, label
    z = float(rng.choice(places))
    where = (float(centre[0]) * spacing, float(centre[1]) * spacing, z * spacing)
    lesion = PaintedLesion(where, length, width, contrast=1.0)  # the contrast is per sequence
    affine = np.diag([spacing] * 3 + [1.0])
    fraction = lesion_fraction(label.shape, affine, lesion)
    core = core_disk(x, spacing, CORE_RADIUS_MM)  # patches are the crop's full square in-plane
    out = images.copy()
    contrast = {}
    for i in np.flatnonzero(available):
        cord_core = covered[i] & core[..., None] & (label == 0)
        # the cord's signal in units of the core's spread, from 0 signal (the core's mean where
        # lesions fill the whole core)
        local = local_cord_signal(images[i], affine, cord_core, where[2]) if cord_core.any() else 0
        cord = signal[i] + local
        contrast[int(i)] = factor = float(contrasts[i]) ** params.lesion_signs[i]
        weight = fraction * covered[i]
        out[i] = images[i] * (1 - weight) + (factor * cord - signal[i]) * weight
    label = np.where((fraction >= 0.5) & covered[0], 1, label).astype(label.dtype)
    drawn["paint"] = {"length_mm": length, "width_mm": width, "slice": z, "contrast": contrast}
    return out, label


def _lesion_contrast(
    images, covered, label, available, params: Augmentation, rng, drawn
) -> np.ndarray:
    """The lesions' contrast over the cord scaled per sequence, before the scanner-like
    transforms (noise, blur, gamma) act on the result as they would on a real lesion.

    Each lesion's mean z-score ``m`` (0 is the cord's mean) becomes ``k * m``: ``(k - 1) * m`` is
    added to its voxels, so its texture and noise stay as they were. The added signal fades over
    about a voxel outside the label (a partial-volume edge instead of a step); it is added, not
    multiplied, so the CSF or cord next to a lesion keeps its own signal.
    """
    from scipy import ndimage

    out = images.copy()
    components, n = ndimage.label(label > 0)
    lesion = (components > 0).astype(np.float32)
    spread = ndimage.gaussian_filter(lesion, 0.75)
    weight = np.maximum(lesion, spread)
    low, high = np.log(params.lesion_contrast)
    for i in np.flatnonzero(available):
        if rng.random() >= params.p_lesion_contrast:
            continue
        drawn.setdefault(i, {})["lesion_contrast"] = factor = float(np.exp(rng.uniform(low, high)))
        # each lesion's mean over the voxels this sequence covers: its zeros elsewhere are not
        # signal (bin 0 gathers the rest and is set to 0)
        seen = (components * covered[i]).ravel()
        sums = np.bincount(seen, weights=images[i].ravel(), minlength=n + 1)
        means = (sums / np.maximum(np.bincount(seen, minlength=n + 1), 1)).astype(np.float32)
        means[0] = 0.0
        inside = means[components]
        # outside the label: the mean of the lesions nearby, as their blurred labels weigh them
        near = ndimage.gaussian_filter(inside, 0.75) / np.maximum(spread, 1e-6)
        signal = np.where(components > 0, inside, np.where(spread > 1e-3, near, 0.0))
        out[i] = images[i] + (factor - 1.0) * weight * signal
    return out


def _intensity(channel, covered, params: Augmentation, rng, drawn) -> np.ndarray:
    from scipy import ndimage

    channel = channel.astype(np.float32, copy=True)
    if rng.random() < params.p_noise:
        drawn["noise_variance"] = variance = rng.uniform(*params.noise_variance)
        channel = channel + rng.normal(0.0, np.sqrt(variance), channel.shape).astype(np.float32)
    if rng.random() < params.p_blur and rng.random() < params.p_blur_channel:
        drawn["blur_sigma"] = sigma = rng.uniform(*params.blur_sigma, 3)
        channel = ndimage.gaussian_filter(channel, sigma)
    if rng.random() < params.p_brightness:
        drawn["brightness"] = factor = rng.uniform(*params.brightness)
        channel = channel * factor
    if rng.random() < params.p_contrast and covered.any():
        drawn["contrast"] = factor = rng.uniform(*params.contrast)
        mean, lo, hi = channel[covered].mean(), channel[covered].min(), channel[covered].max()
        channel = np.clip((channel - mean) * factor + mean, lo, hi)
    if rng.random() < params.p_low_resolution and rng.random() < params.p_low_channel:
        drawn["low_resolution"] = zoom = rng.uniform(*params.low_resolution)
        small = ndimage.zoom(channel, zoom, order=0)
        channel = ndimage.zoom(small, np.asarray(channel.shape) / np.asarray(small.shape), order=3)[
            : channel.shape[0], : channel.shape[1], : channel.shape[2]
        ]
    for p, inverted in ((params.p_gamma_inverted, True), (params.p_gamma, False)):
        if rng.random() < p and covered.any():
            drawn["gamma_inverted" if inverted else "gamma"] = gamma = rng.uniform(*params.gamma)
            channel = _gamma(channel, covered, gamma, inverted)
    return np.where(covered, channel, 0.0).astype(np.float32)


def _gamma(channel, covered, gamma: float, inverted: bool) -> np.ndarray:
    """nnU-Net's gamma: on the channel rescaled to [0, 1] (inverted if asked), mean and standard
    deviation of the covered voxels restored afterwards."""
    values = channel[covered]
    mean, std = values.mean(), values.std()
    lo, hi = values.min(), values.max()
    if hi <= lo:
        return channel
    sign = -1.0 if inverted else 1.0
    scaled = np.clip((sign * channel - min(sign * lo, sign * hi)) / (hi - lo), 0, 1) ** gamma
    out = sign * scaled
    new = out[covered]
    return (out - new.mean()) / max(new.std(), 1e-8) * std + mean
