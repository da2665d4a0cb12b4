"""μ-Bench statistics: image-level stratified bootstrap, paired comparisons, Holm, the demo."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from biobench.stats import resample_indices
from biobench.ubench import stats as ustats
from biobench.ubench.stats import (
    accuracy_replicates, accuracy_table, holm, kind_of_slot, macro_accuracy, micro_accuracy,
    paired_comparison, paired_replicates, percentile_intervals, permutation_p_values,
    question_vs_image_resampling_demo, sign_flips, specialist_minus_base, tidy_answers,
)
from biobench.zeroshot.base import MISSING


@dataclass(frozen=True)
class Meta:
    group: str
    slices: tuple[str, ...] = ()


METADATA = {
    "alpha": Meta("histo", ("pathology", "light")),
    "beta": Meta("histo", ("light",)),
    "gamma": Meta("cells"),
    "delta": Meta("cells", ("pathology",)),
}
CONTRASTIVE_SLOTS = ("domain_0", "domain_1", "stain_0", "stain_1", "classification_0",
                     "classification_1")
GENERATIVE_SLOTS = ("domain", "stain", "classification")
ALL_DIMENSIONS = ("kind", "part", "dataset", "group", "slice", "total")


def make_answers(seed: int, sizes=None, models=("clip", "plip", "gpt"),
                 skill=None, difficulty_sd: float = 1.5) -> pd.DataFrame:
    """Answers of contrastive (two phrasings) and generative (one) models; images share a latent
    difficulty; some images have no stain question; gpt skips a few images."""
    rng = np.random.default_rng(seed)
    sizes = sizes or {"alpha": 5, "beta": 3, "gamma": 4, "delta": 1}
    skill = skill or {"clip": 0.0, "plip": -0.5, "gpt": 0.8}
    rows = []
    for dataset, n in sizes.items():
        for image in range(n):
            z = rng.normal(0, difficulty_sd)
            has_stain = rng.random() > 0.3
            for model in models:
                if model == "gpt" and rng.random() < 0.15:
                    continue  # a generative model that did not answer this image
                slots = GENERATIVE_SLOTS if model == "gpt" else CONTRASTIVE_SLOTS
                for slot in slots:
                    kind = kind_of_slot(slot)
                    if kind == "stain" and not has_stain:
                        continue
                    p = 1 / (1 + np.exp(-(skill.get(model, 0.0) + z)))
                    rows.append((model, f"img{image:02d}", dataset, kind, slot,
                                 bool(rng.random() < p)))
    return pd.DataFrame(rows, columns=["model", "image_id", "dataset", "kind", "slot", "correct"])


# ---- independent reference: plain Python over rows ----------------------------------------------

def groups_of(row, by, metadata):
    part = {"classification": "fine"}.get(row.kind, "coarse")
    for dim in by:
        values = {"kind": [row.kind], "part": [part], "dataset": [row.dataset],
                  "group": [metadata[row.dataset].group] if metadata else [],
                  "slice": list(metadata[row.dataset].slices) if metadata else [],
                  "total": ["all"]}[dim]
        for value in values:
            yield dim, value


def reference_accuracy(table: pd.DataFrame, by, metadata, average="micro") -> dict:
    """{(model, by, value): accuracy} by looping over rows."""
    right, asked = defaultdict(int), defaultdict(int)
    for row in table.itertuples():
        for dim, value in groups_of(row, by, metadata):
            key = (row.model, dim, value, row.dataset)
            right[key] += bool(row.correct)
            asked[key] += 1
    out = defaultdict(list)
    for key in asked:
        out[key[:3]].append((right[key], asked[key]))
    if average == "micro":
        return {k: sum(r for r, _ in v) / sum(a for _, a in v) for k, v in out.items()}
    return {k: float(np.mean([r / a for r, a in v])) for k, v in out.items()}


def sorted_images(table: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(set(zip(table["dataset"], table["image_id"])))


def resampled_table(table: pd.DataFrame, images, rows) -> pd.DataFrame:
    by_image = {key: part for key, part in table.groupby(["dataset", "image_id"])}
    return pd.concat([by_image[images[i]] for i in rows], ignore_index=True)


def row_keys(rows: pd.DataFrame, *columns) -> list[tuple]:
    return list(zip(*(rows[c] for c in columns)))


# ---- tidy input ---------------------------------------------------------------------------------

def test_tidy_answers_skips_missing_questions_and_counts_unreadable_answers_wrong():
    y_true = np.array([[1, 1, 0], [2, MISSING, MISSING]])
    y_pred = np.array([[1, 0, MISSING], [2, 0, 3]])
    table = tidy_answers("clip", "alpha", ["a", "b"], ["domain_0", "domain_1", "stain"],
                         y_true, y_pred)
    assert len(table) == 4  # the two MISSING truths are not questions
    assert table["correct"].tolist() == [True, False, False, True]
    assert table["kind"].tolist() == ["domain", "domain", "stain", "domain"]
    assert table["image_id"].tolist() == ["a", "a", "a", "b"]
    assert kind_of_slot("classification_1") == "classification"
    with pytest.raises(ValueError, match="clip.*n_slots=3"):
        tidy_answers("clip", "alpha", ["a"], ["domain_0", "domain_1", "stain"], y_true, y_pred)


def test_micro_pools_questions_and_macro_averages_datasets():
    # alpha: 3 of 4 right; beta: 0 of 1 right. Micro 3/5, macro (0.75 + 0) / 2.
    table = pd.DataFrame({"model": "m", "image_id": ["a", "a", "b", "b", "c"],
                          "dataset": ["alpha"] * 4 + ["beta"], "kind": "domain",
                          "slot": ["domain_0", "domain_1"] * 2 + ["domain_0"],
                          "correct": [True, True, True, False, False]})
    assert micro_accuracy(table) == pytest.approx(0.6)
    assert macro_accuracy(table) == pytest.approx(0.375)
    for average, expected in (("micro", 0.6), ("macro", 0.375)):
        total = accuracy_table(table, ("total",), n_boot=50, average=average)
        assert total["accuracy"].item() == pytest.approx(expected)


# ---- accuracy_table -----------------------------------------------------------------------------

@pytest.mark.parametrize("average", ["micro", "macro"])
def test_estimates_and_counts_match_a_row_by_row_reference(average):
    table = make_answers(0)
    result = accuracy_table(table, ALL_DIMENSIONS, metadata=METADATA, n_boot=20, average=average)
    expected = reference_accuracy(table, ALL_DIMENSIONS, METADATA, average)
    got = dict(zip(row_keys(result, "model", "by", "value"), result["accuracy"]))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
    # counts: images with a question of the group, and its questions
    for row in result.itertuples():
        rows = [r for r in table.itertuples() if r.model == row.model
                and (row.by, row.value) in set(groups_of(r, ALL_DIMENSIONS, METADATA))]
        assert row.n_questions == len(rows)
        assert row.n_images == len({(r.dataset, r.image_id) for r in rows})


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_replicates_equal_a_brute_force_loop_over_the_same_seeded_image_resamples(average):
    table = make_answers(1)
    n_boot, seed = 25, 7
    reps = accuracy_replicates(table, ALL_DIMENSIONS, metadata=METADATA, n_boot=n_boot,
                               seed=seed, average=average)
    images = sorted_images(table)
    strata = np.array([d for d, _ in images])
    indices = resample_indices(len(images), n_boot, seed, strata=strata)
    keys = row_keys(reps.rows, "model", "by", "value")
    for b, rows in enumerate(indices):
        # stratified: every replicate keeps each dataset's image count
        assert sorted(strata[rows]) == sorted(strata)
        expected = reference_accuracy(resampled_table(table, images, rows), ALL_DIMENSIONS,
                                      METADATA, average)
        for j, key in enumerate(keys):
            if key in expected:
                assert reps.replicates[b, j] == pytest.approx(expected[key], abs=1e-12)
            else:  # the group lost all its questions in this replicate
                assert np.isnan(reps.replicates[b, j])


def test_chunking_does_not_change_replicates_or_flips(monkeypatch):
    table = make_answers(2)
    args = dict(metadata=METADATA, n_boot=40, seed=3)
    whole = accuracy_replicates(table, ALL_DIMENSIONS, **args)
    paired = paired_replicates(table, [("clip", "plip"), ("gpt", "clip")], ("kind",),
                               n_boot=40, n_perm=40, seed=3)
    monkeypatch.setattr(ustats, "CHUNK_ELEMENTS", 50)  # a few replicates per chunk
    chunked = accuracy_replicates(table, ALL_DIMENSIONS, **args)
    np.testing.assert_array_equal(whole.replicates, chunked.replicates)
    chunked_paired = paired_replicates(table, [("clip", "plip"), ("gpt", "clip")], ("kind",),
                                       n_boot=40, n_perm=40, seed=3)
    np.testing.assert_array_equal(paired.bootstrap, chunked_paired.bootstrap)
    np.testing.assert_array_equal(paired.flips, chunked_paired.flips)


def test_macro_replicates_are_the_mean_of_the_per_dataset_replicates():
    table = make_answers(3)
    macro = accuracy_replicates(table, ("total",), n_boot=60, seed=1, average="macro")
    per_dataset = accuracy_replicates(table, ("dataset",), n_boot=60, seed=1)
    for j, model in enumerate(macro.rows["model"]):
        columns = (per_dataset.rows["model"] == model).to_numpy()
        np.testing.assert_allclose(macro.replicates[:, j],
                                   per_dataset.replicates[:, columns].mean(axis=1), atol=1e-12)
        assert macro.estimate[j] == pytest.approx(per_dataset.estimate[columns].mean())


def test_a_dataset_with_one_image_has_a_zero_width_interval():
    # stratified by dataset: delta's single image is drawn in every replicate
    table = make_answers(4, sizes={"alpha": 6, "delta": 1})
    result = accuracy_table(table, ("dataset",), n_boot=200)
    delta = result[result["value"] == "delta"]
    assert (delta["low"] == delta["accuracy"]).all() and (delta["high"] == delta["accuracy"]).all()
    assert (delta["n_boot"] == 200).all()  # never left out of a replicate
    alpha = result[result["value"] == "alpha"]
    assert (alpha["high"] > alpha["low"]).all()


def test_replicates_without_any_question_of_a_group_are_left_out():
    # only image img00 of alpha has a stain question; a replicate that misses it has none
    table = make_answers(5, sizes={"alpha": 3}, models=("clip",))
    table = table[(table["kind"] != "stain") | (table["image_id"] == "img00")]
    table = pd.concat([table, pd.DataFrame([("clip", "img00", "alpha", "stain", "stain_0", True)],
                                           columns=table.columns)]).drop_duplicates(
        ["model", "image_id", "slot"])
    n_boot = 300
    result = accuracy_table(table, ("kind",), n_boot=n_boot, seed=2)
    stain = result[result["value"] == "stain"].iloc[0]
    drawn = resample_indices(3, n_boot, 2, strata=np.zeros(3))
    assert stain["n_boot"] == int(np.sum((drawn == 0).any(axis=1)))  # img00 is image 0
    assert 0.55 * n_boot < stain["n_boot"] < 0.85 * n_boot  # 1 - (2/3)^3 = 0.70 expected
    assert (result.loc[result["value"] != "stain", "n_boot"] == n_boot).all()


def test_image_bootstrap_sd_matches_the_stratified_cluster_delta_method():
    """Independent reference: the linearised variance of a ratio under stratified resampling of
    clusters, sum_d n_d var_d(c - R t) / (sum t)^2, with var_d the within-dataset variance."""
    rng = np.random.default_rng(11)
    rows = []
    for dataset, n in (("alpha", 120), ("beta", 60), ("gamma", 90)):
        for image in range(n):
            p = 1 / (1 + np.exp(-rng.normal(0.3, 1.5)))
            for slot in range(int(rng.integers(1, 8))):  # unequal questions per image
                rows.append(("m", image, dataset, "domain", f"domain_{slot}", rng.random() < p))
    table = pd.DataFrame(rows, columns=["model", "image_id", "dataset", "kind", "slot",
                                        "correct"])
    reps = accuracy_replicates(table, ("total",), n_boot=3000, seed=0)
    per_image = table.groupby(["dataset", "image_id"])["correct"].agg(["sum", "size"])
    ratio = per_image["sum"].sum() / per_image["size"].sum()
    residual = per_image["sum"] - ratio * per_image["size"]
    variance = sum(len(r) * r.var(ddof=0) for _, r in residual.groupby(level="dataset"))
    expected_sd = np.sqrt(variance) / per_image["size"].sum()
    assert reps.replicates[:, 0].std() == pytest.approx(expected_sd, rel=0.06)


# ---- intervals contain their estimates ----------------------------------------------------------

def test_percentile_interval_is_widened_to_its_estimate_when_it_misses_it():
    replicates = np.column_stack([np.linspace(0.6, 0.9, 101), np.linspace(0.1, 0.3, 101),
                                  np.linspace(0.0, 1.0, 101)])
    out = percentile_intervals(np.array([0.5, 0.4, 0.5]), replicates, level=0.9)
    assert out["widened"].tolist() == [True, True, False]
    assert out.loc[0, "low"] == 0.5 and out.loc[0, "high"] == pytest.approx(0.885)
    assert out.loc[1, "high"] == 0.4 and out.loc[1, "low"] == pytest.approx(0.11)
    assert (out.loc[2, "low"], out.loc[2, "high"]) == pytest.approx((0.05, 0.95))
    with pytest.raises(ValueError, match="level"):
        percentile_intervals(np.array([0.5]), replicates[:, :1], level=95)


@pytest.mark.parametrize("seed", range(4))
def test_every_function_reports_intervals_that_contain_their_estimates(seed):
    table = make_answers(10 + seed)
    for average in ("micro", "macro"):
        acc = accuracy_table(table, ALL_DIMENSIONS, metadata=METADATA, n_boot=200, seed=seed,
                             average=average)
        assert ((acc["low"] <= acc["accuracy"]) & (acc["accuracy"] <= acc["high"])).all()
        pairs = paired_comparison(table, ["clip", "plip", "gpt"], ("part", "total"),
                                  n_boot=200, n_perm=100, seed=seed, average=average)
        assert ((pairs["low"] <= pairs["difference"])
                & (pairs["difference"] <= pairs["high"])).all()
        special = specialist_minus_base(table, [("plip", "clip"), ("gpt", "clip")], n_boot=200,
                                        n_perm=100, seed=seed, average=average)
        assert ((special["low"] <= special["difference"])
                & (special["difference"] <= special["high"])).all()


# ---- paired comparisons -------------------------------------------------------------------------

def shared_reference(table: pd.DataFrame, models) -> pd.DataFrame:
    """Rows on the (dataset, image, kind) questions all ``models`` answered, by plain Python."""
    answered = defaultdict(set)
    for r in table.itertuples():
        answered[r.dataset, r.image_id, r.kind].add(r.model)
    keep = [r.model in models and answered[r.dataset, r.image_id, r.kind] >= set(models)
            for r in table.itertuples()]
    return table[keep]


def test_paired_bootstrap_and_sign_flips_equal_brute_force_loops():
    table = make_answers(6)
    pair = ("gpt", "plip")  # gpt skips images: only shared questions count
    n_boot, n_perm, seed = 20, 20, 4
    reps = paired_replicates(table, [pair], ("part", "total"), n_boot=n_boot, n_perm=n_perm,
                             seed=seed)
    shared = shared_reference(table, pair)
    keys = row_keys(reps.rows, "by", "value")

    def difference(t: pd.DataFrame) -> dict:
        acc = reference_accuracy(t, ("part", "total"), None)
        return {k[1:]: acc[(pair[0], *k[1:])] - acc[(pair[1], *k[1:])]
                for k in acc if k[0] == pair[0]}

    observed = difference(shared)
    np.testing.assert_allclose(reps.difference, [observed[k] for k in keys], atol=1e-12)
    images = sorted_images(shared)
    assert set(reps.rows["n_images"]) == {len(images)}  # every group covers all shared images
    indices = resample_indices(len(images), n_boot, seed, strata=np.array([d for d, _ in images]))
    for b, rows in enumerate(indices):
        expected = difference(resampled_table(shared, images, rows))
        np.testing.assert_allclose(reps.bootstrap[b], [expected[k] for k in keys], atol=1e-12)
    swaps = np.concatenate(list(sign_flips(len(images), n_perm, seed)))
    image_of = dict(zip(images, range(len(images))))
    for b, swap in enumerate(swaps):
        flipped = shared.copy()
        swapped = np.array([swap[image_of[key]] == 1 for key in zip(shared["dataset"],
                                                                      shared["image_id"])])
        flipped.loc[swapped, "model"] = flipped.loc[swapped, "model"].map(
            {pair[0]: pair[1], pair[1]: pair[0]})
        expected = difference(flipped)
        np.testing.assert_allclose(reps.flips[b], [expected[k] for k in keys], atol=1e-12)


def test_identical_models_differ_by_zero_with_p_value_one():
    table = make_answers(7, models=("clip",))
    twin = pd.concat([table, table.assign(model="twin")], ignore_index=True)
    result = paired_comparison(twin, ["clip", "twin"], n_boot=100, n_perm=100)
    assert result["difference"].item() == 0
    assert result["low"].item() == result["high"].item() == 0
    assert result["p_value"].item() == 1.0


def test_a_clearly_better_model_gets_the_smallest_possible_p_value():
    table = make_answers(8, sizes={"alpha": 40, "beta": 40}, models=("clip", "plip"),
                         skill={"clip": 4.0, "plip": -4.0}, difficulty_sd=0.3)
    result = paired_comparison(table, ["clip", "plip"], n_boot=200, n_perm=199)
    assert result["p_value"].item() == pytest.approx(1 / 200)
    assert result["low"].item() > 0.5


def test_sign_flip_test_holds_its_level_under_the_null():
    """Two models that answer every image with the same probabilities: about 5% of the
    p-values fall at or below 0.05 (binomial 99.9% range for 200 tests: 1 to 22)."""
    rejections = 0
    for seed in range(200):
        table = make_answers(1000 + seed, sizes={"alpha": 15, "beta": 10},
                             models=("clip", "plip"), skill={"clip": 0.2, "plip": 0.2})
        reps = paired_replicates(table, [("clip", "plip")], n_boot=1, n_perm=199, seed=seed)
        rejections += permutation_p_values(reps.difference, reps.flips)[0] <= 0.05
    assert 1 <= rejections <= 22


def test_paired_comparison_covers_every_pair_and_holm_adjusts_the_whole_table():
    table = make_answers(9, sizes={"alpha": 20, "beta": 15, "gamma": 10})
    result = paired_comparison(table, ["clip", "plip", "gpt"], ("part",), n_boot=200,
                               n_perm=200)
    assert set(zip(result["model_a"], result["model_b"])) == {
        ("clip", "plip"), ("clip", "gpt"), ("plip", "gpt")}
    assert len(result) == 6  # three pairs, coarse and fine
    reject, adjusted, _, _ = multipletests(result["p_value"], alpha=0.05, method="holm")
    np.testing.assert_allclose(result["p_holm"], adjusted)
    np.testing.assert_array_equal(result["reject"], reject)
    # every pair is scored on the questions all three models answered
    shared = shared_reference(table, ["clip", "plip", "gpt"])
    expected = reference_accuracy(shared, ("part",), None)
    for row in result.itertuples():
        assert row.difference == pytest.approx(
            expected[row.model_a, "part", row.value] - expected[row.model_b, "part", row.value])


def test_specialist_minus_base_splits_coarse_and_fine_per_pair():
    table = make_answers(12, sizes={"alpha": 20, "gamma": 12})
    result = specialist_minus_base(table, [("plip", "clip"), ("gpt", "clip")], n_boot=200,
                                   n_perm=100)
    assert list(zip(result["specialist"], result["base"], result["value"])) == [
        ("plip", "clip", "coarse"), ("plip", "clip", "fine"),
        ("gpt", "clip", "coarse"), ("gpt", "clip", "fine")]
    for row in result.itertuples():
        # each pair on its own shared questions: plip/clip keep the images gpt skipped
        shared = shared_reference(table, (row.specialist, row.base))
        expected = reference_accuracy(shared, ("part",), None)
        assert row.difference == pytest.approx(expected[row.specialist, "part", row.value]
                                               - expected[row.base, "part", row.value])
        assert row.n_images == len(sorted_images(shared))
    reject, adjusted, _, _ = multipletests(result["p_value"], method="holm")
    np.testing.assert_allclose(result["p_holm"], adjusted)


# ---- Holm ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_holm_matches_statsmodels(seed):
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 30))
    p = rng.choice([0.0, 0.001, 0.01, 0.02, 0.04, 0.3, 1.0], size=m) if seed % 2 \
        else rng.random(m) ** 3  # ties and edge values, or spread-out small values
    for alpha in (0.05, 0.2):
        reject, adjusted = holm(p, alpha)
        ref_reject, ref_adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
        np.testing.assert_allclose(adjusted, ref_adjusted, atol=1e-15)
        np.testing.assert_array_equal(reject, ref_reject)


def test_holm_by_hand_and_bad_input():
    # sorted 0.01, 0.02, 0.04 -> 3*0.01, max(2*0.02, 0.03), max(0.04, 0.04)
    reject, adjusted = holm([0.04, 0.01, 0.02])
    np.testing.assert_allclose(adjusted, [0.04, 0.03, 0.04])
    assert reject.all()
    assert holm([])[1].shape == (0,)
    for bad in ([0.5, 1.2], [np.nan], [-0.1]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            holm(bad)


# ---- the demo -----------------------------------------------------------------------------------

def test_question_level_resampling_is_too_narrow_and_image_level_matches_the_truth():
    demo = question_vs_image_resampling_demo(seed=0)
    # questions resampled as independent: the binomial spread, far below the true spread
    assert demo.question_level_sd == pytest.approx(demo.binomial_sd, rel=0.05)
    assert demo.question_level_sd < 0.7 * demo.true_sd
    assert demo.question_level_width < 0.7 * demo.true_width
    # images resampled: the true spread, within simulation error (z below 3)
    error = np.hypot(demo.image_level_sd_se, demo.true_sd_se)
    assert abs(demo.image_level_sd - demo.true_sd) < 3 * error
    assert demo.image_level_width == pytest.approx(demo.true_width, rel=0.1)


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("change, call, message", [
    (lambda t: t.drop(columns="slot"), "table", "lacks columns.*slot"),
    (lambda t: t.iloc[:0], "table", "empty"),
    (lambda t: t.assign(dataset=t["dataset"].where(t.index > 0)), "table", "HELD_BY_STAIN"),
    (lambda t: pd.concat([t, t.iloc[:1]]), "table", "duplicate answers.*clip.*img00"),
    (lambda t: t.assign(correct=2), "table", "'correct' must be boolean"),
    (lambda t: t, "unknown_model", r"unknown models \['siglip'\]"),
    (lambda t: t, "group_without_metadata", "needs the per-dataset metadata"),
    (lambda t: t.replace({"dataset": {"delta": "epsilon"}}), "group_with_metadata",
     r"no metadata.*epsilon"),
    (lambda t: t.assign(kind="cognition"), "part", "'cognition' is neither coarse"),
    (lambda t: t, "bad_by", "unknown grouping.*species"),
    (lambda t: t[t["dataset"] == "gamma"], "slice", "none of the datasets.*gamma.*slice"),
    (lambda t: t, "average", "average must be"),
    (lambda t: t, "self_pair", "with itself"),
    (lambda t: t, "one_model", "at least two models"),
    (lambda t: t.assign(image_id=np.where(t["model"] == "gpt", t["image_id"] + "_gpt",
                                          t["image_id"])),
     "no_shared", "share no question"),
])
def test_bad_input_gets_a_clear_error(change, call, message):
    table = change(make_answers(13))
    calls = {
        "table": lambda: accuracy_table(table, n_boot=5),
        "unknown_model": lambda: accuracy_table(table, models=["clip", "siglip"], n_boot=5),
        "group_without_metadata": lambda: accuracy_table(table, ("group",), n_boot=5),
        "group_with_metadata": lambda: accuracy_table(table, ("slice",), metadata=METADATA,
                                                      n_boot=5),
        "part": lambda: accuracy_table(table, ("part",), n_boot=5),
        "bad_by": lambda: accuracy_table(table, ("species",), n_boot=5),
        "slice": lambda: accuracy_table(table, ("slice",), metadata=METADATA, n_boot=5),
        "average": lambda: accuracy_table(table, n_boot=5, average="weighted"),
        "self_pair": lambda: specialist_minus_base(table, [("clip", "clip")], n_boot=5),
        "one_model": lambda: paired_comparison(table, ["clip"], n_boot=5),
        "no_shared": lambda: paired_comparison(table, ["clip", "gpt"], n_boot=5, n_perm=5),
    }
    with pytest.raises(ValueError, match=message):
        calls[call]()
