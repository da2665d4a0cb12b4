"""Feature extraction: caching, resumption, unreadable images, pooling, batch independence."""

import numpy as np
import pytest
from PIL import Image

from biobench import features as features_module
from biobench.features import extract_features
from biobench.images import UnreadableImage
from biobench.tasks import Example, ImageRef, get_task
from tests.tiny import tiny_backbone


@pytest.fixture()
def examples(tmp_path):
    task = get_task("synthetic")
    data = task.load(tmp_path / "synthetic")
    return data.train


def extract(backbone, examples, cache_dir, **kw):
    kw.setdefault("task_name", "synthetic")
    kw.setdefault("split", "train")
    return extract_features(backbone, examples, cache_dir=cache_dir, **kw)


def test_shapes_and_cache_reuse(examples, tmp_path):
    bb = tiny_backbone()
    first = extract(bb, examples, tmp_path / "f")
    assert first.x.shape == (len(examples), 16) and first.ids == [e.id for e in examples]
    seen = bb.net.images_seen
    again = extract(bb, examples, tmp_path / "f")
    assert bb.net.images_seen == seen  # nothing recomputed
    np.testing.assert_array_equal(first.x, again.x)
    # a different split name is a different cache entry
    extract(bb, examples, tmp_path / "f", split="test")
    assert bb.net.images_seen == 2 * seen


def test_batch_size_does_not_change_features(examples, tmp_path):
    a = extract(tiny_backbone(), examples, tmp_path / "a", batch_size=1)
    b = extract(tiny_backbone(), examples, tmp_path / "b", batch_size=7)
    np.testing.assert_allclose(a.x, b.x, atol=1e-5)


def test_killed_extraction_resumes_from_finished_chunks(examples, tmp_path, monkeypatch):
    monkeypatch.setattr(features_module, "CHUNK", 4)
    clean = extract(tiny_backbone(), examples, tmp_path / "clean", batch_size=2)
    dying = tiny_backbone(fail_after_calls=5)  # dies inside the third chunk (2 calls per chunk)
    with pytest.raises(KeyboardInterrupt):
        extract(dying, examples, tmp_path / "f", batch_size=2)
    folder = next((tmp_path / "f").rglob("chunk-00000.npz")).parent
    assert not (folder / "features.npz").exists()  # nothing looks complete
    assert sorted(p.name for p in folder.glob("chunk-*.npz")) == ["chunk-00000.npz", "chunk-00001.npz"]
    resumed_bb = tiny_backbone()
    resumed = extract(resumed_bb, examples, tmp_path / "f", batch_size=2)
    assert resumed_bb.net.images_seen == len(examples) - 8  # only the unfinished chunks
    np.testing.assert_allclose(resumed.x, clean.x, atol=1e-6)
    assert (folder / "features.npz").exists() and not list(folder.glob("chunk-*.npz"))


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
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (16, 16), colour).save(p)
        paths.append(p)
    single = [Example(f"s{i}", (ImageRef(p),), 0) for i, p in enumerate(paths)]
    clip = [Example("clip", tuple(ImageRef(p) for p in paths), 0)]
    bb = tiny_backbone()
    each = extract(bb, single, tmp_path / "f").x
    mean = extract(bb, clip, tmp_path / "f", pooling="mean").x[0]
    mx = extract(bb, clip, tmp_path / "f", pooling="max").x[0]
    np.testing.assert_allclose(mean, each.mean(0), atol=1e-6)
    np.testing.assert_allclose(mx, each.max(0), atol=1e-6)
