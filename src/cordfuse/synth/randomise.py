"""Domain randomisation of synthetic scans (``cordfuse synth --randomise``).

A model trained on the default cohorts sees one tissue table per sequence and a narrow lesion
contrast, and learns that appearance instead of the anatomy (``benchmarks/bench_real.py``). Here,
as in SynthSeg, SynthStrip and WMH-SynthSeg, appearance is drawn far beyond the realistic range so
that only the anatomy and the lesions' shape are left to learn:

- per subject: the cord's cross-section and the CSF margin around it, and 3-8 background labels
  (random smooth regions that replace the single muscle tissue: more generation labels than
  output labels);
- per sequence (shared by its slabs or chunks, one acquisition): every tissue's mean and spread
  (a smooth texture), the lesion contrast, heterogeneous lesion interiors with soft edges, the
  contrast curve, the gain, and the in-plane resolution and slice thickness (the scan's grid is
  redrawn, so the partial volume of the truth follows);
- per scan: a stronger bias field, the noise, an in-plane blur, the slice profile (cross-talk
  between neighbouring slices) and Gibbs ringing.

Orderings are kept only where physics forbids the opposite: lesions stay brighter than the cord
(by at least :data:`LESION_MIN`) on the sequences where they are hyperintense and darker on
T1Sag and MP2RAGE (:data:`cordfuse.synth.protocol.LESION_SIGN`), CSF stays brighter than the cord
on T2-weighted sequences and darker on T1-weighted ones, and air stays dark.

Every draw comes from its own streams, ``SeedSequence([seed, index, RANDOMISE_KEY, ...])``, never
from the subject's generator, so a default cohort keeps its bytes, a randomised subject keeps the
default subject's anatomy, lesions and scans (only their size, grid and look change), and the
same seed gives the same bytes. :meth:`Randomisation.record` is what the truth JSON holds.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from cordfuse.io import voxel_sizes
from cordfuse.sequences import PLANES, SEQUENCES
from cordfuse.synth.acquire import log_bias_field
from cordfuse.synth.anatomy import Anatomy, Fractions, Lesion
from cordfuse.synth.protocol import LESION_SIGN

if TYPE_CHECKING:
    from cordfuse.synth.cohort import ScanPlan

#: Mixed into every randomisation stream's seed, so none meets a subject's own stream.
RANDOMISE_KEY = zlib.crc32(b"randomise")

# The documented ranges (docs/data.md). Ratios are to the cord's (white matter's) mean signal.
#: Scale of the cord's cross-section (per subject).
CORD_SCALE = (0.75, 1.3)
#: Scale of the CSF margin between the cord and the canal wall (per subject).
CANAL_SCALE = (0.4, 1.8)
#: How many background labels replace the muscle (per subject, inclusive).
BACKGROUND_LABELS = (3, 8)
#: The cord's mean signal.
CORD_MEAN = (0.15, 0.6)
#: CSF over cord where CSF is bright (lesions hyperintense: T2-weighted) and where it is dark.
CSF_RATIO_BRIGHT = (1.3, 4.0)
CSF_RATIO_DARK = (0.1, 0.75)
#: Grey matter over white matter.
GM_RATIO = (0.8, 1.25)
#: Body, disc, posterior elements, fat and every background label.
TISSUE_MEAN = (0.0, 1.0)
#: Air (no protons: dark whatever the sequence).
AIR_MEAN = (0.0, 0.08)
#: The weakest lesion contrast, whatever the lesion's visibility: the lesion's signal over the
#: brighter of white and grey matter at least this (hyperintense), over the darker at most its
#: inverse (hypointense).
LESION_MIN = 1.15
#: The strongest: up to this times CSF's signal (hyperintense), down to CSF's divided by it
#: (hypointense).
LESION_BEYOND_CSF = 1.3
#: Texture amplitude (relative to the mean) of the cord's tissues (white and grey matter, CSF).
CORD_SPREAD = (0.0, 0.08)
#: Texture amplitude of every other tissue and background label.
TISSUE_SPREAD = (0.0, 0.25)
#: Texture amplitude inside lesions, relative to the lesion's contrast over the cord (below 1,
#: so the interior stays on the lesion's side of the cord).
LESION_HETEROGENEITY = (0.0, 0.5)
#: Soft lesion edge: the contrast fades in over this fraction of the lesion's radius.
LESION_EDGE = (0.05, 0.5)
#: Contrast curve exponent (log-uniform).
GAMMA = (0.6, 1.6)
#: The brightest tissue's stored signal (log-uniform): the gain follows from it.
PEAK_SIGNAL = (300.0, 3000.0)
#: Standard deviation of the five bias coefficients (default cohorts: 0.08).
BIAS_SD = (0.05, 0.3)
#: The cord's signal-to-noise ratio (log-uniform).
SNR = (6.0, 60.0)
#: In-plane Gaussian blur (sigma, mm).
BLUR_MM = (0.0, 1.0)
#: Slice profile: Gaussian cross-talk between neighbouring slices (sigma, in slices).
SLICE_PROFILE = (0.0, 0.5)
#: Gibbs ringing: the fraction of k-space cut off along one in-plane axis.
RINGING = (0.0, 0.5)
#: In-plane pixel size and slice thickness (mm) by acquisition plane.
RESOLUTION: dict[str, dict[str, tuple[float, float]]] = {
    "sagittal": {"inplane_mm": (0.6, 1.2), "thickness_mm": (2.0, 5.0)},
    "axial": {"inplane_mm": (0.5, 1.0), "thickness_mm": (2.5, 7.0)},
    "iso": {"inplane_mm": (0.7, 1.3), "thickness_mm": (0.7, 1.5)},
}

#: Wavelength ranges (mm) of the smooth random fields: cord tissue and background textures,
#: lesion interiors, background label regions.
_CORD_WAVES = (3.0, 20.0)
_TISSUE_WAVES = (5.0, 40.0)
_LESION_WAVES = (2.0, 8.0)
_LABEL_WAVES = (20.0, 80.0)
#: Every protocol stores its slices along the third voxel axis (PIR, LAS, ASR).
SLICE_AXIS = 2
#: The tissues with a mean and a spread besides the background labels (muscle is replaced).
CORD_TISSUES = ("csf", "wm", "gm")
OTHER_TISSUES = ("body", "disc", "posterior", "fat", "air")


def stream(seed: int, index: int, *key: int) -> np.random.Generator:
    """One randomisation stream of subject ``index``: independent of its own generator.

    Args:
        seed: The cohort's seed.
        index: The subject's number (1-based).
        key: Which stream (subject, sequence, scan).

    Returns:
        A generator seeded by ``(seed, index, RANDOMISE_KEY, *key)``.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, index, RANDOMISE_KEY, *key]))


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


@dataclass(frozen=True)
class Waves:
    """A smooth random field in [-1, 1]: the mean of a few plane cosines in anatomy mm."""

    vectors: np.ndarray  # (n, 3) angular wave vectors, rad/mm, float32
    phases: np.ndarray  # (n,) float32

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> Waves:
        """Waves of random directions, wavelengths (log-uniform) and phases.

        Args:
            rng: The stream.
            n: How many cosines.
            wavelength: Their wavelength range (mm).

        Returns:
            The field.
        """
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        low, high = wavelength
        lengths = np.exp(rng.uniform(math.log(low), math.log(high), size=n))
        vectors = direction * (2 * np.pi / lengths)[:, None]
        return cls(vectors.astype(np.float32), rng.uniform(0, 2 * np.pi, n).astype(np.float32))

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        total = np.zeros(np.shape(x), np.float32)
        for (kx, ky, kz), phase in zip(self.vectors, self.phases, strict=True):
            total += np.cos(kx * x + ky * y + kz * z + phase)
        return total / len(self.phases)

    def record(self) -> list[list[float]]:
        """Each cosine as ``[kx, ky, kz, phase]`` (rad/mm, rad)."""
        return [
            [round(float(v), 6) for v in (*k, p)]
            for k, p in zip(self.vectors, self.phases, strict=True)
        ]


@dataclass(frozen=True)
class SequenceLook:
    """The appearance of one sequence (every slab or chunk of it): its tissue table and grid.

    ``means`` holds every tissue's mean signal (background labels as ``label-1`` ...) and the
    ``lesion`` signal at full contrast; ``spreads`` their texture amplitudes relative to the mean.
    ``lesion_contrast`` is the full contrast over :attr:`lesion_reference`; ``lesion_factors``
    each lesion's: the full contrast scaled by the lesion's visibility on this sequence, never
    weaker than :data:`LESION_MIN`.
    """

    sequence: str
    means: dict[str, float]
    spreads: dict[str, float]
    lesion_contrast: float
    lesion_factors: tuple[float, ...]
    lesion_heterogeneity: float
    lesion_edge: float
    gamma: float
    peak_signal: float
    inplane_mm: float
    thickness_mm: float
    textures: dict[str, Waves]

    @property
    def lesion_reference(self) -> float:
        """The cord signal lesions are measured from: the brighter of white and grey matter
        where lesions are hyperintense, the darker where they are hypointense."""
        cord = (self.means["wm"], self.means["gm"])
        return max(cord) if LESION_SIGN[self.sequence] > 0 else min(cord)

    @property
    def gain(self) -> float:
        """The scanner gain that stores the brightest tissue at :attr:`peak_signal`."""
        return self.peak_signal / max(self.means.values()) ** self.gamma

    @classmethod
    def draw(
        cls, rng: np.random.Generator, sequence: str, lesions: list[Lesion], n_labels: int
    ) -> SequenceLook:
        """Draw a sequence's look.

        Args:
            rng: The sequence's stream.
            sequence: The sequence.
            lesions: The subject's lesions (their visibility on ``sequence``).
            n_labels: The subject's number of background labels.

        Returns:
            The look.
        """
        bright = LESION_SIGN[sequence] > 0
        cord = float(rng.uniform(*CORD_MEAN))
        csf_ratio = float(rng.uniform(*(CSF_RATIO_BRIGHT if bright else CSF_RATIO_DARK)))
        means = {"csf": cord * csf_ratio, "wm": cord, "gm": cord * float(rng.uniform(*GM_RATIO))}
        reference = max(cord, means["gm"]) if bright else min(cord, means["gm"])
        csf_over_reference = means["csf"] / reference
        for name in OTHER_TISSUES:
            means[name] = float(rng.uniform(*(AIR_MEAN if name == "air" else TISSUE_MEAN)))
        labels = [f"label-{k + 1}" for k in range(n_labels)]
        for name in labels:
            means[name] = float(rng.uniform(*TISSUE_MEAN))
        spreads = {
            name: float(rng.uniform(*(CORD_SPREAD if name in CORD_TISSUES else TISSUE_SPREAD)))
            for name in means
        }
        textures = {
            name: Waves.draw(rng, 3, _CORD_WAVES if name in CORD_TISSUES else _TISSUE_WAVES)
            for name in (*CORD_TISSUES, *OTHER_TISSUES, "background")
        }
        textures["lesion"] = Waves.draw(rng, 3, _LESION_WAVES)
        if bright:
            high = max(LESION_BEYOND_CSF * csf_over_reference, LESION_MIN)
            contrast = _log_uniform(rng, LESION_MIN, high)
            factors = [
                max(1 + (contrast - 1) * lesion.visibility[sequence], LESION_MIN)
                for lesion in lesions
            ]
        else:
            low = min(csf_over_reference / LESION_BEYOND_CSF, 1 / LESION_MIN)
            contrast = _log_uniform(rng, low, 1 / LESION_MIN)
            factors = [
                min(1 - (1 - contrast) * lesion.visibility[sequence], 1 / LESION_MIN)
                for lesion in lesions
            ]
        means["lesion"] = reference * contrast
        resolution = RESOLUTION[PLANES[sequence]]
        return cls(
            sequence=sequence,
            means=means,
            spreads=spreads,
            lesion_contrast=contrast,
            lesion_factors=tuple(float(f) for f in factors),
            lesion_heterogeneity=float(rng.uniform(*LESION_HETEROGENEITY)),
            lesion_edge=float(rng.uniform(*LESION_EDGE)),
            gamma=_log_uniform(rng, *GAMMA),
            peak_signal=_log_uniform(rng, *PEAK_SIGNAL),
            inplane_mm=float(rng.uniform(*resolution["inplane_mm"])),
            thickness_mm=float(rng.uniform(*resolution["thickness_mm"])),
            textures=textures,
        )


@dataclass(frozen=True)
class ScanLook:
    """The appearance of one scan (:class:`cordfuse.synth.acquire.Appearance`): its sequence's
    look, the subject's background labels, and this scan's bias, noise, blur, slice profile and
    ringing."""

    look: SequenceLook
    labels: tuple[Waves, ...]
    bias_sd: float
    bias: tuple[float, ...]
    snr: float
    blur_sigma_mm: float
    slice_profile_sigma: float
    ringing: float
    ringing_axis: int

    @property
    def noise(self) -> float:
        """The Rician sigma (before the gain): the cord's signal over :attr:`snr`."""
        return self.look.means["wm"] ** self.look.gamma / self.snr

    @classmethod
    def draw(
        cls, rng: np.random.Generator, look: SequenceLook, labels: tuple[Waves, ...]
    ) -> ScanLook:
        """Draw a scan's look.

        Args:
            rng: The scan's stream.
            look: Its sequence's look.
            labels: The subject's background labels.

        Returns:
            The look.
        """
        bias_sd = float(rng.uniform(*BIAS_SD))
        return cls(
            look=look,
            labels=labels,
            bias_sd=bias_sd,
            bias=tuple(float(c) for c in rng.normal(0.0, bias_sd, size=5)),
            snr=_log_uniform(rng, *SNR),
            blur_sigma_mm=float(rng.uniform(*BLUR_MM)),
            slice_profile_sigma=float(rng.uniform(*SLICE_PROFILE)),
            ringing=float(rng.uniform(*RINGING)),
            ringing_axis=int(rng.integers(0, 2)),
        )

    @property
    def scanner(self) -> dict:
        """The scan's ``gain``, ``gamma``, ``noise`` and ``bias``, as a default plan holds them."""
        return dict(
            gain=self.look.gain, gamma=self.look.gamma, noise=self.noise, bias=list(self.bias)
        )

    def compose(
        self, f: Fractions, x: np.ndarray, y: np.ndarray, z: np.ndarray, anatomy: Anatomy
    ) -> tuple[np.ndarray, np.ndarray]:
        """The signal of boxes with the structure fractions ``f`` centred on ``(x, y, z)``.

        Structures are layered as :func:`cordfuse.synth.acquire.acquire` layers them, with this
        look's means and textures, over the background labels.

        Args:
            f: The boxes' structure fractions.
            x: Their x centres (anatomy mm).
            y: Their y centres.
            z: Their z centres.
            anatomy: The anatomy (its lesions' shape, for the soft edges).

        Returns:
            The signal, and the union of the lesion fractions (the truth, unchanged).
        """
        look = self.look
        means, spreads, tex = look.means, look.spreads, look.textures

        def layer(value: np.ndarray, name: str, frac: np.ndarray) -> np.ndarray:
            where = np.flatnonzero(frac)
            if not where.size:
                return value
            signal = means[name] * (1 + spreads[name] * tex[name](x[where], y[where], z[where]))
            value[where] += frac[where] * (signal - value[where])
            return value

        # Background: each point takes the label whose smooth field is highest there.
        label = np.argmax(np.stack([waves(x, y, z) for waves in self.labels]), axis=0)
        names = [f"label-{k + 1}" for k in range(len(self.labels))]
        label_means = np.array([means[n] for n in names], np.float32)[label]
        label_spreads = np.array([spreads[n] for n in names], np.float32)[label]
        value = label_means * (1 + label_spreads * tex["background"](x, y, z))
        for name, frac in (
            ("fat", f.fat),
            ("air", f.airway),
            ("body", f.body),
            ("disc", f.disc),
            ("posterior", f.posterior),
            ("csf", f.canal),
            ("wm", f.cord),
            ("gm", f.gm),
        ):
            value = layer(value, name, frac)
        union = np.zeros_like(f.cord)
        reference = look.lesion_reference
        for i, frac in f.lesions:
            union = np.maximum(union, frac)
            where = np.flatnonzero(frac)
            if not where.size:
                continue
            lesion = anatomy.lesions[i]
            xs, ys, zs = x[where], y[where], z[where]
            radius = _lesion_radius(anatomy, lesion, xs, ys, zs)
            weight = frac[where] * np.clip(0.5 + (1.0 - radius) / look.lesion_edge, 0.0, 1.0)
            excess = (look.lesion_factors[i] - 1) * reference
            heterogeneous = 1 + look.lesion_heterogeneity * tex["lesion"](xs, ys, zs)
            signal = reference + excess * heterogeneous
            value[where] += weight * (signal - value[where])
        return value, union

    def finish(self, image: np.ndarray, affine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Contrast curve, bias, blur and slice profile, ringing, Rician noise and gain.

        Args:
            image: The noise-free signal on the scan's grid.
            affine: The scan's affine.
            rng: Draws the noise (the subject's per-scan generator, as in default scans).

        Returns:
            The stored int16 image.
        """
        spacing = voxel_sizes(affine)
        signal = np.clip(image, 0, None) ** self.look.gamma
        signal = signal * np.exp(log_bias_field(affine, image.shape, self.bias))
        sigma = [self.blur_sigma_mm / spacing[axis] for axis in range(3)]
        sigma[SLICE_AXIS] = self.slice_profile_sigma
        signal = ndimage.gaussian_filter(signal.astype(np.float32), sigma, mode="nearest")
        if self.ringing > 0:
            axis = self.ringing_axis  # one of the two in-plane axes (0, 1)
            spectrum = np.fft.fft(signal, axis=axis)
            frequencies = np.abs(np.fft.fftfreq(signal.shape[axis]))
            cut = frequencies > 0.5 * (1.0 - self.ringing)
            index: list[slice | np.ndarray] = [slice(None)] * 3
            index[axis] = cut
            spectrum[tuple(index)] = 0
            signal = np.fft.ifft(spectrum, axis=axis).real.astype(np.float32)
        noise = self.noise
        real = signal + rng.normal(0.0, noise, size=signal.shape).astype(np.float32)
        imag = rng.normal(0.0, noise, size=signal.shape).astype(np.float32)
        magnitude = np.sqrt(real * real + imag * imag) * self.look.gain
        return np.clip(np.rint(magnitude), 0, 32767).astype(np.int16)

    def record(self) -> dict:
        """Every draw of this scan (its sequence's included) as plain JSON."""
        look = self.look
        return {
            "sequence": look.sequence,
            "inplane_mm": round(look.inplane_mm, 6),
            "thickness_mm": round(look.thickness_mm, 6),
            "means": {k: round(v, 6) for k, v in look.means.items()},
            "spreads": {k: round(v, 6) for k, v in look.spreads.items()},
            "lesion_contrast": round(look.lesion_contrast, 6),
            "lesion_factors": [round(v, 6) for v in look.lesion_factors],
            "lesion_heterogeneity": round(look.lesion_heterogeneity, 6),
            "lesion_edge": round(look.lesion_edge, 6),
            "gamma": round(look.gamma, 6),
            "peak_signal": round(look.peak_signal, 6),
            "gain": round(look.gain, 6),
            "bias_sd": round(self.bias_sd, 6),
            "bias": [round(c, 6) for c in self.bias],
            "snr": round(self.snr, 6),
            "noise": round(self.noise, 6),
            "blur_sigma_mm": round(self.blur_sigma_mm, 6),
            "slice_profile_sigma": round(self.slice_profile_sigma, 6),
            "ringing": round(self.ringing, 6),
            "ringing_axis": self.ringing_axis,
            "textures": {name: waves.record() for name, waves in look.textures.items()},
        }


def _lesion_radius(anatomy: Anatomy, lesion: Lesion, x, y, z) -> np.ndarray:
    """The normalised ellipsoidal radius of points in the lesion's frame (1 on its surface)."""
    t = anatomy.tables
    idx = anatomy.lookup(z)
    u0, v0, z0 = lesion.center
    rx, ry, rz = lesion.radii
    du = (x - t["cx"][idx] - u0) / rx
    dv = (y - t["cy"][idx] - v0) / ry
    dz = (z - z0) / rz
    return np.sqrt(du * du + dv * dv + dz * dz)


def regrid(
    affine: np.ndarray, shape: tuple[int, int, int], inplane: float, thickness: float
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The same field of view, centre and orientation at another resolution.

    The slice axis (the third) keeps whole slices inside the old extent, so chunks that did not
    overlap still do not.

    Args:
        affine: The scan's affine.
        shape: Its shape.
        inplane: The new in-plane pixel size (mm).
        thickness: The new slice thickness (mm).

    Returns:
        The new affine and shape.

    Example:
        >>> affine, shape = regrid(np.diag([1.0, 1.0, 3.0, 1.0]), (10, 10, 5), 0.5, 4.0)
        >>> shape, affine.diagonal().tolist()
        ((20, 20, 3), [0.5, 0.5, 4.0, 1.0])
    """
    spacing = voxel_sizes(affine)
    extent = np.asarray(shape) * spacing
    new_spacing = np.array([inplane, inplane, thickness])
    new_shape = (
        max(1, round(extent[0] / inplane)),
        max(1, round(extent[1] / inplane)),
        max(1, math.floor(extent[2] / thickness + 1e-6)),
    )
    directions = affine[:3, :3] / spacing
    linear = directions * new_spacing
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]
    new = np.eye(4)
    new[:3, :3] = linear
    new[:3, 3] = centre - linear @ ((np.asarray(new_shape) - 1) / 2)
    return new, new_shape


@dataclass
class Randomisation:
    """Every randomised draw of one subject; :func:`cordfuse.synth.cohort.generate_subject`
    applies it. Build it with :meth:`draw`."""

    seed: int
    index: int
    cord_scale: float
    canal_scale: float
    labels: tuple[Waves, ...]
    scans: dict[str, ScanLook] = field(default_factory=dict)

    @classmethod
    def draw(cls, seed: int, index: int) -> Randomisation:
        """The subject's own draws: cord and canal size, background labels.

        Args:
            seed: The cohort's seed.
            index: The subject's number (1-based).

        Returns:
            The randomisation, before its scans are planned (:meth:`apply`).
        """
        rng = stream(seed, index, 0)
        cord_scale = float(rng.uniform(*CORD_SCALE))
        canal_scale = float(rng.uniform(*CANAL_SCALE))
        n_labels = int(rng.integers(BACKGROUND_LABELS[0], BACKGROUND_LABELS[1] + 1))
        labels = tuple(Waves.draw(rng, 2, _LABEL_WAVES) for _ in range(n_labels))
        return cls(seed, index, cord_scale, canal_scale, labels)

    @property
    def anatomy_scales(self) -> dict[str, float]:
        """The keywords of :func:`cordfuse.synth.anatomy.draw_anatomy` that size cord and canal."""
        return {"cord_scale": self.cord_scale, "canal_scale": self.canal_scale}

    def apply(self, anatomy: Anatomy, plans: dict[str, ScanPlan]) -> dict[str, ScanPlan]:
        """Draw every scan's look and move each scan to its sequence's random grid.

        Each sequence and each scan draws from its own stream, so which scans a subject has
        does not change the others' draws.

        Args:
            anatomy: The subject's (scaled) anatomy.
            plans: Its default plans, by stem.

        Returns:
            The plans on their new grids, with the scanner of their look.
        """
        looks = {
            seq: SequenceLook.draw(
                stream(self.seed, self.index, 1, i), seq, anatomy.lesions, len(self.labels)
            )
            for i, seq in enumerate(SEQUENCES)
            if any(plan.sequence == seq for plan in plans.values())
        }
        out = {}
        for stem, plan in plans.items():
            look = looks[plan.sequence]
            key = (2, SEQUENCES.index(plan.sequence), plan.chunk or 0)
            scan = ScanLook.draw(stream(self.seed, self.index, *key), look, self.labels)
            self.scans[stem] = scan
            affine, shape = regrid(plan.affine, plan.shape, look.inplane_mm, look.thickness_mm)
            out[stem] = dataclasses.replace(plan, affine=affine, shape=shape, scanner=scan.scanner)
        return out

    def record(self) -> dict:
        """Every draw as plain JSON (the truth's ``randomised``).

        Returns:
            The streams, the subject's draws and each scan's.
        """
        return {
            "streams": f"numpy SeedSequence([{self.seed}, {self.index}, {RANDOMISE_KEY}, ...])",
            "cord_scale": round(self.cord_scale, 6),
            "canal_scale": round(self.canal_scale, 6),
            "background_labels": [waves.record() for waves in self.labels],
            "scans": {stem: scan.record() for stem, scan in self.scans.items()},
        }
