"""Statistics of the paper's tables: Wilcoxon signed-rank against a reference method (per image),
significance marks (``*`` p < 0.1, ``**`` p < 0.05, as Table 2), mean +- std across seeds, and
mean/median summaries that say how many images had an undefined value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Comparison:
    """A paired test of one method against the reference.

    Attributes:
        statistic: The test statistic (Wilcoxon's W).
        p_value: The two-sided p-value (1.0 when the two methods never differ).
        n: The number of pairs tested (those with both values defined).
    """

    statistic: float
    p_value: float
    n: int

    @property
    def mark(self) -> str:
        """The significance mark of :attr:`p_value` (see :func:`significance_mark`)."""
        return significance_mark(self.p_value)


def significance_mark(p_value: float) -> str:
    """``**`` when p < 0.05, ``*`` when p < 0.1 (Table 2), else empty.

    Args:
        p_value: A p-value (NaN gives no mark).

    Returns:
        The mark.

    Example:
        >>> significance_mark(0.01), significance_mark(0.07), significance_mark(0.2)
        ('**', '*', '')
    """
    if math.isnan(p_value):
        return ""
    return "**" if p_value < 0.05 else "*" if p_value < 0.1 else ""


def wilcoxon_vs_reference(values: Sequence[float], reference: Sequence[float]) -> Comparison:
    """Two-sided Wilcoxon signed-rank test of paired per-image values (NaN pairs dropped).

    Args:
        values: One value per image for the method tested.
        reference: The reference method's value on the same images, in the same order.

    Returns:
        The statistic, p-value and number of pairs.

    Raises:
        ValueError: the two sequences differ in length.

    Example:
        >>> wilcoxon_vs_reference([0.5, float("nan")], [0.5, 0.7])
        Comparison(statistic=0.0, p_value=1.0, n=1)
    """
    a, b = np.asarray(values, float), np.asarray(reference, float)
    if a.shape != b.shape:
        raise ValueError("the two methods must be evaluated on the same images")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) == 0 or np.all(a == b):
        return Comparison(0.0, 1.0, int(len(a)))
    result = stats.wilcoxon(a, b)
    return Comparison(float(result.statistic), float(result.pvalue), int(len(a)))


@dataclass(frozen=True)
class Summary:
    """Mean, median and sample std of the defined values, and how many were (un)defined."""

    mean: float
    median: float
    std: float
    n: int
    n_undefined: int


def summarise(values: Sequence[float]) -> Summary:
    """Mean, median and std over the defined values; counts undefined (NaN) ones.

    Args:
        values: One value per image; NaN where the metric is undefined.

    Returns:
        The summary (NaN statistics when no value is defined).

    Example:
        >>> summarise([1.0, 3.0, float("nan")])
        Summary(mean=2.0, median=2.0, std=1.4142135623730951, n=2, n_undefined=1)
    """
    array = np.asarray(values, float)
    defined = array[~np.isnan(array)]
    if len(defined) == 0:
        return Summary(math.nan, math.nan, math.nan, 0, len(array))
    return Summary(
        float(defined.mean()),
        float(np.median(defined)),
        float(defined.std(ddof=1)) if len(defined) > 1 else 0.0,
        len(defined),
        int(np.isnan(array).sum()),
    )


def mean_std(per_seed: Sequence[float], digits: int = 3) -> str:
    """``0.603 ± 0.025`` over seeds (sample std, as the paper's Table 2).

    Args:
        per_seed: One value per training seed.
        digits: Decimals shown.

    Returns:
        The text.

    Example:
        >>> mean_std([0.6, 0.62, 0.64])
        '0.620 ± 0.020'
    """
    values = np.asarray(per_seed, float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.{digits}f} ± {std:.{digits}f}"


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar test of paired binary outcomes from the discordant counts.

    Under the null hypothesis each discordant pair goes either way with probability 1/2, so the
    p-value is the two-sided binomial test of ``only_a`` successes in ``only_a + only_b``
    trials; 1.0 when there is no discordant pair.

    Args:
        only_a: Pairs where only the first method succeeds (e.g. a lesion only it detects).
        only_b: Pairs where only the second succeeds.

    Returns:
        The p-value.

    Raises:
        ValueError: a negative count.

    Example:
        >>> mcnemar_exact(0, 0), mcnemar_exact(3, 3), mcnemar_exact(6, 0)
        (1.0, 1.0, 0.03125)
    """
    if only_a < 0 or only_b < 0:
        raise ValueError("counts must be non-negative")
    n = only_a + only_b
    if n == 0:
        return 1.0
    return float(stats.binomtest(only_a, n, 0.5).pvalue)
