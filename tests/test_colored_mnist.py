"""Colored MNIST environments: shapes, measured noise rates, the channel rule, determinism, probe inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.data import colored_mnist as C
from ntkdyn.data.mnist import load_mnist


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(source="embedded")


def test_split_sizes():
    assert C.split_sizes(60000) == (50000, 10000)
    assert C.split_sizes(5000) == (4166, 834)
    with pytest.raises(ValueError, match="n_images"):
        C.split_sizes(5)


def test_shapes_and_split(mnist, key):
    d = C.colored_mnist(key, mnist.images, mnist.labels)
    (e1, e2), test = d.train, d.test
    assert e1.images.shape == (2083, 2, 14, 14) and e2.images.shape == (2083, 2, 14, 14)
    assert test.images.shape == (834, 2, 14, 14) and e1.flat.shape == (2083, 392)
    # the training environments together are a permutation of the first 5/6; test is the rest, in order
    train_digits = np.sort(np.concatenate([e1.digits, e2.digits]))
    np.testing.assert_array_equal(train_digits, np.sort(mnist.labels[:4166]))
    np.testing.assert_array_equal(test.digits, mnist.labels[4166:])
    assert float(e1.images.max()) <= 1.0 and float(e1.images.min()) >= 0.0


def test_image_construction_exact(mnist, key):
    """Every image equals the subsampled digit /255 in the colour's channel and zeros in the other."""
    test = C.colored_mnist(key, mnist.images, mnist.labels).test
    small = mnist.images[4166:, ::2, ::2].astype(np.float64) / 255.0
    colors = np.asarray(test.colors).astype(int)
    imgs = np.asarray(test.images)
    np.testing.assert_allclose(imgs[np.arange(len(colors)), colors], small)
    np.testing.assert_array_equal(imgs[np.arange(len(colors)), 1 - colors], 0.0)
    np.testing.assert_allclose(C.grayscale(test.images).reshape(-1, 14, 14), small)


def test_measured_rates():
    """Label noise 0.25 and colour flips e = 0.2 / 0.1 / 0.9, measured on generated data."""
    n = 60000
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    digits = rng.integers(0, 10, n, dtype=np.uint8)
    d = jax.jit(C.colored_mnist)(jax.random.PRNGKey(3), images, digits)
    for env, e in ((d.train[0], 0.2), (d.train[1], 0.1), (d.test, 0.9)):
        m = env.labels.shape[0]
        se = lambda p, m=m: 4 * np.sqrt(p * (1 - p) / m)  # noqa: E731
        clean = np.asarray(env.digits) < 5
        label_flip = np.mean(np.asarray(env.labels) != clean)
        color_flip = np.mean(np.asarray(env.colors) != np.asarray(env.labels))
        assert abs(label_flip - 0.25) < se(0.25), label_flip
        assert abs(color_flip - e) < se(e), (color_flip, e)
        # colour and label-noise draws are independent
        joint = np.mean(
            (np.asarray(env.labels) != clean) & (np.asarray(env.colors) != np.asarray(env.labels))
        )
        assert abs(joint - 0.25 * e) < se(0.25 * e)
    # colour agrees with the label 85 % of the time over both training environments
    agree = np.mean(np.concatenate([np.asarray(x.colors) == np.asarray(x.labels) for x in d.train]))
    assert abs(agree - 0.85) < 0.01


def test_determinism_and_vmap(mnist):
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    a = C.colored_mnist(k1, mnist.images, mnist.labels)
    b = C.colored_mnist(k1, mnist.images, mnist.labels)
    c = C.colored_mnist(k2, mnist.images, mnist.labels)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.train[0].digits, c.train[0].digits)  # reshuffled per restart
    stacked = jax.vmap(lambda k: C.colored_mnist(k, mnist.images, mnist.labels))(
        jnp.stack([k1, k2])
    )
    np.testing.assert_array_equal(stacked.train[1].images[1], c.train[1].images)
    np.testing.assert_array_equal(stacked.test.labels[0], a.test.labels)


def test_probe_inputs(mnist, key):
    test = C.colored_mnist(key, mnist.images, mnist.labels).test
    p = C.probe_inputs(test)
    assert set(p) == {"digit_gray", "digit_color", "blank_gray", "blank_color"}
    np.testing.assert_allclose(p["digit_gray"].sum(1), test.images.sum(1))
    np.testing.assert_allclose(p["digit_gray"][:, 0], p["digit_gray"][:, 1])
    mean = float(test.images.sum(1).mean())
    np.testing.assert_allclose(p["blank_gray"], mean / 2)
    colors = np.asarray(test.colors).astype(int)
    bc = np.asarray(p["blank_color"])
    np.testing.assert_allclose(bc[np.arange(len(colors)), colors], mean)
    np.testing.assert_array_equal(bc[np.arange(len(colors)), 1 - colors], 0.0)


def test_bad_input():
    with pytest.raises(ValueError, match="images, digits"):
        C.make_environment(jax.random.PRNGKey(0), np.zeros((4, 14, 14), np.uint8), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="e: a probability"):
        C.make_environment(jax.random.PRNGKey(0), np.zeros((4, 28, 28), np.uint8), np.zeros(4), 1.5)
    with pytest.raises(ValueError, match="images"):
        C.grayscale(jnp.zeros((3, 392)))


@pytest.fixture(scope="module")
def stacked(mnist):
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    return jax.vmap(lambda k: C.colored_mnist(k, mnist.images[:240], mnist.labels[:240]))(keys)


def test_environment_batches(stacked):
    b = C.environment_batches(stacked)
    assert b["x1"].shape == (2, 100, 392) and b["y2"].shape == (2, 100)
    assert b["xt"].shape == (2, 40, 392) and "xv" not in b and "xz" not in b
    np.testing.assert_allclose(b["x1"], stacked.train[0].flat, rtol=1e-6)
    np.testing.assert_array_equal(b["yt"], stacked.test.labels)
    gray = C.environment_batches(stacked, grayscale=True)
    np.testing.assert_allclose(gray["x2"], C.grayscale(stacked.train[1].images), rtol=1e-6)
    # validation: the last 10 % of each environment; feature-response examples alternate
    v = C.environment_batches(stacked, val_frac=0.1, n_z=7)
    assert v["x1"].shape == (2, 90, 392) and v["xv"].shape == (2, 20, 392)
    np.testing.assert_array_equal(v["xv"][:, :10], b["x1"][:, 90:])
    np.testing.assert_array_equal(v["xz"][:, 0], b["x1"][:, 0])
    np.testing.assert_array_equal(v["xz"][:, 1], b["x2"][:, 0])
    np.testing.assert_array_equal(v["yz"][:, 6], b["y1"][:, 3])
    assert v["xz"].shape == (2, 7, 392)
    with pytest.raises(ValueError, match="val_frac"):
        C.environment_batches(stacked, val_frac=0.6)
    with pytest.raises(ValueError, match="n_z: 201 .* at most 200"):
        C.environment_batches(stacked, n_z=201)


def test_probe_batches_and_examples(stacked):
    p = C.probe_batches(stacked)
    raw = jax.vmap(C.probe_inputs)(stacked.test)
    assert set(p) == set(raw) and p["digit_color"].shape == (2, 40, 392)
    np.testing.assert_allclose(p["digit_color"], stacked.test.flat, rtol=1e-6)
    g = C.probe_batches(stacked, grayscale=True)
    # colour removed: the gray and the coloured digit are the same grayscale input
    np.testing.assert_allclose(g["digit_gray"], g["digit_color"], atol=1e-6)
    ex = C.probe_examples(stacked, restart=1)
    assert ex is not None and ex["digit_color"].shape == (4, 2, 14, 14)
    lit = ex["digit_color"].sum(axis=(2, 3)) > 0  # (4, 2): which channel each example lights
    assert lit[:2, 1].all() and lit[2:, 0].all()


def test_load_images_and_recorded_probe_examples():
    images, digits, info = C.load_images(source="embedded", max_images=240)
    assert images.shape[0] == digits.shape[0] == info["n_images"] == 240
    assert (info["n_train"], info["n_test"]) == (200, 40) and "first 240 used" in info[
        "description"
    ]
    key = jax.random.PRNGKey(5)
    envs = jax.vmap(lambda k: C.colored_mnist(k, images, digits))(key[None])
    rebuilt = C.recorded_probe_examples(info, key)
    for k, v in C.probe_examples(envs).items():
        np.testing.assert_array_equal(rebuilt[k], v)
    assert C.recorded_probe_examples({"source": "files", "origin": "/nonexistent"}, key) is None
