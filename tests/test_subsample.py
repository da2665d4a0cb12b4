"""Class-balanced seeded subsampling of the training set."""

from collections import Counter

from biobench.tasks import Example, ImageRef, subsample_train


def make(counts):
    return [Example(f"{c}-{i}", (ImageRef(f"/x/{c}-{i}.png"),), c)
            for c, n in counts.items() for i in range(n)]


def test_balanced_and_total():
    ex = make({0: 50, 1: 20, 2: 3})
    sub = subsample_train(ex, 30, seed=0)
    counts = Counter(e.label for e in sub)
    assert len(sub) == 30
    assert counts[2] == 3  # a small class gives all it has
    assert abs(counts[0] - counts[1]) <= 1  # the rest is shared evenly


def test_seeded_and_order_preserving():
    ex = make({0: 40, 1: 40})
    a = subsample_train(ex, 10, seed=7)
    assert a == subsample_train(ex, 10, seed=7)
    assert a != subsample_train(ex, 10, seed=8)
    assert [ex.index(e) for e in a] == sorted(ex.index(e) for e in a)


def test_all_when_negative_or_larger():
    ex = make({0: 3, 1: 2})
    assert subsample_train(ex, -1, seed=0) == ex
    assert subsample_train(ex, 99, seed=0) == ex
