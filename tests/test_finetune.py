"""The forgetting experiment's parts (``biobench.finetune``): the held-out split and task, the
checkpoint cache, ImageNet agreement with a bootstrap over photos, and the choice of α.

Tests marked ``network`` fine-tune the real ``mobilenet_v2`` (weights and plankton images from
the package registry) for a fraction of an epoch; the page's full-size run is the book's.
"""

import json
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biobench import finetune
from biobench.finetune import (
    NATURAL_PHOTOS,
    FineTuneSettings,
    ForgettingSweep,
    HeldOutTask,
    Measure,
    agreement,
    agreement_interval,
    best_alpha,
    first_argmax,
    heldout_split,
    natural_photo,
    objective_scores,
    photo_views,
)
from biobench.stats import resample_indices
from biobench.tasks import get_task
from biobench.tasks.base import Example, ImageRef, Task, TaskData, TaskDataMissing

CLASS_SIZES = {0: 14, 1: 16, 2: 19, 3: 20, 4: 23, 5: 13}  # plankton_flowcam's


def in_memory_data(sizes=CLASS_SIZES) -> TaskData:
    examples = [Example(f"c{label}/img{i:02d}.jpg", (ImageRef(Path(f"/nowhere/{label}/{i}.jpg")),),
                        label) for label, n in sizes.items() for i in range(n)]
    return TaskData([], examples, [f"class{c}" for c in sizes])


class InMemoryTask(Task):
    name = "in_memory"
    display = "In-memory test task"
    kingdom = modality = citation = "test"

    def __init__(self, data: TaskData):
        self.data = data

    def check_present(self, root=None):
        pass

    def load(self, root=None):
        return self.data


# ---- the held-out split and task ------------------------------------------------------------

def test_split_is_stratified_disjoint_complete_and_seeded():
    data = in_memory_data()
    split = heldout_split(data, 0.5, seed=0)
    ids = {ex.id for ex in data.test}
    assert set(split.finetune_ids) | set(split.heldout_ids) == ids
    assert not set(split.finetune_ids) & set(split.heldout_ids)
    label_of = {ex.id: ex.label for ex in data.test}
    held = Counter(label_of[i] for i in split.heldout_ids)
    for label, n in CLASS_SIZES.items():  # every class split in half, give or take one
        assert abs(held[label] - n / 2) <= 1, (label, held[label], n)
    assert heldout_split(data, 0.5, seed=0) == split
    assert heldout_split(data, 0.5, seed=1) != split
    shuffled = list(data.test)
    random.Random(3).shuffle(shuffled)  # the order the task lists examples in does not matter
    assert heldout_split(TaskData([], shuffled, data.class_names), 0.5, seed=0) == split


def test_heldout_task_is_the_heldout_images_only():
    data = in_memory_data()
    split = heldout_split(data, 0.5, seed=0)
    task = HeldOutTask(InMemoryTask(data), split)
    loaded = task.load()
    assert sorted(ex.id for ex in loaded.test) == sorted(split.heldout_ids)
    assert loaded.train == [] and loaded.class_names == data.class_names
    assert task.cross_fitted and task.name == f"in_memory_heldout_{split.tag()}"
    other = heldout_split(data, 0.5, seed=1)
    assert HeldOutTask(InMemoryTask(data), other).name != task.name


def test_heldout_task_refuses_data_without_its_images():
    split = heldout_split(in_memory_data(), 0.5, seed=0)
    fewer = in_memory_data({**CLASS_SIZES, 5: 3})
    with pytest.raises(TaskDataMissing, match="fine-tune again"):
        HeldOutTask(InMemoryTask(fewer), split).load()


def test_heldout_task_runs_through_the_pipeline(tmp_path, monkeypatch):
    from biobench.evaluate import run_evaluation
    from biobench.store import ResultsStore
    from tests.tiny import tiny_backbone

    monkeypatch.setenv("BIOBENCH_FEATURES", str(tmp_path / "features"))
    synthetic = get_task("synthetic")
    root = tmp_path / "synthetic"
    synthetic.download(root, progress=False)
    split = heldout_split(synthetic.load(root), 0.5, seed=0)
    task = HeldOutTask(synthetic, split)
    result = run_evaluation(tiny_backbone(), task, protocol="simpleshot", data_root=root,
                            store=ResultsStore(tmp_path / "r.sqlite"), n_bootstrap=50)
    assert sorted(result.example_ids) == sorted(split.heldout_ids)
    assert result.key.task == task.name and result.n_train_used is None  # cross-fitted
    assert result.score > 0.9  # the synthetic colours are trivially separable


# ---- the checkpoint cache ---------------------------------------------------------------------

def test_settings_key_changes_with_every_setting():
    settings = FineTuneSettings()
    changed = [replace(settings, base="efficientnet_lite0"), replace(settings, epochs=3),
               replace(settings, lr=1e-3), replace(settings, seed=1),
               replace(settings, heldout_fraction=0.4), replace(settings, head="linear"),
               replace(settings, crop_scale=(0.2, 1.0)), replace(settings, train_resolution=128)]
    keys = {settings.key(), *(s.key() for s in changed)}
    assert len(keys) == len(changed) + 1
    assert FineTuneSettings().key() == settings.key()


def test_same_settings_reuse_the_checkpoint(tmp_path, monkeypatch):
    """Training is replaced by a stub that writes the checkpoint folder: what is tested is
    when ``finetune`` trains and where it looks (the real training: the network tests)."""
    from biobench.atomic import atomic_directory

    monkeypatch.setenv("BIOBENCH_HOME", str(tmp_path / "home"))
    trained = []

    def fake_train(settings, task, data, split, fingerprint, directory, log):
        trained.append(settings)
        provenance = {"split": {"finetune_ids": list(split.finetune_ids),
                                "heldout_ids": list(split.heldout_ids)}}
        with atomic_directory(directory) as tmp:
            (tmp / finetune.PROVENANCE_FILE).write_text(json.dumps(provenance))
        return provenance

    monkeypatch.setattr(finetune, "_train_and_save", fake_train)
    monkeypatch.setattr("biobench.tasks.get_task", lambda name: InMemoryTask(in_memory_data()))
    first = finetune.finetune(FineTuneSettings(), log=lambda m: None)
    again = finetune.finetune(FineTuneSettings(), log=lambda m: None)
    assert (first.reused, again.reused, len(trained)) == (False, True, 1)
    assert again.directory == first.directory and again.split == first.split
    assert first.directory.parent == tmp_path / "home" / "finetuned"
    other = finetune.finetune(FineTuneSettings(epochs=3), log=lambda m: None)
    assert other.directory != first.directory and len(trained) == 2
    forced = finetune.finetune(FineTuneSettings(), force=True, log=lambda m: None)
    assert not forced.reused and len(trained) == 3
    assert first.model_name == f"mobilenet_v2@{first.directory / 'model.safetensors'}"
    assert first.interpolated(0.3) == f"interp:0.3:mobilenet_v2|{first.model_name}"


def test_only_offline_models_are_fine_tuned():
    with pytest.raises(ValueError, match="offline ImageNet model"):
        finetune.finetune(FineTuneSettings(base="timm:resnet50"))


# ---- ImageNet agreement -----------------------------------------------------------------------

def test_photo_views_are_the_corners_and_the_centre():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (60, 100, 3), dtype=np.uint8))
    views = photo_views(photo)
    side = int(0.7 * 60)
    assert len(views) == finetune.VIEWS_PER_PHOTO == 5
    assert all(v.size == (side, side) for v in views)
    array = np.asarray(photo)
    expected = [array[:side, :side], array[:side, 100 - side:], array[60 - side:, :side],
                array[60 - side:, 100 - side:],
                array[(60 - side) // 2:(60 - side) // 2 + side, (100 - side) // 2:(100 - side) // 2 + side]]
    for view, crop in zip(views, expected):
        np.testing.assert_array_equal(np.asarray(view), crop)


def test_agreement_cache_is_keyed_by_the_views_and_lives_with_the_specialist(tmp_path):
    from biobench.finetune import AgreementCache, NaturalViews, Specialist

    specialist = Specialist(FineTuneSettings(), tmp_path, {}, False)
    views = NaturalViews(("skimage:chelsea", "skimage:coffee"))
    cache = AgreementCache(specialist, views)
    assert cache.get("m") is None
    cache.put("m", np.array([281, 967, 5, 6, 7, 1, 2, 3, 4, 5]))
    again = AgreementCache(specialist, views)
    np.testing.assert_array_equal(again.get("m"), [281, 967, 5, 6, 7, 1, 2, 3, 4, 5])
    assert (tmp_path / finetune.AGREEMENT_CACHE).is_file()
    # other photos: the predictions are not theirs
    assert AgreementCache(specialist, NaturalViews(("skimage:chelsea",))).get("m") is None


def test_natural_photos_ship_with_installed_packages():
    for source, name in NATURAL_PHOTOS:
        photo = natural_photo(source, name)
        assert photo.mode == "RGB" and min(photo.size) >= 256, (source, name, photo.size)


def test_agreement_interval_resamples_whole_photos():
    reference = np.arange(40).reshape(4, 10)  # 4 photos x 10 views
    predicted = reference.copy()
    predicted[2:] += 1  # photos 2 and 3: no view agrees
    predicted[1, :3] += 1  # photo 1: 7 of 10 views agree
    interval = agreement_interval(reference, predicted, n_bootstrap=500, seed=0)
    assert interval.estimate == agreement(reference, predicted) == pytest.approx(17 / 40)
    # reference computation: resample photos, average their per-photo agreement
    per_photo = (reference == predicted).mean(axis=1)
    replicates = per_photo[resample_indices(4, 500, 0)].mean(axis=1)
    low, high = np.quantile(replicates, [0.025, 0.975])
    assert (interval.low, interval.high) == pytest.approx((low, high))
    with pytest.raises(ValueError, match="photos, views"):
        agreement_interval(reference.ravel(), predicted.ravel())


# ---- the choice of alpha ----------------------------------------------------------------------

def test_ties_go_to_the_smallest_alpha():
    np.testing.assert_array_equal(first_argmax(np.array([[0.5, 0.2], [0.7, 0.2], [0.7, 0.1]])),
                                  [1, 0])


def fabricated_measure(name, y_true, predictions, score_fn) -> Measure:
    scores = [score_fn(y_true, p) for p in predictions]
    return Measure(name, name, y_true, predictions, score_fn, None, scores, scores, scores)


def accuracy(y_true, y_pred):
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def fabricated_sweep(target_correct, general_correct, agree_correct, n=40) -> ForgettingSweep:
    """Predictions right on the first k examples, for each alpha's k."""
    y = np.arange(n) % 4

    def preds(ks):
        return [np.where(np.arange(n) < k, y, (y + 1) % 4) for k in ks]

    alphas = [round(i / (len(target_correct) - 1), 10) for i in range(len(target_correct))]
    return ForgettingSweep(
        specialist=None, alphas=alphas, models=[f"m{a}" for a in alphas], protocol="test",
        target=fabricated_measure("target", y, preds(target_correct), accuracy),
        general_task=fabricated_measure("general_task", y, preds(general_correct), accuracy),
        imagenet=fabricated_measure("imagenet_agreement", y, preds(agree_correct), accuracy),
        n_bootstrap=300, seed=0, reused_runs=0, wall_time_s=0.0)


def test_best_alpha_is_the_argmax_of_the_objective():
    sweep = fabricated_sweep([20, 30, 36, 38, 40], [40, 39, 36, 30, 20], [40, 38, 33, 25, 10])
    result = best_alpha(sweep)
    # brute force: mean(target, mean(general task, agreement)) of the fabricated scores
    objective = [(t / 40 + (g / 40 + a / 40) / 2) / 2 for t, g, a in
                 zip([20, 30, 36, 38, 40], [40, 39, 36, 30, 20], [40, 38, 33, 25, 10])]
    assert result.alpha == sweep.alphas[int(np.argmax(objective))] == 0.5
    assert result.objective == pytest.approx(max(objective))
    assert sum(result.share.values()) == pytest.approx(1.0)
    assert result.low <= result.alpha <= result.high
    table = sweep.table()
    np.testing.assert_allclose(table["objective"], objective)


def test_a_dominant_alpha_wins_every_replicate():
    # alpha = 0.25 is right everywhere, every other alpha is wrong somewhere on every measure
    sweep = fabricated_sweep([10, 40, 10, 10, 10], [10, 40, 10, 10, 10], [10, 40, 10, 10, 10])
    result = best_alpha(sweep)
    assert result.alpha == 0.25 and result.share[0.25] == 1.0
    assert (result.low, result.high) == (0.25, 0.25)


def test_objective_weights_target_and_general_equally():
    assert objective_scores(np.array(1.0), np.array(0.0), np.array(0.0)) == 0.5
    assert objective_scores(np.array(0.0), np.array(1.0), np.array(1.0)) == 0.5
    assert objective_scores(np.array(0.0), np.array(1.0), np.array(0.0)) == 0.25


# ---- the real model (package registry) --------------------------------------------------------

@pytest.fixture(scope="module")
def plankton_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline") / "plankton_flowcam"
    get_task("plankton_flowcam").download(root, progress=False)
    return root


TINY_FINETUNE = FineTuneSettings(heldout_fraction=0.8, head_epochs=5, epochs=1,
                                 train_resolution=64)


@pytest.mark.network
def test_a_real_short_finetune_is_saved_reused_and_reproducible(plankton_root):
    import torch
    from safetensors.torch import load_file

    from biobench.backbones.offline import converted_weights

    specialist = finetune.finetune(TINY_FINETUNE, data_root=plankton_root, log=lambda m: None)
    assert not specialist.reused
    provenance = json.loads((specialist.directory / finetune.PROVENANCE_FILE).read_text())
    assert provenance["base_model"] == "mobilenet_v2" and provenance["task"] == "plankton_flowcam"
    assert len(provenance["split"]["heldout_ids"]) == 84  # 80% of 105
    assert len(provenance["training_loss_per_epoch"]) == 1
    assert provenance["versions"]["torch"] and provenance["settings"]["seed"] == 0
    weights = load_file(str(specialist.weights))
    base = torch.load(converted_weights("mobilenet_v2"), weights_only=True)
    assert weights.keys() == base.keys()
    # frozen on purpose: the ImageNet classifier and BatchNorm statistics are the base's
    for key in ("classifier.weight", "bn1.running_mean", "blocks.3.0.bn1.running_var"):
        assert torch.equal(weights[key], base[key]), key
    assert not torch.equal(weights["conv_stem.weight"], base["conv_stem.weight"])  # trained
    mtime = specialist.weights.stat().st_mtime_ns
    again = finetune.finetune(TINY_FINETUNE, data_root=plankton_root, log=lambda m: None)
    assert again.reused and again.weights.stat().st_mtime_ns == mtime
    # retraining with the same settings gives the same weights, bit for bit
    retrained = finetune.finetune(TINY_FINETUNE, data_root=plankton_root, force=True,
                                  log=lambda m: None)
    for key, value in load_file(str(retrained.weights)).items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.network
def test_imagenet_head_on_backbone_features_is_the_full_classifier():
    """The agreement measure's classifier (base head on pooled features) against timm's own
    full network with the same weights, on real photos."""
    import torch

    from biobench.backbones import create_backbone
    from biobench.backbones.offline import load_imagenet_classifier
    from biobench.finetune import imagenet_head, imagenet_top1

    backbone = create_backbone("mobilenet_v2")
    classifier, transform = load_imagenet_classifier("mobilenet_v2")
    photos = torch.stack([transform(natural_photo(s, n)) for s, n in NATURAL_PHOTOS[:4]])
    with torch.no_grad():
        expected = classifier(photos).argmax(1).numpy()
    np.testing.assert_array_equal(imagenet_top1(backbone, imagenet_head("mobilenet_v2"), photos),
                                  expected)
    assert expected[1] in range(281, 286)  # chelsea is a cat (ImageNet classes 281-285)


@pytest.mark.slow
@pytest.mark.network
def test_a_short_sweep_is_exact_at_alpha_zero_stored_and_reused(plankton_root, tmp_path):
    """Two points of the page's sweep on a briefly fine-tuned specialist: α = 0 must score
    exactly as the base model itself does (an independent run of ``mobilenet_v2``), agree with
    the base on every photo, record its parents, and a second sweep must read every run back
    and give the same numbers."""
    from biobench.evaluate import run_evaluation
    from biobench.finetune import forgetting_sweep
    from biobench.store import ResultsStore

    neon_root = tmp_path / "neon_tree_crowns"
    get_task("neon_tree_crowns").download(neon_root, progress=False)
    specialist = finetune.finetune(TINY_FINETUNE, data_root=plankton_root, log=lambda m: None)
    store = ResultsStore(tmp_path / "forgetting.sqlite")
    kwargs = dict(store=store, n_bootstrap=200, target_data_root=plankton_root,
                  general_data_root=neon_root, log=lambda m: None)
    sweep = forgetting_sweep(specialist, [0.0, 1.0], **kwargs)
    assert sweep.imagenet.scores[0] == 1.0 and sweep.imagenet.ci_low[0] == 1.0
    base_run = run_evaluation("mobilenet_v2", HeldOutTask(get_task("plankton_flowcam"),
                                                          specialist.split),
                              protocol="simpleshot", store=ResultsStore(tmp_path / "base.sqlite"),
                              n_bootstrap=200, data_root=plankton_root)
    order = np.argsort(base_run.example_ids)
    np.testing.assert_array_equal(sweep.target.predictions[0], base_run.y_pred[order])
    assert sweep.target.scores[0] == pytest.approx(base_run.score)
    models = store.models("own").set_index("model")
    recorded = models.loc[specialist.interpolated(1.0), "extra"]["interpolation"]
    assert (recorded["base"], recorded["finetuned"], recorded["alpha"]) == (
        "mobilenet_v2", specialist.model_name, 1.0)
    again = forgetting_sweep(specialist, [0.0, 1.0], **kwargs)
    assert again.reused_runs == 4
    assert again.table().equals(sweep.table())
