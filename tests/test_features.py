"""Feature extraction: caching, resumption, unreadable images, pooling, batch independence,
the worker input pipeline, out-of-memory step-down, precision and lean (float16) storage."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from biobench import config
from biobench import features as features_module
from biobench.features import (FP16_STORAGE_F1_TOLERANCE, cache_key, default_num_workers,
                               extract_features, resolve_precision, storage_dtype_name)
from biobench.images import UnreadableImage
from biobench.tasks import Example, ImageRef, get_task
from tests.tiny import CountingNet, tiny_backbone


@pytest.fixture()
def examples(tmp_path):
    task = get_task("synthetic")
    data = task.load(tmp_path / "synthetic")
    return data.train


def extract(backbone, examples, cache_dir, **kw):
    kw.setdefault("task_name", "synthetic")
    kw.setdefault("split", "train")
    kw.setdefault("num_workers", 0)
    return extract_features(backbone, examples, cache_dir=cache_dir, **kw)


def coloured_png(path, colour, size=16):
    Image.new("RGB", (size, size), colour).save(path)
    return path


def test_shapes_and_cache_reuse(examples, tmp_path):
    bb = tiny_backbone()
    first = extract(bb, examples, tmp_path / "f")
    assert first.x.shape == (len(examples), 16) and first.ids == [e.id for e in examples]
    seen = bb.net.images_seen
    again = extract(bb, examples, tmp_path / "f")
    assert bb.net.images_seen == seen  # nothing recomputed
    np.testing.assert_array_equal(first.x, again.x)
    # read back memory-mapped and read-only, never loaded whole
    assert isinstance(again.x, np.memmap) and not again.x.flags.writeable
    folder = next((tmp_path / "f").rglob("features.npy")).parent
    assert sorted(p.name for p in folder.iterdir()) == ["features.npy", "index.npz"]
    # a different split name is a different cache entry
    extract(bb, examples, tmp_path / "f", split="test")
    assert bb.net.images_seen == 2 * seen


def test_batch_size_does_not_change_features(examples, tmp_path):
    a = extract(tiny_backbone(), examples, tmp_path / "a", batch_size=1)
    b = extract(tiny_backbone(), examples, tmp_path / "b", batch_size=7)
    np.testing.assert_allclose(a.x, b.x, atol=1e-5)
    assert (a.batch_size, b.batch_size) == (1, 7)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_killed_extraction_resumes_from_finished_chunks(examples, tmp_path, monkeypatch,
                                                        num_workers):
    monkeypatch.setattr(features_module, "CHUNK", 4)
    clean = extract(tiny_backbone(), examples, tmp_path / "clean", batch_size=2)
    dying = tiny_backbone(fail_after_calls=5)  # dies inside the third chunk (2 calls per chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(dying, examples, tmp_path / "f", batch_size=2, num_workers=num_workers)
    folder = next((tmp_path / "f").rglob("chunk-00000.npz")).parent
    # nothing looks complete
    assert not (folder / "index.npz").exists() and not (folder / "features.npy").exists()
    assert sorted(p.name for p in folder.glob("chunk-*.npz")) == ["chunk-00000.npz",
                                                                  "chunk-00001.npz"]
    resumed_bb = tiny_backbone()
    resumed = extract(resumed_bb, examples, tmp_path / "f", batch_size=2, num_workers=num_workers)
    assert resumed_bb.net.images_seen == len(examples) - 8  # only the unfinished chunks
    np.testing.assert_allclose(resumed.x, clean.x, atol=1e-6)
    assert resumed.ids == clean.ids
    assert (folder / "index.npz").exists() and not list(folder.glob("chunk-*.npz"))


def test_unreadable_image_names_the_file_or_is_skipped_and_counted(examples, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    broken = list(examples) + [Example("broken", (ImageRef(bad),), 0)]
    with pytest.raises(UnreadableImage, match="broken.png"):
        extract(tiny_backbone(), broken, tmp_path / "f")
    result = extract(tiny_backbone(), broken, tmp_path / "f", skip_unreadable=True)
    assert result.n_skipped == 1 and result.skipped_files == [str(bad)]
    assert "broken" not in result.ids and len(result.ids) == len(examples)


def test_multi_image_examples_are_pooled(tmp_path):
    paths = [coloured_png(tmp_path / f"{i}.png", colour)
             for i, colour in enumerate([(255, 0, 0), (0, 0, 255)])]
    single = [Example(f"s{i}", (ImageRef(p),), 0) for i, p in enumerate(paths)]
    clip = [Example("clip", tuple(ImageRef(p) for p in paths), 0)]
    bb = tiny_backbone()
    each = extract(bb, single, tmp_path / "f").x
    mean = extract(bb, clip, tmp_path / "f", pooling="mean").x[0]
    mx = extract(bb, clip, tmp_path / "f", pooling="max").x[0]
    np.testing.assert_allclose(mean, each.mean(0), atol=1e-6)
    np.testing.assert_allclose(mx, each.max(0), atol=1e-6)


# ---- the worker input pipeline --------------------------------------------------------------
@pytest.fixture()
def mixed_examples(examples, tmp_path):
    """Single images, clips of several images (one with an unreadable frame), a cropped image,
    an example whose only image is unreadable, and one that sits across a batch boundary."""
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    frames = [ImageRef(coloured_png(tmp_path / f"frame{i}.png", (40 * i, 255 - 30 * i, 90), 24))
              for i in range(5)]
    gradient = tmp_path / "gradient.png"  # not uniform, so a crop changes the features
    ramp = np.linspace(0, 255, 24, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(ramp, (24, 1)), np.tile(ramp[:, None], (1, 24)),
                              np.full((24, 24), 90, np.uint8)], -1)).save(gradient)
    extra = [
        Example("clip3", tuple(frames[:3]), 1),
        Example("clip_with_broken_frame", (frames[3], ImageRef(bad), frames[4]), 2),
        Example("only_broken", (ImageRef(bad),), 0),
        Example("cropped", (ImageRef(gradient, (2, 3, 20, 18)),), 1),
    ]
    return list(examples[:5]) + extra + list(examples[5:11]) + [
        Example("long_clip", tuple(frames) * 2, 2)] + list(examples[11:])


@pytest.mark.parametrize("pooling", ["mean", "max"])
@pytest.mark.parametrize("cache", [True, False])
def test_two_workers_give_the_single_process_features_ids_and_skips(mixed_examples, tmp_path,
                                                                   monkeypatch, pooling, cache):
    monkeypatch.setattr(features_module, "CHUNK", 5)  # chunks and batches straddle each other
    run = dict(pooling=pooling, cache=cache, skip_unreadable=True, batch_size=3)
    serial = extract(tiny_backbone(), mixed_examples, tmp_path / "serial", num_workers=0, **run)
    parallel = extract(tiny_backbone(), mixed_examples, tmp_path / "par", num_workers=2, **run)
    assert parallel.ids == serial.ids
    np.testing.assert_array_equal(parallel.x, serial.x)  # same batches, same forward: bitwise
    assert parallel.skipped_files == serial.skipped_files
    assert serial.n_skipped == 2 and "only_broken" not in serial.ids
    assert "clip_with_broken_frame" in serial.ids  # two readable frames remain
    # the clip's feature is the pooling of its two readable frames, extracted one by one
    clip = next(ex for ex in mixed_examples if ex.id == "clip_with_broken_frame")
    single = extract(tiny_backbone(), [Example(f"f{i}", (clip.images[i],), 0) for i in (0, 2)],
                     tmp_path / "single", cache=False)
    pooled = single.x.mean(0) if pooling == "mean" else single.x.max(0)
    row = serial.ids.index("clip_with_broken_frame")
    np.testing.assert_allclose(serial.x[row], pooled, atol=1e-6)
    # the crop box survives the trip to the workers: same as a file cropped beforehand
    cropped = next(ex for ex in mixed_examples if ex.id == "cropped").images[0]
    with Image.open(cropped.path) as whole:
        whole.crop(cropped.box).save(tmp_path / "precropped.png")
    precropped = [Example("c", (ImageRef(tmp_path / "precropped.png"),), 0)]
    reference = extract(tiny_backbone(), precropped, tmp_path / "single", cache=False)
    np.testing.assert_allclose(parallel.x[parallel.ids.index("cropped")], reference.x[0],
                               atol=1e-6)
    # without skip_unreadable both paths stop at the broken file, by name
    for workers in (0, 2):
        with pytest.raises(UnreadableImage, match="broken.jpg") as err:
            extract(tiny_backbone(), mixed_examples, tmp_path / f"raise{workers}",
                    num_workers=workers, **{**run, "skip_unreadable": False})
        assert err.value.path == tmp_path / "broken.jpg"


def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv(features_module.WORKERS_ENV, raising=False)
    monkeypatch.setattr(features_module.os, "sched_getaffinity", lambda pid: {0})
    assert default_num_workers() == 0  # one core: decoding in-process is cheaper
    monkeypatch.setattr(features_module.os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_num_workers() == 2
    monkeypatch.setattr(features_module.os, "sched_getaffinity", lambda pid: set(range(96)))
    assert default_num_workers() == features_module.MAX_WORKERS
    monkeypatch.setenv(features_module.WORKERS_ENV, "3")
    assert default_num_workers() == 3
    monkeypatch.setenv(features_module.WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="BIOBENCH_NUM_WORKERS"):
        default_num_workers()


def test_small_jobs_decode_in_process_unless_workers_are_asked_for(examples, tmp_path,
                                                                   monkeypatch):
    used = []
    real = features_module._batches

    def recording(dataset, batch_size, workers, pin_memory):
        used.append(workers)
        return real(dataset, batch_size, workers, pin_memory)

    monkeypatch.setattr(features_module, "_batches", recording)
    monkeypatch.delenv(features_module.WORKERS_ENV, raising=False)
    monkeypatch.setattr(features_module, "default_num_workers", lambda: 2)
    extract_features(tiny_backbone(), examples, task_name="s", split="a", cache=False)
    monkeypatch.setattr(features_module, "MIN_IMAGES_FOR_WORKERS", len(examples))
    extract_features(tiny_backbone(), examples, task_name="s", split="b", cache=False)
    monkeypatch.setattr(features_module, "MIN_IMAGES_FOR_WORKERS", 10**6)
    monkeypatch.setenv(features_module.WORKERS_ENV, "2")
    extract_features(tiny_backbone(), examples, task_name="s", split="c", cache=False)
    assert used == [0, 2, 2]


# ---- out of memory ----------------------------------------------------------------------------
class OutOfMemoryAbove(CountingNet):
    """Raises CUDA's out-of-memory error for batches larger than ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.sizes = []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return super().forward(x)


def test_out_of_memory_halves_the_batch_retries_and_records_the_size(examples, tmp_path):
    reference = extract(tiny_backbone(), examples, tmp_path / "ref", cache=False)
    bb = tiny_backbone()
    bb.net = OutOfMemoryAbove(limit=3)
    result = extract(bb, examples, tmp_path / "f", batch_size=16)
    assert result.batch_size == 2  # 16 -> 8 -> 4 -> 2
    assert bb.net.sizes[:4] == [16, 8, 4, 2]
    assert max(bb.net.sizes[4:]) == 2  # the smaller size is kept for later batches
    assert bb.net.images_seen == len(examples)  # every image exactly once
    np.testing.assert_allclose(result.x, reference.x, atol=1e-5)
    assert result.ids == reference.ids
    assert extract(tiny_backbone(), examples, tmp_path / "f", batch_size=16).batch_size == 2
    # one image at a time still too large: the error names the model
    bb.net = OutOfMemoryAbove(limit=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="'tiny_test'.*one image at a time"):
        extract(bb, examples, tmp_path / "g", batch_size=4)


# ---- precision and the cache key --------------------------------------------------------------
def test_precision_per_device_and_request(monkeypatch):
    assert resolve_precision("cpu") == "fp32"
    assert resolve_precision("cpu", "bf16") == "fp32"  # a CPU pass is always fp32
    monkeypatch.setattr(features_module, "_native_bf16", lambda device: True)
    assert resolve_precision("cuda:0") == "bf16-autocast"
    assert resolve_precision("cuda", "fp32") == "fp32"  # a task that needs fp32
    assert resolve_precision("cuda", "fp16") == "fp16-autocast"
    monkeypatch.setattr(features_module, "_native_bf16", lambda device: False)  # e.g. a T4
    assert resolve_precision("cuda") == "fp16-autocast"
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("cuda", "half")
    assert storage_dtype_name("bf16-autocast") == storage_dtype_name("fp16-autocast") == "float16"
    assert storage_dtype_name("fp32") == "float32"
    assert storage_dtype_name("fp32", "float16") == "float16"


def test_cache_key_separates_precision_and_storage(examples, monkeypatch):
    monkeypatch.setattr(features_module, "_native_bf16", lambda device: True)

    def key(device, **kw):
        return cache_key("m", "pre", "t", "train", "mean", examples, False, device, **kw)

    assert key("cuda") == key("cuda:1") == key("cuda", precision="bf16")
    assert len({key("cpu"), key("cuda"), key("cuda", precision="fp32"),
                key("cuda", precision="fp16")}) == 4
    assert key("cpu") != key("cpu", store_as="float16")
    assert key("cpu") == key("cpu", store_as="float32")  # what auto means on a CPU


def test_old_cache_files_are_not_read(examples, tmp_path):
    """A format-1 ``features.npz`` (or its chunks) in the folder is never taken for a result."""
    bb = tiny_backbone()
    key = cache_key(bb.info.name, bb.preprocessing_id, "synthetic", "train", "mean", examples,
                    False)
    folder = tmp_path / "f" / "tiny_test" / "synthetic" / f"train-{key}"
    folder.mkdir(parents=True)
    np.savez(folder / "features.npz", ids=np.array(["x"]), x=np.zeros((1, 16), np.float32),
             n_skipped=np.array(0), skipped_files=np.array([], dtype=str))
    result = extract(bb, examples, tmp_path / "f")
    assert bb.net.images_seen == len(examples) and len(result.ids) == len(examples)


# ---- lean storage -----------------------------------------------------------------------------
def macro_f1_of_logreg(train_x, train_y, test_x, test_y) -> float:
    """Independent reference: scikit-learn's standardised logistic regression and F1."""
    # float64 first, as the probes do: the stored dtype is what is tested, not fp16 arithmetic
    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(train_x), train_y)
    return f1_score(test_y, model.predict(scaler.transform(test_x)), average="macro")


@pytest.mark.parametrize("cache", [True, False])
def test_float16_storage_rounds_features_and_keeps_the_score(tmp_path, cache):
    from biobench.probes import make_probe

    task = get_task("synthetic")
    data = task.load(tmp_path / "synthetic")
    train_y, test_y = task.labels_array(data.train), task.labels_array(data.test)
    got, scores = {}, {}
    for store_as in ("float32", "float16"):
        got[store_as] = [extract(tiny_backbone(), exs, tmp_path / "f", split=split, cache=cache,
                                 store_as=store_as)
                         for split, exs in (("train", data.train), ("test", data.test))]
        train_x, test_x = (s.x for s in got[store_as])
        assert train_x.dtype == test_x.dtype == np.dtype(store_as)
        probe = make_probe("logreg", random_state=0).fit(train_x, train_y)
        scores[store_as] = (task.score(test_y, probe.predict(test_x)),
                            macro_f1_of_logreg(train_x, train_y, test_x, test_y))
    # exactly the fp32 features rounded to the nearest float16
    for fp16, fp32 in zip(got["float16"], got["float32"]):
        np.testing.assert_array_equal(fp16.x, fp32.x.astype(np.float16))
    # our logreg probe and metric, then scikit-learn's: each scores fp16 storage as fp32
    for fp16, fp32 in zip(scores["float16"], scores["float32"]):
        assert abs(fp16 - fp32) <= FP16_STORAGE_F1_TOLERANCE, scores


def test_float16_rounding_keeps_macro_f1_on_realistic_features():
    """1,000 x 384 features in 20 overlapping classes (macro-F1 ~0.7, so many test points sit
    near a decision boundary), on the scale of a ViT's pooled output: fp16 rounding moves the
    score by less than the stated tolerance."""
    rng = np.random.default_rng(0)
    n_classes, dim = 20, 384
    centres = rng.normal(0, 1.0, (n_classes, dim)) * 0.18
    scale = rng.lognormal(0, 1, dim)  # dimensions of very different magnitude (0.05 .. 20)

    def sample(n):
        y = np.arange(n) % n_classes
        return ((centres[y] + rng.normal(0, 1, (n, dim))) * scale).astype(np.float32), y

    train_x, train_y = sample(1000)
    test_x, test_y = sample(1000)
    fp32 = macro_f1_of_logreg(train_x, train_y, test_x, test_y)
    fp16 = macro_f1_of_logreg(train_x.astype(np.float16), train_y,
                              test_x.astype(np.float16), test_y)
    assert 0.4 < fp32 < 0.95  # a problem where rounding could show
    assert abs(fp16 - fp32) <= FP16_STORAGE_F1_TOLERANCE, (fp32, fp16)


def test_real_cached_features_keep_their_score_in_float16():
    """On the offline tasks' own cached features (fp32, from a CPU book build), when present."""
    pairs = []
    for task_name in ("plankton_flowcam", "neon_tree_crowns"):
        task = get_task(task_name)
        if not task.is_present():
            continue
        for model_dir in (config.features_dir()).glob(f"*/{task_name}"):
            found = {split: sorted(model_dir.glob(f"{split}-*/index.npz"))
                     for split in ("train", "test")}
            if found["train"] and found["test"]:
                pairs.append((task, found["train"][0].parent, found["test"][0].parent))
    if not pairs:
        pytest.skip("no cached features of the offline tasks (run `make book` first)")
    for task, train_dir, test_dir in pairs[:4]:
        data = task.load()
        labels = {ex.id: ex.label for ex in data.train + data.test}
        sets = [features_module._load_cached(d) for d in (train_dir, test_dir)]
        if sets[0].x.dtype != np.float32 or any(i not in labels for s in sets for i in s.ids):
            continue  # already float16, or features of another version of the data
        (train_x, train_y), (test_x, test_y) = [
            (np.asarray(s.x), np.array([labels[i] for i in s.ids])) for s in sets]
        fp32 = macro_f1_of_logreg(train_x, train_y, test_x, test_y)
        fp16 = macro_f1_of_logreg(train_x.astype(np.float16), train_y,
                                  test_x.astype(np.float16), test_y)
        assert abs(fp16 - fp32) <= FP16_STORAGE_F1_TOLERANCE, (train_dir, fp32, fp16)


class Loud(CountingNet):
    def forward(self, x):
        return super().forward(x) * 1e6  # beyond float16's 65504


@pytest.mark.parametrize("cache", [True, False])
def test_features_beyond_float16_range_stay_float32(examples, tmp_path, cache):
    bb = tiny_backbone()
    bb.net = Loud()
    result = extract(bb, examples, tmp_path / "f", store_as="float16", cache=cache)
    assert result.x.dtype == np.float32 and np.isfinite(result.x).all()
    assert np.abs(result.x).max() > 65504


def test_no_examples_and_only_unreadable_ones(tmp_path):
    empty = extract(tiny_backbone(), [], tmp_path / "f")
    assert empty.x.shape == (0, 16) and empty.ids == [] and empty.batch_size is None
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    only_bad = extract(tiny_backbone(), [Example("b", (ImageRef(bad),), 0)], tmp_path / "f",
                       skip_unreadable=True, num_workers=2)
    assert only_bad.x.shape == (0, 16) and only_bad.skipped_files == [str(bad)]


# ---- uint8 from the workers, scaled and normalised per batch ------------------------------------
def _transforms_to_split():
    import open_clip

    from biobench.backbones import create_backbone

    yield "mobilenet_v2", create_backbone("mobilenet_v2").transform
    yield "efficientnet_lite0", create_backbone("efficientnet_lite0").transform
    _, _, clip_transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    yield "open_clip ViT-B-32", clip_transform


def test_split_transform_reproduces_the_whole_transform_bit_for_bit():
    from PIL import Image

    from biobench.features import split_transform

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((300, 400), (256, 256), (97, 513))]
    for name, transform in _transforms_to_split():
        per_image, per_batch = split_transform(transform)
        assert per_batch is not None, name
        shipped = torch.stack([per_image(im) for im in images])
        assert shipped.dtype == torch.uint8, name  # a quarter of float32's bytes per image
        whole = torch.stack([transform(im) for im in images])
        assert torch.equal(per_batch(shipped), whole), name


def test_a_transform_of_another_shape_is_kept_whole():
    from torchvision import transforms as T

    from biobench.features import split_transform

    odd = T.Compose([T.Resize(32), T.ToTensor(), T.RandomErasing(p=0.0)])
    assert split_transform(odd) == (odd, None)
    plain = lambda image: image  # noqa: E731
    assert split_transform(plain) == (plain, None)
    per_image, per_batch = split_transform(T.Compose([T.CenterCrop(8), T.ToTensor()]))
    assert per_batch is not None and per_batch.normalize is None
