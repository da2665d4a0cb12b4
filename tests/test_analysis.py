"""ImageNet vs ecology analysis: the spec's figures on the published file, and independent checks."""

from __future__ import annotations

import itertools
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from biobench import analysis
from biobench import published
from biobench.store import ResultsStore
from tests.test_published import SHARED_COPY

TOL = 0.0005  # the spec gives three decimals


def close(value: float, expected: float, tol: float = TOL) -> bool:
    return abs(value - expected) <= tol


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ResultsStore:
    if not SHARED_COPY.is_file():
        pytest.skip(f"the shared copy of the published leaderboard is not at {SHARED_COPY}")
    store = ResultsStore(tmp_path_factory.mktemp("analysis") / "store.sqlite")
    published.import_published(store, published.load_published(SHARED_COPY))
    return store


@pytest.fixture(scope="module")
def runs(store) -> pd.DataFrame:
    return store.runs("published")


@pytest.fixture(scope="module")
def models(store) -> pd.DataFrame:
    return store.models("published")


@pytest.fixture(scope="module")
def matrix(runs) -> pd.DataFrame:
    return analysis.score_matrix(runs)


@pytest.fixture(scope="module")
def all_models(matrix, models) -> analysis.ModelSet:
    return analysis.model_set(matrix, models, "all")


@pytest.fixture(scope="module")
def by_set(matrix, models) -> pd.DataFrame:
    return analysis.compare_model_sets(matrix, models)


# ---- model sets ----------------------------------------------------------------------------------
def test_task_constants_match_the_file(runs):
    benchmark = set(runs.loc[runs["extra"].map(lambda e: e["task_group"]) == "benchmark", "task"])
    assert set(analysis.BENCHMARK_TASKS_WITH_ECDYSIS) == benchmark
    assert set(analysis.PAPER_TASKS) == benchmark - {"ecdysis"} and len(analysis.PAPER_TASKS) == 9
    prior = set(runs.loc[runs["extra"].map(lambda e: e["task_group"]) == "prior_work", "task"])
    assert set(analysis.PRIOR_WORK_TASKS) == prior


@pytest.mark.parametrize("name, n", [("all", 84), ("excl_cv4ecology", 78), ("vit_only", 64),
                                     ("ten_tasks", 81)])
def test_model_set_sizes(matrix, models, name, n):
    ms = analysis.model_set(matrix, models, name)
    assert ms.n == n and ms.scores.notna().all().all() and ms.imagenet.notna().all()


def test_all_set_drops_only_the_model_without_imagenet(all_models, matrix):
    assert set(matrix.index) - set(all_models.imagenet.index) == {"vit_pe_spatial_small_patch16_512"}
    assert all_models.above().n == 63 and all_models.below().n == 21


def test_threshold_is_inclusive_and_robust(all_models):
    x = all_models.imagenet
    assert not ((x > 0.7463) & (x < 0.7567)).any()  # spec: no model near 0.75
    assert all_models.above(0.75).n == (x > 0.75).sum()


def test_model_set_errors(matrix, models):
    with pytest.raises(KeyError, match="Unknown model set 'nope'"):
        analysis.model_set(matrix, models, "nope")
    with pytest.raises(ValueError, match="no scores for tasks moonwalk"):
        analysis.model_set(matrix, models, "custom", tasks=("beluga", "moonwalk"))


def test_score_matrix_refuses_duplicates_unless_aggregated():
    runs = pd.DataFrame({"model": ["a", "a", "b"], "task": ["t", "t", "t"], "score": [0.2, 0.4, 0.5]})
    with pytest.raises(ValueError, match="share a \\(model, task\\)"):
        analysis.score_matrix(runs)
    assert analysis.score_matrix(runs, agg="mean").loc["a", "t"] == pytest.approx(0.3)


# ---- headline figures (spec section 5) -------------------------------------------------------------
def test_pooled_all_models(by_set):
    row = by_set.loc["all"]
    assert row["n"] == 84
    assert close(row["r2"], 0.555) and close(row["r"], 0.745) and close(row["slope"], 0.380)
    assert row["slope_low"] < row["slope"] < row["slope_high"]
    assert close(row["spearman"], 0.858) and close(row["kendall"], 0.685)
    assert close(row["misordered"], 0.157)


def test_pooled_above_and_below_75(by_set):
    row = by_set.loc["all"]
    assert row["above_n"] == 63 and row["below_n"] == 21
    assert close(row["above_r2"], 0.579) and close(row["above_spearman"], 0.768)
    assert (row["above_discordant"], row["above_pairs"]) == (374, 1953)
    assert close(row["below_spearman"], 0.114)


@pytest.mark.parametrize("name, n, r2, rho, tau, above", [
    ("ten_tasks", 81, 0.544, 0.840, 0.672, (60, 0.545, 0.742, 0.198, 21, 0.142)),
    ("excl_cv4ecology", 78, 0.602, 0.924, 0.758, (61, 0.732, 0.876, 0.151, 17, 0.105)),
    ("vit_only", 64, 0.726, 0.896, 0.731, (57, 0.641, 0.852, 0.168, 7, 0.857)),
])
def test_pooled_other_model_sets(by_set, name, n, r2, rho, tau, above):
    row = by_set.loc[name]
    assert row["n"] == n
    assert close(row["r2"], r2) and close(row["spearman"], rho) and close(row["kendall"], tau)
    above_n, above_r2, above_rho, misordered, below_n, below_rho = above
    assert row["above_n"] == above_n and row["below_n"] == below_n
    assert close(row["above_r2"], above_r2) and close(row["above_spearman"], above_rho)
    assert close(row["above_misordered"], misordered) and close(row["below_spearman"], below_rho)


def test_ten_task_mis_ordered_pairs(by_set):
    row = by_set.loc["ten_tasks"]
    assert (row["above_discordant"], row["above_pairs"]) == (351, 1770)


@pytest.mark.parametrize("name, r2, rho, above_r2, above_rho, above_mis", [
    ("all", 0.379, 0.658, 0.369, 0.559, 0.283),
    ("excl_cv4ecology", 0.432, 0.726, 0.477, 0.619, 0.262),
    ("vit_only", 0.467, 0.626, 0.358, 0.556, 0.288),
])
def test_per_task_averages(by_set, name, r2, rho, above_r2, above_rho, above_mis):
    row = by_set.loc[name]
    assert close(row["task_mean_r2"], r2) and close(row["task_mean_spearman"], rho)
    assert close(row["above_task_mean_r2"], above_r2)
    assert close(row["above_task_mean_spearman"], above_rho)
    assert close(row["above_task_mean_misordered"], above_mis)


# task: n, R², rho all, rho above, mis-ordered above (spec: "Each task vs ImageNet-1K")
PER_TASK = {
    "beluga": (84, 0.016, 0.098, 0.115, 0.459),
    "fishnet": (84, 0.478, 0.765, 0.624, 0.270),
    "fungiclef": (84, 0.395, 0.686, 0.647, 0.243),
    "herbarium19": (84, 0.431, 0.730, 0.549, 0.289),
    "iwildcam": (84, 0.525, 0.843, 0.731, 0.218),
    "kabr": (84, 0.380, 0.825, 0.707, 0.231),
    "mammalnet": (84, 0.623, 0.926, 0.878, 0.140),
    "plankton": (84, 0.065, 0.368, 0.195, 0.430),
    "plantnet": (84, 0.499, 0.680, 0.583, 0.270),
    "ecdysis": (81, 0.412, 0.620, 0.460, 0.328),
    "newt": (84, 0.629, 0.821, 0.738, 0.196),
    "inat21": (84, 0.585, 0.730, 0.715, 0.210),
}


def test_each_task_against_imagenet(matrix, models):
    table = analysis.task_vs_imagenet(matrix, models, list(PER_TASK))
    for task, (n, r2, rho, rho_above, mis_above) in PER_TASK.items():
        row = table.loc[task]
        assert row["n"] == n, task
        assert close(row["r2"], r2) and close(row["spearman"], rho), task
        assert close(row["above_spearman"], rho_above), task
        assert close(row["above_misordered"], mis_above), task
    assert table.loc["ecdysis", "above_n"] == 60


def test_per_task_r2_mean_is_the_mean_of_the_table(all_models, by_set):
    per_task = analysis.per_task_association(all_models)
    assert list(per_task.index) == list(analysis.PAPER_TASKS)
    assert per_task["r2"].mean() == pytest.approx(by_set.loc["all", "task_mean_r2"])


def test_threshold_sweep_matches_spec(all_models):
    sweep = analysis.threshold_sweep(all_models, [0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85], n_bootstrap=200)
    pooled = sweep[sweep["aggregation"] == "pooled"].pivot(index="threshold", columns="statistic",
                                                           values="estimate")
    n = sweep.groupby("threshold")["n"].first()
    assert n.tolist() == [84, 74, 72, 66, 63, 55, 32]
    expected_rho = [0.858, 0.822, 0.822, 0.797, 0.768, 0.688, 0.766]
    expected_mis = [0.157, 0.172, 0.168, 0.178, 0.192, 0.222, 0.220]
    assert np.allclose(pooled["spearman"], expected_rho, atol=TOL)
    assert np.allclose(pooled["misordered"], expected_mis, atol=TOL)
    per_task = sweep[(sweep["aggregation"] == "per-task mean") & (sweep["threshold"] == 0.75)]
    assert close(per_task.set_index("statistic").loc["spearman", "estimate"], 0.559)


def test_ci_exclusion_counts(runs):
    table = analysis.ci_exclusion_table(runs)
    expected = {"fishnet": (85, 85), "herbarium19": (85, 85), "ecdysis": (82, 82),
                "plantnet": (83, 84), "beluga": (59, 85), "iwildcam": (50, 85)}
    for task in table.index:
        outside, total = expected.get(task, (0, table.loc[task, "n_runs"]))
        assert (table.loc[task, "n_outside"], table.loc[task, "n_runs"]) == (outside, total), task
    shift = table["median_bootstrap_shift_pt"]
    assert shift["fishnet"] == pytest.approx(-13.0, abs=0.05)
    assert shift["herbarium19"] == pytest.approx(-6.1, abs=0.05)
    assert shift["plantnet"] == pytest.approx(-3.1, abs=0.05)
    assert shift["ecdysis"] == pytest.approx(-1.8, abs=0.05)


def test_ci_excludes_estimate_handles_missing_bounds():
    flags = analysis.ci_excludes_estimate([0.5, 0.5, 0.5, 0.5], [0.4, 0.6, np.nan, 0.5],
                                          [0.6, 0.7, np.nan, 0.5])
    assert flags.tolist() == [False, True, False, False]


# ---- independent checks of the statistics ------------------------------------------------------
def brute_force_pairs(x, y):
    concordant = discordant = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        product = (x[i] - x[j]) * (y[i] - y[j])
        concordant += product > 0
        discordant += product < 0
    return concordant, discordant


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank_statistics_against_scipy_and_a_double_loop(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 12, size=25).astype(float)  # small integer range: many ties
    y = x + rng.integers(-4, 5, size=25)
    got = analysis.association(x, y)
    concordant, discordant = brute_force_pairs(x, y)
    assert (got["concordant"], got["discordant"]) == (concordant, discordant)
    assert got["misordered"] == pytest.approx(discordant / (concordant + discordant))
    assert got["kendall"] == pytest.approx(scipy_stats.kendalltau(x, y).statistic)  # τ-b
    assert got["spearman"] == pytest.approx(scipy_stats.spearmanr(x, y).statistic)
    assert got["r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)


def test_batched_statistics_equal_row_by_row():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 15)), rng.normal(size=(40, 15))
    batch = analysis.rank_stats_batch(x, y, chunk=7)  # several chunks
    for b in range(40):
        assert batch["kendall"][b] == pytest.approx(scipy_stats.kendalltau(x[b], y[b]).statistic)
        assert batch["spearman"][b] == pytest.approx(scipy_stats.spearmanr(x[b], y[b]).statistic)


def test_ols_r2_equals_pearson_squared_and_slope_equals_polyfit(all_models):
    x, y = all_models.imagenet, all_models.ecology_mean
    fit = analysis.ols_fit(x, y)
    assert fit.r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    slope, intercept = np.polyfit(x, y, 1)
    assert (fit.slope, fit.intercept) == (pytest.approx(slope), pytest.approx(intercept))
    assert fit.residuals.to_numpy() == pytest.approx((y - (intercept + slope * x)).to_numpy())
    # the 95 % interval is slope ± t(0.975, n-2) * standard error, from the textbook formula
    resid = y - (intercept + slope * x)
    se = np.sqrt(resid.pow(2).sum() / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
    half = scipy_stats.t.ppf(0.975, len(x) - 2) * se
    assert (fit.slope_low, fit.slope_high) == (pytest.approx(slope - half), pytest.approx(slope + half))


# ---- threshold sweep, surprises, rank stability ----------------------------------------------------
def test_threshold_sweep_bands_are_seeded(all_models):
    kwargs = dict(thresholds=[0.75, 0.85], n_bootstrap=100)
    first = analysis.threshold_sweep(all_models, seed=1, **kwargs)
    pd.testing.assert_frame_equal(first, analysis.threshold_sweep(all_models, seed=1, **kwargs))
    other = analysis.threshold_sweep(all_models, seed=2, **kwargs)
    assert not np.allclose(first["low"], other["low"])
    assert (first["low"] <= first["high"]).all()
    assert ((first["low"] <= first["estimate"]) & (first["estimate"] <= first["high"])).all()


def test_threshold_sweep_leaves_tiny_sets_blank(all_models):
    sweep = analysis.threshold_sweep(all_models, [0.89], n_bootstrap=10, min_models=5)
    assert (sweep["n"] < 5).all() and sweep["estimate"].isna().all()


def test_surprises(all_models):
    table = analysis.surprises(all_models)
    assert len(table) == 84
    assert (table["rank_shift"] == table["imagenet_rank"] - table["ecology_rank"]).all()
    assert table["biology_specific"].sum() == 6
    assert table.index[0] == "hf-hub:imageomics/bioclip-2.5-vith14"
    assert table["rank_shift"].abs().is_monotonic_decreasing
    # rank 1 is the highest ImageNet accuracy
    assert table["imagenet"].idxmax() == table["imagenet_rank"].idxmin()


def make_set(scores: np.ndarray) -> analysis.ModelSet:
    index = [f"m{i}" for i in range(scores.shape[0])]
    tasks = tuple(f"t{k}" for k in range(scores.shape[1]))
    frame = pd.DataFrame(scores, index=index, columns=tasks)
    return analysis.ModelSet("toy", "toy", tasks, pd.Series(np.linspace(0.6, 0.9, len(index)), index),
                             frame, pd.DataFrame({"display": index}, index=index))


def test_rank_stability_with_a_dominant_model():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 0.5, size=(6, 5))
    scores[2] += 1  # m2 wins every task
    result = analysis.rank_stability(make_set(scores), n_resamples=200, seed=0)
    assert result.top_model == "m2" and result.top_retention == 1.0
    assert result.top_share.to_dict() == {"m2": 1.0}
    assert np.all((result.kendall >= -1) & (result.kendall <= 1))


def test_rank_stability_counts_winners_by_hand():
    # two tasks, two models: each wins one task; model m0 wins on average by a hair
    scores = np.array([[0.9, 0.1001], [0.1, 0.9]])
    result = analysis.rank_stability(make_set(scores), n_resamples=500, seed=4)
    idx = np.random.default_rng(4).integers(0, 2, size=(500, 2))  # same draws as stats.resample_indices
    m0_wins = (scores[0, idx].mean(axis=1) > scores[1, idx].mean(axis=1)).mean()
    assert result.top_model == "m0"
    assert result.top_retention == pytest.approx(m0_wins)


def test_rank_stability_on_the_published_file(all_models):
    result = analysis.rank_stability(all_models, n_resamples=300, seed=0)
    assert result.top_model == "PE-Core-bigG-14-448/meta"
    assert 0 < result.top_retention < 1
    assert result.top_share.sum() == pytest.approx(1.0)
    again = analysis.rank_stability(all_models, n_resamples=300, seed=0)
    assert np.array_equal(result.kendall, again.kendall)
    loo = analysis.leave_one_task_out(all_models)
    assert list(loo.index) == list(analysis.PAPER_TASKS)


# ---- leaderboard -----------------------------------------------------------------------------------
class _TableParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.heads, self._in_body = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows.append([])
        elif tag == "td" and self._in_body:
            self.rows[-1].append(dict(attrs))
        elif tag == "th":
            self.heads.append(dict(attrs))


def test_leaderboard_table(runs, models, matrix):
    tasks = list(analysis.BENCHMARK_TASKS_WITH_ECDYSIS)
    board = analysis.leaderboard(runs, models, tasks)
    assert len(board) == 85
    expected = matrix[list(analysis.PAPER_TASKS)].mean(axis=1, skipna=False)
    pd.testing.assert_series_equal(board["mean_paper"], expected.reindex(board.index), check_names=False)
    assert board["mean_paper"].dropna().is_monotonic_decreasing
    assert pd.isna(board.loc["vit_pe_spatial_small_patch16_512", "mean_paper"])
    assert board["mean_with_ecdysis"].notna().sum() == 81
    assert board["plankton_tie"].sum() == 27 and board["kabr_tie"].sum() == 4
    assert board.loc["vith16", "beluga_tie"]


def test_leaderboard_html_is_sortable_and_complete(runs, models):
    tasks = list(analysis.PAPER_TASKS)
    board = analysis.leaderboard(runs, models, tasks)
    page = analysis.leaderboard_html(board, tasks, table_id="lb-test")
    parser = _TableParser()
    parser.feed(page)
    n_columns = 5 + 2 + len(tasks)
    assert len(parser.heads) == n_columns and len(parser.rows) == 85
    assert all(len(row) == n_columns for row in parser.rows)
    assert parser.heads[0].get("data-type") == "text"
    first = parser.rows[0]
    assert float(first[5]["data-sort"]) == pytest.approx(100 * board["mean_paper"].iloc[0])  # percent
    n_ties = sum(cell.get("class") == "tie" for row in parser.rows for cell in row)
    assert n_ties == int(board[[f"{t}_tie" for t in tasks]].to_numpy().sum())
    assert 'getElementById("lb-test")' in page and "http" not in page  # no network needed
