"""Two-moons data: sklearn's construction, the paper's transformation, validation."""

import numpy as np
import pytest

from ntkdyn.data.moons import make_moons, two_moons


def _authors_transform(X, y01, delta, rotation):
    """The published steps, written as literally as possible (slow reference)."""
    n = X.shape[0]
    y_pm1 = (2.0 * y01 - 1.0)[:, None]
    X = X - np.concatenate([0.5 * np.ones((n, 1)), y_pm1 * 0.3], 1)
    X[:, 1] = X[:, 1] - X[:, 1].mean()
    X[:, 1] = X[:, 1] * np.sign(-X[:, 1] * y_pm1[:, 0])
    X[:, 1] = X[:, 1] - y_pm1[:, 0] * delta
    X = X[:, ::-1].copy()
    if rotation:
        t = np.radians(rotation)
        X = X @ np.array(((np.cos(t), -np.sin(t)), (np.sin(t), np.cos(t))))
    return X, y_pm1[:, 0]


@pytest.mark.parametrize("n", [2, 7, 300])
def test_make_moons_noiseless_geometry(n):
    X, y = make_moons(n, noise=0.0, seed=0)
    assert X.shape == (n, 2) and y.shape == (n,)
    assert (y == 0).sum() == n // 2 and (y == 1).sum() == n - n // 2
    outer, inner = X[y == 0], X[y == 1]
    np.testing.assert_allclose(np.hypot(*outer.T), 1.0, atol=1e-12)
    assert np.all(outer[:, 1] >= -1e-12)
    np.testing.assert_allclose(np.hypot(inner[:, 0] - 1.0, inner[:, 1] - 0.5), 1.0, atol=1e-12)
    assert np.all(inner[:, 1] <= 0.5 + 1e-12)
    # Evenly spaced angles on [0, π], endpoints included.
    t = np.sort(np.arctan2(outer[:, 1], outer[:, 0]))
    np.testing.assert_allclose(t, np.linspace(0, np.pi, n // 2), atol=1e-12)


def test_make_moons_noise_statistics():
    X0, y0 = make_moons(20000, noise=0.0, seed=3)
    X1, y1 = make_moons(20000, noise=0.2, seed=3)
    np.testing.assert_array_equal(y0, y1)  # the shuffle is drawn before the noise
    eps = X1 - X0
    assert abs(eps.mean()) < 0.005 and abs(eps.std() - 0.2) < 0.005


def test_make_moons_matches_scikit_learn():
    datasets = pytest.importorskip("sklearn.datasets")
    for n, noise, seed in [(300, 0.1, 0), (7, 0.3, 5)]:
        Xa, ya = datasets.make_moons(n_samples=n, noise=noise, random_state=seed)
        Xb, yb = make_moons(n, noise=noise, seed=seed)
        np.testing.assert_array_equal(Xa, Xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("delta, rotation", [(0.1, 0.0), (-0.1, 0.0), (0.1, 45.0), (0.0, 30.0)])
def test_two_moons_matches_the_published_steps(delta, rotation):
    X, y = two_moons(n=300, noise=0.1, delta=delta, rotation_deg=rotation, seed=4)
    Xr, yr = _authors_transform(*make_moons(300, noise=0.1, seed=4), delta, rotation)
    assert X.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_allclose(X, Xr, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, yr)


def test_two_moons_margin():
    for seed in range(3):
        X, y = two_moons(delta=0.1, seed=seed)
        assert set(np.unique(y)) == {-1.0, 1.0}
        # Class +1 left of -Δ, class -1 right of +Δ: separable with a gap of at least 2Δ.
        assert X[y == 1, 0].max() <= -0.1 + 1e-6 and X[y == -1, 0].min() >= 0.1 - 1e-6
        X, y = two_moons(delta=-0.1, seed=seed)
        assert X[y == 1, 0].max() > X[y == -1, 0].min()  # the classes overlap


def test_rotation_is_a_rotation():
    X0, y0 = two_moons(seed=1)
    X, y = two_moons(seed=1, rotation_deg=45.0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), np.linalg.norm(X0, axis=1), rtol=1e-5)
    c = s = np.sqrt(0.5)
    np.testing.assert_allclose(X, X0 @ np.array([[c, -s], [s, c]]), atol=1e-6)


def test_deterministic_and_seeded():
    a = two_moons(seed=7)
    b = two_moons(seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[0], two_moons(seed=8)[0])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n=1), "n:"),
        (dict(n=2.5), "n:"),
        (dict(noise=-0.1), "noise"),
        (dict(noise=np.nan), "noise"),
        (dict(delta=np.inf), "delta"),
        (dict(rotation_deg=np.nan), "rotation_deg"),
    ],
)
def test_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        two_moons(seed=0, **kw)
