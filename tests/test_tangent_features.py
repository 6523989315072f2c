"""Tangent features Φ: per-example gradients of any pure apply_fn, in ravel_pytree order."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from tangent_models import F64, custom, inputs, mlp, reference_phi

from ntkdyn.tangent import tangent_features


@pytest.fixture
def xs():
    return inputs()


def test_tangent_features_match_per_example_gradients(key, xs):
    x, _ = xs
    for apply_fn, params in (mlp(key), custom(key)):
        phi = tangent_features(apply_fn, params, x)
        assert phi.shape == (9, ravel_pytree(params)[0].size)
        np.testing.assert_allclose(phi, reference_phi(apply_fn, params, x), **F64)
        np.testing.assert_allclose(tangent_features(apply_fn, params, x, batch_size=4), phi, **F64)


def test_tangent_features_linearize_outputs(key, xs):
    """Φ dθ is the first-order change of the outputs (column order = ravel_pytree order)."""
    x, _ = xs
    apply_fn, params = custom(key)
    flat, unravel = ravel_pytree(params)
    d = 1e-6 * jax.random.normal(jax.random.PRNGKey(9), flat.shape)
    df = apply_fn(unravel(flat + d), x) - apply_fn(unravel(flat - d), x)
    np.testing.assert_allclose(
        2 * tangent_features(apply_fn, params, x) @ d, df, rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda f, p, x: tangent_features(lambda p, x: jnp.stack([f(p, x)] * 2, 1), p, x),
            "output_axis",
        ),
        (lambda f, p, x: tangent_features(f, p, x, output_axis=0), "output_axis"),
        (lambda f, p, x: tangent_features(f, p, x[:, :2]), "params"),
        (lambda f, p, x: tangent_features(f, p, x[0, 0]), "x:"),
        (lambda f, p, x: tangent_features(f, {"w": 1.0}, x), "params"),
        (lambda f, p, x: tangent_features(f, p, x.at[0, 0].set(jnp.nan)), "x:"),
        (lambda f, p, x: tangent_features(f, p, x, batch_size=0), "batch_size"),
    ],
)
def test_bad_input_names_argument(key, xs, call, match):
    apply_fn, params = mlp(key)
    with pytest.raises(ValueError, match=match):
        call(apply_fn, params, xs[0])
