"""Spectrum of YΦ: reconstruction, truncation, float64 decomposition, the FeatureSystem it gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from flax import nnx
from tangent_models import F64, inputs, mlp

from ntkdyn.models.mlp import MLP, pure
from ntkdyn.systems import FeatureSystem
from ntkdyn.tangent import feature_spectrum, signed_labels, tangent_features


@pytest.fixture
def xs():
    return inputs()


def test_spectrum_reconstructs_signed_features(key, xs):
    x, _ = xs
    apply_fn, params = mlp(key, hidden=(16,))
    y = jnp.array([1, -1, 1, 1, -1, -1, 1, -1, 1])
    spec, V = feature_spectrum(apply_fn, params, x, y, return_V=True)
    U, s = spec
    YPhi = y[:, None] * tangent_features(apply_fn, params, x)
    assert U.shape == (9, 9) and bool(jnp.all(jnp.diff(s) <= 0))
    np.testing.assert_allclose((U * s) @ V.T, YPhi, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(V.T @ V, np.eye(9), atol=1e-8)
    np.testing.assert_allclose(s, np.linalg.svd(np.asarray(YPhi), compute_uv=False), rtol=1e-8)
    assert bool(jnp.all(U.sum(axis=0) >= 0))  # sign convention u_jᵀ1 ≥ 0
    np.testing.assert_allclose(spec.label_alignment(), jnp.abs(U.sum(0)), **F64)
    # {0, 1} labels give the same spectrum
    spec01 = feature_spectrum(apply_fn, params, x, (y + 1) // 2)
    np.testing.assert_allclose(spec01.s, s, **F64)
    system = spec.to_system(0.01)
    assert isinstance(system, FeatureSystem) and system.d == 9


def test_spectrum_truncates_rank_deficient_features(key):
    """A linear model on 2-D inputs has p = 3 < n: only 3 directions survive."""
    x = jax.random.normal(key, (10, 2))
    y = jnp.sign(x[:, 0] + 0.1)
    params = {"w": jnp.array([0.3, -0.2]), "b": jnp.array(0.5)}
    spec, V = feature_spectrum(lambda p, x: x @ p["w"] + p["b"], params, x, y, return_V=True)
    assert spec.s.shape == (3,) and V.shape == (3, 3)
    YPhi = y[:, None] * jnp.concatenate([jnp.ones((10, 1)), x], axis=1)  # ravel order: b, w
    np.testing.assert_allclose((spec.U * spec.s) @ V.T, YPhi, rtol=1e-8, atol=1e-8)


def test_spectrum_float32_model_is_decomposed_in_float64(key, xs):
    x, _ = xs
    apply_fn, params = pure(MLP(3, [32], rngs=nnx.Rngs(key)))
    y = jnp.where(jnp.arange(9) % 2 == 0, 1, -1)
    U, s = feature_spectrum(apply_fn, params, x.astype(jnp.float32), y)
    assert U.dtype == jnp.float64  # x64 on in tests: results come back in float64
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-12)


def test_signed_labels_map_zero_one_and_keep_plus_minus_one():
    np.testing.assert_array_equal(signed_labels([0, 1, 1], 3), [-1.0, 1.0, 1.0])
    np.testing.assert_array_equal(signed_labels([[-1], [1]], 2), [-1.0, 1.0])
    with pytest.raises(ValueError, match="labels: labels must lie"):
        signed_labels([0, 2], 2, name="labels")


def test_tolerances_by_dtype_used():
    assert tol(jnp.float32)["rtol"] > tol(jnp.float64)["rtol"]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.arange(9)), "y:"),
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.ones(4)), "y:"),
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.ones(9), tol=2.0), "tol"),
        (lambda f, p, x: feature_spectrum(f, p, x[0, 0], jnp.ones(9)), "x:"),
    ],
)
def test_bad_input_names_argument(key, xs, call, match):
    apply_fn, params = mlp(key)
    with pytest.raises(ValueError, match=match):
        call(apply_fn, params, xs[0])
