"""Benchmark design from intervals: power analysis and cost-accuracy Pareto fronts.

Pure functions (numbers in, numbers out) behind the book's pages "How many test images do you
need?" and "Cost against accuracy".

**Power analysis.** A score's bootstrap interval gives its standard error,
``SE = (high - low) / (2 z)`` with ``z = Φ⁻¹((1 + level) / 2)`` (1.96 for 95 %). Two models
compared on independent test sets differ with ``SE_diff = sqrt(SE_a² + SE_b²)``; on the *same*
test images (the benchmark's case) their errors are correlated and the paired difference has a
smaller SE, which a paired bootstrap of stored predictions measures
(``biobench.stats.paired_bootstrap``). A two-sided test at level α detects a true difference
δ with probability ``power`` when ``δ ≥ (z_{1-α/2} + z_{power}) · SE_diff``: that δ is the
*minimum detectable difference* (MDD). Standard errors of a mean-like score shrink as
``1/sqrt(n)`` in the number of test examples, so detecting δ needs
``n · (MDD / δ)²`` test examples.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import norm

ALPHA = 0.05
POWER = 0.80


def z_quantile(p: float) -> float:
    """Φ⁻¹(p), the standard normal quantile."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"z_quantile: p must be in (0, 1), got {p}")
    return float(norm.ppf(p))


def detection_z(alpha: float = ALPHA, power: float = POWER) -> float:
    """``z_{1-α/2} + z_{power}``: how many standard errors of the difference a true difference
    must span to be found with probability ``power`` by a two-sided test at level ``alpha``
    (2.80 for α = 0.05 and 80 % power)."""
    return z_quantile(1 - alpha / 2) + z_quantile(power)


def se_from_interval(low, high, level: float = 0.95):
    """The standard error implied by a (roughly normal) interval of coverage ``level``."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    if np.any(high < low):
        raise ValueError("se_from_interval: an interval has high < low")
    return (high - low) / (2 * z_quantile((1 + level) / 2))


def se_of_difference(se_a, se_b, correlation=0.0):
    """SE of score(a) - score(b) for two scores with standard errors ``se_a``, ``se_b`` and
    correlation ``correlation`` (0: independent test sets)."""
    se_a, se_b = np.asarray(se_a, dtype=float), np.asarray(se_b, dtype=float)
    var = se_a**2 + se_b**2 - 2 * np.asarray(correlation, dtype=float) * se_a * se_b
    return np.sqrt(np.maximum(var, 0.0))


def minimum_detectable_difference(se_diff, alpha: float = ALPHA, power: float = POWER):
    """The smallest true difference a two-sided test at ``alpha`` finds with ``power``."""
    return detection_z(alpha, power) * np.asarray(se_diff, dtype=float)


def power_of_comparison(delta, se_diff, alpha: float = ALPHA):
    """Probability that a two-sided z-test at ``alpha`` rejects "no difference" when the true
    difference is ``delta`` (both tails counted)."""
    z = z_quantile(1 - alpha / 2)
    shift = np.asarray(delta, dtype=float) / np.asarray(se_diff, dtype=float)
    return norm.sf(z - shift) + norm.cdf(-z - shift)


def test_size_factor(mdd, delta):
    """How many times the current test set it takes to detect ``delta`` instead of ``mdd``
    (SE ∝ 1/sqrt(n), so the factor is ``(mdd / delta)²``)."""
    delta = np.asarray(delta, dtype=float)
    if np.any(delta <= 0):
        raise ValueError("test_size_factor: delta must be positive")
    return (np.asarray(mdd, dtype=float) / delta) ** 2


def required_test_size(n_test: int, mdd: float, delta: float) -> int:
    """Test examples needed to detect ``delta`` when ``n_test`` examples detect ``mdd``."""
    if n_test <= 0:
        raise ValueError(f"required_test_size: n_test must be positive, got {n_test}")
    return int(math.ceil(n_test * float(test_size_factor(mdd, delta))))


def pairing_ratio(se_paired_diff, se_a, se_b):
    """SE of the paired difference over the SE the same difference would have on independent
    test sets: below 1 when the two models err on the same images."""
    return np.asarray(se_paired_diff, dtype=float) / se_of_difference(se_a, se_b)


# ---- cost against accuracy --------------------------------------------------------------------
def pareto_front(cost: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Boolean mask of the points no other point dominates, where lower cost and higher score
    are better. A point is dominated when another costs no more and scores no less and is
    strictly better on one of the two; exact duplicates therefore both stay on the front.
    Points with a missing (NaN) cost or score are never on the front."""
    cost, score = np.asarray(cost, dtype=float), np.asarray(score, dtype=float)
    if cost.shape != score.shape or cost.ndim != 1:
        raise ValueError("pareto_front: cost and score must be 1-D arrays of one length")
    valid = ~(np.isnan(cost) | np.isnan(score))
    on_front = np.zeros(cost.shape, dtype=bool)
    idx = np.flatnonzero(valid)
    # sweep by cost (ties: best score first); a point is on the front when its score beats
    # every cheaper point's, or equals the best so far at the very same cost
    order = idx[np.lexsort((-score[idx], cost[idx]))]
    best = -np.inf
    best_cost = np.nan
    for i in order:
        if score[i] > best:
            on_front[i] = True
            best, best_cost = score[i], cost[i]
        elif score[i] == best and cost[i] == best_cost:
            on_front[i] = True  # an exact duplicate of a front point
    return on_front
