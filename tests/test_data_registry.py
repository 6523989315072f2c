"""The dataset registry: one Dataset shape for moons, mnist, cmnist, celeba and image folders."""

import jax
import numpy as np
import pytest

from ntkdyn.data import registry
from ntkdyn.data.celeba_fixture import write_celeba_fixture
from ntkdyn.data.dataset import Dataset, stratified_sample
from ntkdyn.data.images import decode_image, normalize_images
from ntkdyn.data.metadata import load_metadata_folder, write_metadata_fixture
from ntkdyn.data.registry import DATASETS, load_dataset, register_dataset
from ntkdyn.errors import InputError
from ntkdyn.losses import to_signed

# ---------------------------------------------------------------------------------------------
# moons, mnist, cmnist: the spectrum command's data, pinned


def test_moons_pinned():
    d = load_dataset("moons", n=300, seed=0)
    assert d.name == "moons" and d.x.shape == (300, 2) and d.x.dtype == np.float32
    assert (
        d.y.dtype == np.int32 and int(d.y.sum()) == 150 and d.y[:6].tolist() == [1, 1, 0, 1, 1, 0]
    )
    np.testing.assert_allclose(d.x[0], [-1.1871344, 0.2717444], rtol=1e-6)
    assert len(d) == 300 and d.groups is None and "300 two-moons points" in d.source
    # the ±1 labels are those of two_moons itself, through the one conversion
    from ntkdyn.data.moons import two_moons

    _, y = two_moons(n=300, noise=0.1, delta=0.1, seed=0)
    np.testing.assert_array_equal(np.asarray(d.signed_y), np.asarray(y))
    np.testing.assert_array_equal(np.asarray(d.signed_y), np.asarray(to_signed(d.y)))
    assert len(load_dataset("moons", seed=1)) == 300  # the paper's n by default


def test_mnist_pinned():
    d = load_dataset("mnist", n=300, seed=0)
    assert d.x.shape == (300, 28, 28) and d.x.dtype == np.float32 and d.x.max() <= 1.0
    assert int(d.y.sum()) == 144 and d.y[:10].tolist() == [1, 0, 1, 0, 0, 1, 0, 0, 0, 0]
    np.testing.assert_allclose(d.x.sum(), 30564.26, rtol=1e-5)
    assert "embedded" in d.source and "seed 0" in d.source


def test_cmnist_pinned():
    # the colour and label-noise draws of jax.random depend on x64 (the spectrum command runs
    # with it on); the images and their order do not
    d = load_dataset("cmnist", n=300, seed=0)
    assert d.x.shape == (300, 392) and d.x.dtype == np.float32
    if jax.config.jax_enable_x64:
        assert int(d.y.sum()) == 153 and d.y[:10].tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 1]
    else:
        assert int(d.y.sum()) == 154 and d.y[:10].tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    np.testing.assert_allclose(d.x.sum(), 7629.122, rtol=1e-5)
    assert d.environments.tolist()[:4] == [0, 1, 0, 1] and int(d.environments.sum()) == 150


def test_mnist_reference_sample():
    # the spectrum command's rule: default_rng(seed).choice(N, n) of the MNIST, /255, digit < 5
    from ntkdyn.data.mnist import load_mnist

    ref = load_mnist(source="embedded")
    idx = np.random.default_rng(2).choice(ref.n_images, size=50, replace=False)
    d = load_dataset("mnist", n=50, seed=2)
    np.testing.assert_array_equal(d.x, ref.images[idx].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(d.y, (ref.labels[idx] < 5).astype(np.int32))


def test_named_errors():
    with pytest.raises(InputError, match=r"--n: the embedded MNIST has 5000 images, got n=6000"):
        load_dataset("mnist", n=6000)
    with pytest.raises(InputError, match=r"--n: the Colored MNIST .* got n=5000"):
        load_dataset("cmnist", n=5000)
    with pytest.raises(InputError, match=r"--data-dir: the two moons are generated"):
        load_dataset("moons", data_dir="/tmp")
    with pytest.raises(InputError, match=r"--split: moons has only training data"):
        load_dataset("moons", split="test")
    with pytest.raises(InputError, match=r"--n: must be >= 1, got 0"):
        load_dataset("moons", n=0)


def test_unknown_name_lists_registry_and_user_forms():
    with pytest.raises(InputError) as err:
        load_dataset("waterbirds")
    msg = str(err.value)
    assert msg.startswith("--data: unknown dataset 'waterbirds'")
    for name in ("celeba", "cmnist", "folder", "mnist", "moons", ".npz", "metadata.csv"):
        assert name in msg
    with pytest.raises(FileNotFoundError, match=r"--data: no file or folder nowhere/x"):
        load_dataset("nowhere/x")


def test_register_dataset(monkeypatch):
    monkeypatch.setattr(registry, "DATASETS", dict(DATASETS))
    seen = {}

    def loader(*, split, n, seed, data_dir, image_size, crop, scale=1.0):
        seen.update(split=split, n=n, seed=seed, scale=scale)
        x = scale * np.arange(2 * n, dtype=np.float32).reshape(n, 2)
        return Dataset(name="toy", x=x, y=(np.arange(n) % 2).astype(np.int32))

    register_dataset("toy", loader)
    d = load_dataset("toy", n=4, seed=7, scale=2.0)
    assert d.x[1, 1] == 6.0 and seen == {"split": "train", "n": 4, "seed": 7, "scale": 2.0}
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy", lambda **k: None)
    with pytest.raises(ValueError, match="name"):
        register_dataset("a/b.npz", loader)


def test_dataset_checks_its_shape():
    with pytest.raises(ValueError, match=r"y: labels must lie in \{0, 1\}"):
        Dataset(name="t", x=np.zeros((2, 1), np.float32), y=np.array([-1, 1], np.int32))
    with pytest.raises(ValueError, match=r"groups: expected shape \(2,\)"):
        Dataset(name="t", x=np.zeros((2, 1)), y=np.array([0, 1]), groups=np.zeros(3, int))


# ---------------------------------------------------------------------------------------------
# stratified subsets


def test_stratified_sample_keeps_the_rare_group_and_proportions():
    groups = np.repeat([0, 1, 2, 3], [500, 300, 150, 7])
    groups = np.random.default_rng(0).permutation(groups)
    idx, note = stratified_sample(groups, 100, seed=3, names=("a", "b", "c", "rare"))
    assert len(idx) == 100 and len(set(idx.tolist())) == 100 and np.all(np.diff(idx) > 0)
    counts = np.bincount(groups[idx], minlength=4)
    assert counts[3] == 7  # every example of the rarest group
    # the other 93 shared in proportion 500:300:150 (largest remainder): 48.9, 29.4, 14.7
    assert counts[:3].tolist() == [49, 29, 15]
    assert "keeping all 7 of the rarest group (rare)" in note
    again, _ = stratified_sample(groups, 100, seed=3)
    np.testing.assert_array_equal(idx, again)
    assert not np.array_equal(idx, stratified_sample(groups, 100, seed=4)[0])
    few, note = stratified_sample(groups, 5, seed=0)
    assert np.bincount(groups[few], minlength=4)[3] == 5 and "5 of the 7" in note
    with pytest.raises(ValueError, match="n: must lie in"):
        stratified_sample(groups, 0, seed=0)


# ---------------------------------------------------------------------------------------------
# image data: celeba and metadata folders


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_metadata_fixture(tmp_path_factory.mktemp("folder"), seed=1, sizes=(60, 16, 16))


def test_folder_by_path_and_by_name(folder):
    d = load_dataset(str(folder), n=20, seed=0, image_size=16)
    e = load_dataset("folder", data_dir=folder, n=20, seed=0, image_size=16)
    assert d.name == e.name == f"folder:{folder}"
    np.testing.assert_array_equal(d.x, e.x)
    meta = load_metadata_folder(folder).splits["train"]
    assert d.x.shape == (20, 16, 16, 3) and d.x.dtype == np.float32
    # a stratified subset of the train split: every one of the rarest group is kept
    rare = int(np.argmin(np.bincount(meta.group, minlength=4)))
    assert np.sum(d.groups == rare) == np.sum(meta.group == rare)
    assert d.group_names == ("y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1")
    np.testing.assert_array_equal(d.groups, 2 * d.y + d.attributes["a"])
    assert "20 of the 60 train images" in d.source and "rarest group" in d.source
    # the images are the files' pixels, normalised, in the subset's (file) order
    i = [j for j, g in enumerate(meta.group) if g == d.groups[0]][0]
    first = normalize_images(decode_image(meta.paths[i], 16))
    assert np.allclose(d.x[0], first) or d.groups[0] != meta.group[i]


def test_folder_whole_split_and_default_size(folder):
    d = load_dataset(str(folder), split="test")
    meta = load_metadata_folder(folder).splits["test"]
    assert d.x.shape == (16, 64, 64, 3) and "all 16 test images" in d.source
    np.testing.assert_array_equal(d.y, meta.y)
    np.testing.assert_allclose(d.x[3], normalize_images(decode_image(meta.paths[3], 64)))
    with pytest.raises(
        InputError, match=r"--n: the val split of folder:.* has 16 images, got n=17"
    ):
        load_dataset(str(folder), split="val", n=17)


def test_folder_without_metadata(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data: the folder .* has no metadata\.csv"):
        load_dataset(str(tmp_path))
    with pytest.raises(InputError, match=r"--data-dir: folder needs"):
        load_dataset("folder")


def test_celeba_named_attribute(tmp_path):
    root = write_celeba_fixture(tmp_path / "c", seed=2, n_train=40, n_val=8, n_test=8)
    d = load_dataset("celeba", data_dir=root, n=12, seed=1, image_size=16)
    assert d.name == "celeba" and d.x.shape == (12, 16, 16, 3)
    assert set(d.attributes) == {"Male"} and d.group_names[3] == "Blond_Hair=1,Male=1"
    np.testing.assert_array_equal(d.groups, 2 * d.y + d.attributes["Male"])
    with pytest.raises(InputError, match="--data-dir: celeba needs"):
        load_dataset("celeba")
