"""Feature analysis of section 2.4 (``cordfuse analyze-features MODEL PREPARED``).

For a trained multi-encoder model (Mean Imputation), every prepared subject is cut into
non-overlapping S-I windows of the training patch; each available sequence goes through its own
encoder, and the element-wise differences between every other sequence's bottleneck features and
T2Sag's are pooled (a random subsample of at most ``max_values``, reproducible by ``seed``).

The pooled differences are fitted by maximum likelihood with the paper's two-part mixture::

    p(d) = w * Logistic(d; 0, s) + (1 - w) * Normal(d; 0, sigma)

whose parameters ``(w, s, sigma)`` are exactly those of
:class:`cordfuse.nn.networks.FeatureNoise` (``weight``, ``logistic_scale``, ``normal_sigma``).
Encoder outputs pass a LeakyReLU, so many differences are (almost) exactly zero: the logistic
part models that spike. Its scale is bounded below by ``MIN_SCALE`` because, with exact zeros in
the sample, the likelihood grows without bound as the scale shrinks.

Outputs: ``noise_params.json`` (the three parameters only: ``train --noise-params`` and the
study read it), ``fit.json`` (the fit's details) and ``histogram.png`` (data and fitted density).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, special

from cordfuse.errors import CordfuseError
from cordfuse.nn.networks import FeatureNoise, sequence_channels

MIN_SCALE = 1e-4


def logistic_logpdf(x: np.ndarray, scale: float) -> np.ndarray:
    """Log density of the zero-centred logistic distribution (stable for large ``|x|``).

    Args:
        x: Values.
        scale: The distribution's scale ``s``.

    Returns:
        ``log Logistic(x; 0, s)``, elementwise.

    Example:
        >>> round(float(np.exp(logistic_logpdf(np.zeros(1), 1.0))[0]), 4)   # 1 / (4 s)
        0.25
    """
    z = np.abs(x) / scale
    return -z - np.log(scale) - 2.0 * np.log1p(np.exp(-z))


def normal_logpdf(x: np.ndarray, sigma: float) -> np.ndarray:
    """Log density of the zero-centred normal distribution.

    Args:
        x: Values.
        sigma: The standard deviation.

    Returns:
        ``log Normal(x; 0, sigma)``, elementwise.

    Example:
        >>> round(float(normal_logpdf(np.zeros(1), 1.0)[0]), 4)   # -log(2 pi) / 2
        -0.9189
    """
    return -0.5 * (x / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)


def mixture_logpdf(x: np.ndarray, noise: FeatureNoise) -> np.ndarray:
    """Log density of the paper's two-part mixture with the parameters of ``noise``.

    Args:
        x: Values.
        noise: ``weight`` of the logistic part, ``logistic_scale`` and ``normal_sigma``.

    Returns:
        ``log(w Logistic(x; 0, s) + (1 - w) Normal(x; 0, sigma))``, elementwise.
    """
    w = np.clip(noise.weight, 1e-12, 1 - 1e-12)
    return np.logaddexp(
        np.log(w) + logistic_logpdf(x, noise.logistic_scale),
        np.log1p(-w) + normal_logpdf(x, noise.normal_sigma),
    )


@dataclass(frozen=True)
class MixtureFit:
    """The fitted mixture.

    Attributes:
        noise: The parameters, as :class:`cordfuse.nn.networks.FeatureNoise`.
        log_likelihood: The mean log-likelihood per value.
        n_values: The number of (finite) values fitted.
        converged: Whether the best optimisation converged.
    """

    noise: FeatureNoise
    log_likelihood: float  # mean per value
    n_values: int
    converged: bool


def fit_mixture(values: np.ndarray) -> MixtureFit:
    """Maximum-likelihood ``(weight, logistic_scale, normal_sigma)`` of the zero-centred mixture.

    L-BFGS-B on ``(logit w, log s, log sigma)`` from a few starting points; the best optimum wins.

    Args:
        values: Feature differences (any shape; non-finite ones are left out).

    Returns:
        The fit.

    Raises:
        CordfuseError: fewer than 10 finite values.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = np.where(rng.random(5000) < 0.3, rng.logistic(0, 0.01, 5000),
        ...              rng.normal(0, 0.5, 5000))
        >>> fit = fit_mixture(x)
        >>> round(fit.noise.weight, 1), round(fit.noise.normal_sigma, 1), fit.converged
        (0.3, 0.5, True)
    """
    x = np.asarray(values, np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 10:
        raise CordfuseError("too few feature differences to fit the mixture (need at least 10)")
    spread = float(np.std(x)) or 1.0
    small = float(np.quantile(np.abs(x), 0.1)) or spread * 1e-3

    def negative(theta):
        w, s, sigma = special.expit(theta[0]), np.exp(theta[1]), np.exp(theta[2])
        log_a = np.log(w) + logistic_logpdf(x, s)
        log_b = np.log1p(-w) + normal_logpdf(x, sigma)
        return -float(np.mean(np.logaddexp(log_a, log_b)))

    bounds = [
        (-12.0, 12.0),
        (np.log(MIN_SCALE), np.log(10 * spread + MIN_SCALE)),
        (np.log(MIN_SCALE), np.log(10 * spread + MIN_SCALE)),
    ]
    results = []
    for w0 in (0.1, 0.25, 0.5, 0.75):
        for s0 in (max(small, MIN_SCALE), max(spread / 4, MIN_SCALE)):
            start = np.array([special.logit(w0), np.log(s0), np.log(spread)])
            start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
            results.append(optimize.minimize(negative, start, method="L-BFGS-B", bounds=bounds))
    best = min(results, key=lambda result: result.fun)  # the first of equals, as before
    w, s, sigma = special.expit(best.x[0]), np.exp(best.x[1]), np.exp(best.x[2])
    return MixtureFit(
        FeatureNoise(float(w), float(s), float(sigma)),
        -float(best.fun),
        int(x.size),
        bool(best.success),
    )


def feature_differences(
    model,
    prepared_paths: list[Path],
    *,
    device,
    max_values: int = 2_000_000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[np.ndarray, dict]:
    """Pooled ``features(other) - features(T2Sag)`` of a multi-encoder model (see module doc).

    Args:
        model: A loaded model (:func:`cordfuse.inference.load_model`) with several encoders.
        prepared_paths: Prepared subject files.
        device: Where the encoders run.
        max_values: At most this many values are kept, shared equally between the subjects.
        seed: Seeds the subsample.
        progress: Show a progress bar.

    Returns:
        ``(values, counts)``: the subsample, and the number of differences computed per
        sequence (before subsampling).

    Raises:
        CordfuseError: a single-encoder model, or no subject with T2Sag and another sequence.
    """
    import torch
    from tqdm import tqdm

    from cordfuse.nn.sliding import window_starts
    from cordfuse.preprocess.pipeline import PreparedSubject
    from cordfuse.training.data import normalise

    net = model.model
    sequences = model.sequences
    if len(sequences) < 2 or model.config.model not in ("specific", "mean-imputation"):
        raise CordfuseError(
            f"{model.path}: a {model.config.model} model has no per-sequence encoders whose "
            "features differ (use a Mean Imputation model)"
        )
    patch_z = model.net.patch_size[2]
    rng = np.random.default_rng(seed)
    chunks: list[np.ndarray] = []
    counts = {seq: 0 for seq in sequences[1:]}
    per_subject = max(1, max_values // max(1, len(prepared_paths)))
    k, coverage = len(sequences), net.config.coverage_input
    net.eval()
    with torch.no_grad():
        for path in tqdm(
            prepared_paths, desc="features", unit="subject", disable=None if progress else True
        ):
            prepared = PreparedSubject.load(path)
            images, available = normalise(prepared, sequences, coverage=coverage)
            if available.sum() < 2:
                continue
            nz = images.shape[-1]
            padded = np.zeros((*images.shape[:-1], max(nz, patch_z)), np.float32)
            padded[..., :nz] = images
            diffs = []
            for start in window_starts(padded.shape[-1], patch_z, 0.0):
                window = torch.as_tensor(padded[None, ..., start : start + patch_z], device=device)
                reference = net.encoders[sequences[0]](sequence_channels(window, 0, k, coverage))
                reference = reference[-1]
                for i, seq in enumerate(sequences[1:], start=1):
                    if not available[i]:
                        continue
                    other = net.encoders[seq](sequence_channels(window, i, k, coverage))[-1]
                    diffs.append((other - reference).float().cpu().numpy().ravel())
                    counts[seq] += diffs[-1].size
            values = np.concatenate(diffs)
            if values.size > per_subject:
                values = rng.choice(values, per_subject, replace=False)
            chunks.append(values)
    if not chunks:
        raise CordfuseError("no prepared subject has T2Sag and another sequence to compare")
    return np.concatenate(chunks), counts


def histogram_png(values: np.ndarray, fit: MixtureFit, title: str) -> bytes:
    """Histogram of the differences with the fitted density and its two parts, linear and log.

    Args:
        values: The feature differences.
        fit: Their fitted mixture.
        title: The figure's title (the model).

    Returns:
        The PNG file's bytes.
    """
    from cordfuse.figures import png_bytes, pyplot

    plt = pyplot()
    noise = fit.noise
    limit = float(np.quantile(np.abs(values), 0.995)) or 1.0
    grid = np.linspace(-limit, limit, 801)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, log in zip(axes, (False, True), strict=True):
        ax.hist(
            values[np.abs(values) <= limit],
            bins=200,
            density=True,
            color="0.7",
            label="feature differences",
        )
        ax.plot(
            grid,
            np.exp(mixture_logpdf(grid, noise)),
            color="tab:red",
            lw=1.2,
            label="fitted mixture",
        )
        ax.plot(
            grid,
            noise.weight * np.exp(logistic_logpdf(grid, noise.logistic_scale)),
            color="tab:blue",
            lw=0.8,
            ls="--",
            label=f"logistic(0, {noise.logistic_scale:.3g})",
        )
        ax.plot(
            grid,
            (1 - noise.weight) * np.exp(normal_logpdf(grid, noise.normal_sigma)),
            color="tab:green",
            lw=0.8,
            ls="--",
            label=f"normal(0, {noise.normal_sigma:.3g})",
        )
        if log:
            ax.set_yscale("log")
            peak = float(np.exp(mixture_logpdf(np.zeros(1), noise))[0])
            ax.set_ylim(peak * 1e-5, peak * 2)
        ax.set_xlabel("feature(other sequence) - feature(T2Sag)")
        ax.set_ylabel("density" + (" (log)" if log else ""))
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: weight {noise.weight:.3f}", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def analyze_features(
    model_path: str | Path,
    prepared: str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    max_values: int = 2_000_000,
    seed: int = 0,
    progress: bool = True,
) -> MixtureFit:
    """Extract, fit, and write ``noise_params.json``, ``fit.json`` and ``histogram.png``.

    Args:
        model_path: A Mean Imputation checkpoint or training folder.
        prepared: A ``cordfuse prepare`` output folder.
        out: The output folder (created).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        max_values: At most this many differences are fitted.
        seed: Seeds the subsample.
        progress: Show a progress bar.

    Returns:
        The fit.

    Raises:
        CordfuseError: an unreadable model or prepared folder, a single-encoder model, or too
            few differences.
    """
    from cordfuse.inference import load_model
    from cordfuse.io import atomic_write_bytes, atomic_write_text
    from cordfuse.nn.device import choose_device
    from cordfuse.preprocess.batch import load_prepared_dataset

    dev = choose_device(device)
    model = load_model(model_path, dev)
    _, paths = load_prepared_dataset(prepared)
    values, counts = feature_differences(
        model, paths, device=dev, max_values=max_values, seed=seed, progress=progress
    )
    fit = fit_mixture(values)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "noise_params.json", json.dumps(asdict(fit.noise), indent=2) + "\n")
    details = {
        "model": str(model_path),
        "prepared": str(prepared),
        **asdict(fit.noise),
        "mean_log_likelihood": fit.log_likelihood,
        "n_values": fit.n_values,
        "converged": fit.converged,
        "values_per_sequence": counts,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "fraction_exact_zero": float(np.mean(values == 0)),
    }
    atomic_write_text(out / "fit.json", json.dumps(details, indent=2) + "\n")
    title = "/".join(Path(model_path).resolve().parts[-2:])
    atomic_write_bytes(out / "histogram.png", histogram_png(values, fit, title))
    return fit
