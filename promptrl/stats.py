"""Statistics over seeds for `promptrl report`: a t-interval of a mean, and a paired comparison.

Studies here have few seeds (3-5), so the intervals are Student-t (a bootstrap over 3 values
cannot reach 95% coverage: it only ever resamples the three numbers seen). The paired
comparison matches two methods' runs by seed (same few-shot split, same sampling seed), so the
split-to-split variation, which is most of the variance, cancels.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as sps


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its two-sided Student-t interval; the bounds are nan with fewer than two values."""
    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass
class PairedComparison:
    """a - b over the pairs (seeds) both have: the mean difference with its t-interval, the
    paired t-test, the Wilcoxon signed-rank test and the sign test (all two-sided)."""

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    wins: int  # pairs where a > b
    ties: int
    losses: int
    t_p: float
    wilcoxon_p: float
    sign_p: float


def paired_comparison(a: list[float], b: list[float], level: float = 0.95) -> PairedComparison:
    if len(a) != len(b):
        raise ValueError(f"paired_comparison: {len(a)} values against {len(b)}; pairs need one of each")
    diffs = [x - y for x, y in zip(a, b)]
    mean, lo, hi = t_interval(diffs, level)
    wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    nonzero = wins + losses
    t_p = wilcoxon_p = math.nan
    # Every pair differing by the same amount (zero or not, up to float rounding: 0.8 - 0.7 and
    # 0.3 - 0.2 differ in the 17th digit) leaves the t statistic without a spread to divide by:
    # 0/0 or d/0, and no p-value. It stays nan (the report prints "n/a"), not 0: three seeds each
    # +0.01 are not proof of anything (the sign test says p = 0.25); the interval is a point.
    if len(diffs) >= 2 and statistics.pstdev(diffs) > 1e-9 * max(1.0, max(abs(d) for d in diffs)):
        t_p = float(sps.ttest_rel(a, b).pvalue)
    if nonzero:
        # zero differences are split between the signs (Pratt would drop them from the ranks but
        # keep them in n); with n <= 50 and no ties scipy computes the exact distribution
        wilcoxon_p = float(sps.wilcoxon(diffs, zero_method="zsplit").pvalue) if len(diffs) >= 2 else math.nan
    sign_p = float(sps.binomtest(wins, nonzero, 0.5).pvalue) if nonzero else 1.0
    return PairedComparison(len(diffs), mean, lo, hi, wins, len(diffs) - nonzero, losses, t_p, wilcoxon_p, sign_p)
