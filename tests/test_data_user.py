"""A user's own .npz through load_dataset: labels, groups, splits, subsets and every bad input."""

import numpy as np
import pytest

from ntkdyn.data.npz import load_npz
from ntkdyn.data.registry import load_dataset
from ntkdyn.errors import InputError


def _save(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_signed_labels_become_01(tmp_path, rng):
    x = rng.standard_normal((10, 3)).astype(np.float64)
    y = np.array([1, -1] * 5)
    f = _save(tmp_path / "my.npz", x=x, y=y)
    d = load_dataset(f)
    assert d.name == "my.npz" and d.x.dtype == np.float32 and d.x.shape == (10, 3)
    np.testing.assert_array_equal(d.y, [1, 0] * 5)
    np.testing.assert_array_equal(np.asarray(d.signed_y), y)
    np.testing.assert_allclose(d.x, x.astype(np.float32))
    assert d.groups is None and "all 10 examples" in d.source
    # {0, 1} as bool or float work too, and give the same labels
    f2 = _save(tmp_path / "b.npz", x=x, y=(y > 0).astype(float))
    np.testing.assert_array_equal(load_dataset(f2).y, d.y)


def test_splits_groups_and_names(tmp_path, rng):
    n = 40
    x = rng.standard_normal((n, 2, 2)).astype(np.float32)
    y = np.arange(n) % 2
    groups = (np.arange(n) // 10).astype(np.int64)
    split = np.array(["train", "val", "test", "train"] * 10)
    f = _save(
        tmp_path / "g.npz", x=x, y=y, groups=groups, split=split, group_names=["a", "b", "c", "d"]
    )
    val = load_dataset(f, split="val")
    idx = np.flatnonzero(split == "val")
    np.testing.assert_array_equal(val.x, x[idx])
    np.testing.assert_array_equal(val.groups, groups[idx])
    assert val.group_names == ("a", "b", "c", "d") and "the val split (10 of 40" in val.source
    # integer split codes select the same examples
    codes = np.array([0, 1, 2, 0] * 10)
    f2 = _save(tmp_path / "g2.npz", x=x, y=y, groups=groups, split=codes)
    np.testing.assert_array_equal(load_dataset(f2, split="val").x, val.x)
    assert load_dataset(f2).group_names == ("group 0", "group 1", "group 2", "group 3")


def test_subset_is_stratified_with_groups_and_uniform_without(tmp_path, rng):
    n = 200
    x = rng.standard_normal((n, 2)).astype(np.float32)
    y = rng.integers(0, 2, n)
    groups = np.where(np.arange(n) < 6, 3, rng.integers(0, 3, n))
    f = _save(tmp_path / "s.npz", x=x, y=y, groups=groups)
    d = load_npz(f, n=30, seed=1)
    assert len(d) == 30 and np.sum(d.groups == 3) == 6  # the whole rarest group
    assert "stratified by group" in d.source and "seed 1" in d.source
    np.testing.assert_array_equal(d.x, load_npz(f, n=30, seed=1).x)
    f2 = _save(tmp_path / "u.npz", x=x, y=y)
    u = load_npz(f2, n=30, seed=1)
    rows = [int(np.flatnonzero((x == r).all(axis=1))[0]) for r in u.x]
    assert rows == sorted(rows) and len(set(rows)) == 30 and "uniformly" in u.source


def test_missing_and_unreadable_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data: no file .*gone\.npz"):
        load_dataset(str(tmp_path / "gone.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(InputError, match=r"--data: .*bad\.npz is not a readable \.npz"):
        load_dataset(str(bad))
    single = tmp_path / "one.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(InputError, match=r"holds a single array, not an \.npz archive"):
        load_npz(single)


def test_missing_keys_are_listed(tmp_path):
    f = _save(tmp_path / "k.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(InputError, match=r"has no array 'x' \(found: inputs, y\)"):
        load_dataset(f)
    f = _save(tmp_path / "k2.npz", x=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(InputError, match=r"has no array 'y' \(found: x, labels\)"):
        load_dataset(f)


def test_label_shape_and_values(tmp_path):
    x = np.zeros((4, 2))
    with pytest.raises(InputError, match=r"y has shape \(4, 1\), expected a 1-D array of length"):
        load_dataset(_save(tmp_path / "a.npz", x=x, y=np.zeros((4, 1))))
    with pytest.raises(InputError, match=r"y has shape \(3,\), expected .* n = 4"):
        load_dataset(_save(tmp_path / "b.npz", x=x, y=np.zeros(3)))
    with pytest.raises(
        InputError, match=r"y holds the values \{0, 1, 2\}.* \{0, 1\} or \{-1, \+1\}"
    ):
        load_dataset(_save(tmp_path / "c.npz", x=x, y=np.array([0, 1, 2, 1])))
    with pytest.raises(InputError, match=r"y holds the values \{-1, 0, 1\}"):
        load_dataset(_save(tmp_path / "d.npz", x=x, y=np.array([-1, 0, 1, 1])))


def test_non_finite_inputs(tmp_path):
    x = np.zeros((6, 2))
    x[4, 1] = np.nan
    x[5] = np.inf
    with pytest.raises(
        InputError, match=r"x holds 3 NaN or inf value\(s\) in 2 example\(s\), the first at index 4"
    ):
        load_dataset(_save(tmp_path / "n.npz", x=x, y=np.zeros(6)))


def test_split_problems(tmp_path):
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    f = _save(tmp_path / "s.npz", x=x, y=y, split=np.array([0, 0, 2, 2]))
    with pytest.raises(InputError, match=r"the val split is empty"):
        load_dataset(f, split="val")
    with pytest.raises(InputError, match=r"--n: .* holds 2 examples in the train split, got n=3"):
        load_dataset(f, n=3)
    nos = _save(tmp_path / "t.npz", x=x, y=y)
    with pytest.raises(InputError, match=r"--split: .* has no split array"):
        load_dataset(nos, split="test")
    with pytest.raises(InputError, match=r"split holds \['dev'\]"):
        load_dataset(_save(tmp_path / "u.npz", x=x, y=y, split=np.array(["dev"] * 4)))
    with pytest.raises(InputError, match=r"split holds \[0, 5\]"):
        load_dataset(_save(tmp_path / "v.npz", x=x, y=y, split=np.array([0, 5, 0, 0])))


def test_group_problems(tmp_path):
    x, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    with pytest.raises(InputError, match=r"groups must be a 1-D array of 4 non-negative ints"):
        load_dataset(_save(tmp_path / "a.npz", x=x, y=y, groups=np.array([0.5, 1, 0, 1])))
    with pytest.raises(InputError, match=r"groups go up to 3 but group_names has 2 names"):
        load_dataset(
            _save(
                tmp_path / "b.npz", x=x, y=y, groups=np.array([0, 3, 1, 1]), group_names=["p", "q"]
            )
        )
    with pytest.raises(InputError, match=r"x has shape \(4,\)"):
        load_dataset(_save(tmp_path / "c.npz", x=np.zeros(4), y=y))
