"""biobench.power: the power analysis against hand-computed values and a brute-force simulation,
the Pareto front against an all-pairs brute force."""

import itertools
import math

import numpy as np
import pytest

from biobench import power


def test_detection_z_is_the_textbook_2_80():
    # z_0.975 = 1.959964, z_0.80 = 0.841621 (standard normal tables)
    assert power.detection_z(0.05, 0.80) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    # one-sided power 50 %: only the critical value remains
    assert power.detection_z(0.05, 0.50) == pytest.approx(1.959964, abs=1e-6)


def test_se_from_interval_inverts_a_normal_interval():
    # a 95 % interval of half-width 1.959964 * 0.02 around 0.7
    half = 1.959964 * 0.02
    assert power.se_from_interval(0.7 - half, 0.7 + half) == pytest.approx(0.02, rel=1e-6)
    # a 90 % interval uses z = 1.644854
    assert power.se_from_interval(0.0, 2 * 1.644854, level=0.90) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="high < low"):
        power.se_from_interval(0.6, 0.5)


def test_se_of_difference_by_hand():
    assert power.se_of_difference(0.03, 0.04) == pytest.approx(0.05)  # 3-4-5
    # correlation 0.5: 0.0009 + 0.0016 - 2 * 0.5 * 0.0012 = 0.0013
    assert power.se_of_difference(0.03, 0.04, 0.5) == pytest.approx(math.sqrt(0.0013))
    assert power.se_of_difference(0.03, 0.03, 1.0) == pytest.approx(0.0)


def test_mdd_and_test_size_by_hand():
    se_diff = 0.01
    mdd = power.minimum_detectable_difference(se_diff)
    assert mdd == pytest.approx(0.028016, abs=1e-5)
    # detecting 1 point needs (2.8016 / 1)^2 = 7.849 times the test set
    assert power.test_size_factor(mdd, 0.01) == pytest.approx(7.8489, abs=1e-3)
    assert power.required_test_size(1000, mdd, 0.01) == 7849
    assert power.required_test_size(1000, mdd, 0.02) == math.ceil(1000 * 7.8489 / 4)
    with pytest.raises(ValueError):
        power.test_size_factor(mdd, 0.0)


def test_power_of_comparison_at_the_mdd_is_the_requested_power():
    se = 0.013
    assert power.power_of_comparison(power.minimum_detectable_difference(se), se) == \
        pytest.approx(0.80, abs=1e-3)  # the far tail adds about 1e-6
    assert power.power_of_comparison(0.0, se) == pytest.approx(0.05)


def _simulated_rejection_rate(n, p_a, p_b, n_sims, rng):
    """Brute force: two models scored on the same n test images with independent errors,
    a two-sided z-test on the accuracy difference using the SE each run's own data implies."""
    a = rng.random((n_sims, n)) < p_a
    b = rng.random((n_sims, n)) < p_b
    acc_a, acc_b = a.mean(1), b.mean(1)
    se = np.sqrt(acc_a * (1 - acc_a) / n + acc_b * (1 - acc_b) / n)
    return np.mean(np.abs(acc_b - acc_a) / se > 1.959964)


def test_mdd_and_required_size_match_a_simulation():
    rng = np.random.default_rng(0)
    n = 400
    # accuracies 0.5 - d/2 and 0.5 + d/2, so both models' per-image variance is the same
    # 0.25 - d²/4; the MDD and that variance depend on each other: a fixed point
    mdd = 0.1
    for _ in range(20):
        se_one = math.sqrt((0.25 - mdd**2 / 4) / n)
        mdd = float(power.minimum_detectable_difference(power.se_of_difference(se_one, se_one)))
    rate = _simulated_rejection_rate(n, 0.5 - mdd / 2, 0.5 + mdd / 2, 4000, rng)
    assert rate == pytest.approx(0.80, abs=0.03)  # 3 binomial SEs of 4000 draws: 0.019
    # the size the 1/sqrt(n) rule asks for to detect 5 points also has 80 % power there
    n_needed = power.required_test_size(n, mdd, 0.05)
    assert 3 * n < n_needed < 5 * n  # (0.099 / 0.05)² ≈ 3.9: a real extrapolation
    rate_needed = _simulated_rejection_rate(n_needed, 0.475, 0.525, 4000, rng)
    assert rate_needed == pytest.approx(0.80, abs=0.03)
    # and half as many images are clearly not enough
    assert _simulated_rejection_rate(n_needed // 2, 0.475, 0.525, 4000, rng) < 0.65


def test_pairing_ratio():
    assert power.pairing_ratio(0.05, 0.03, 0.04) == pytest.approx(1.0)
    assert power.pairing_ratio(0.025, 0.03, 0.04) == pytest.approx(0.5)


def _brute_force_front(cost, score):
    n = len(cost)
    front = np.ones(n, dtype=bool)
    for i, j in itertools.product(range(n), repeat=2):
        if np.isnan(cost[i]) or np.isnan(score[i]):
            front[i] = False
        elif (not (np.isnan(cost[j]) or np.isnan(score[j])) and cost[j] <= cost[i]
              and score[j] >= score[i] and (cost[j] < cost[i] or score[j] > score[i])):
            front[i] = False
    return front


@pytest.mark.parametrize("seed", range(30))
def test_pareto_front_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    # few distinct values, so ties in cost, in score and exact duplicates all occur
    cost = rng.integers(0, 8, n).astype(float)
    score = rng.integers(0, 8, n).astype(float)
    cost[rng.random(n) < 0.1] = np.nan
    np.testing.assert_array_equal(power.pareto_front(cost, score), _brute_force_front(cost, score))


def test_pareto_front_by_hand():
    cost = [1, 2, 3, 3, 4, 4]
    score = [0.5, 0.4, 0.7, 0.6, 0.7, 0.9]
    # (2, 0.4) is beaten by (1, 0.5); (3, 0.6) by (3, 0.7); (4, 0.7) by (3, 0.7)
    assert power.pareto_front(cost, score).tolist() == [True, False, True, False, False, True]
    with pytest.raises(ValueError):
        power.pareto_front([1, 2], [1])
