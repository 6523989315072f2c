"""Empirical NTK: every method against the Jacobian contraction and the per-example reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from flax import nnx
from tangent_models import F64, custom, inputs, mlp, reference_phi

from ntkdyn.models.cnn import init_cnn
from ntkdyn.models.mlp import MLP, DenseApply, pure
from ntkdyn.tangent import NTKMethod, empirical_ntk, tangent_features


@pytest.fixture
def xs():
    return inputs()


@pytest.mark.parametrize("model", ["mlp", "mlp_nobias_tanh", "custom", "cnn"])
@pytest.mark.parametrize("method", list(NTKMethod))
def test_every_method_matches_jacobian_contraction(key, xs, model, method):
    x1, x2 = xs
    if model == "mlp":
        apply_fn, params = mlp(key)
    elif model == "mlp_nobias_tanh":
        k = jax.random.split(key, 3)
        params = [
            (jax.random.normal(k[0], (3, 8)), None),
            (jax.random.normal(k[1], (8, 4)), jnp.ones(4)),
            (jax.random.normal(k[2], (4, 1)), None),
        ]
        apply_fn = DenseApply(jnp.tanh)
    elif model == "custom":
        apply_fn, params = custom(key)
    else:
        apply_fn, params = init_cnn(key, 1, (2, 3), dtype=jnp.float64)
        x1 = jax.random.normal(key, (5, 4, 4, 1))
        x2 = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 1))
    if method is NTKMethod.STRUCTURED and model in ("custom", "cnn"):
        with pytest.raises(ValueError, match="method"):
            empirical_ntk(apply_fn, params, x1, method=method)
        return
    phi1 = reference_phi(apply_fn, params, x1, (model, 1))
    phi2 = reference_phi(apply_fn, params, x2, (model, 2))
    for a, b, ref in ((x1, None, phi1 @ phi1.T), (x1, x2, phi1 @ phi2.T)):
        theta = empirical_ntk(apply_fn, params, a, b, method=method)
        assert theta.shape == ref.shape
        np.testing.assert_allclose(theta, ref, **F64)
        # batching is model-independent code; spare CNN compiles
        for bs in (2,) if model != "cnn" else ():
            np.testing.assert_allclose(
                empirical_ntk(apply_fn, params, a, b, method=method, batch_size=bs),
                theta,
                rtol=1e-12,
                atol=1e-12,
            )


def test_float32_nnx_mlp_methods_agree(key, xs):
    x, _ = xs
    apply_fn, params = pure(MLP(3, [64, 64], rngs=nnx.Rngs(key)))
    x = x.astype(jnp.float32)
    ref = empirical_ntk(apply_fn, params, x)
    assert ref.dtype == jnp.float32
    for m in (NTKMethod.NTK_VECTOR_PRODUCTS, NTKMethod.STRUCTURED):
        np.testing.assert_allclose(
            empirical_ntk(apply_fn, params, x, method=m), ref, rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("method", list(NTKMethod))
def test_per_class_outputs(key, xs, method):
    x1, x2 = xs
    apply_fn, params = mlp(key, out=3)
    phi1 = tangent_features(apply_fn, params, x1, output_axis=-1)
    phi2 = tangent_features(apply_fn, params, x2, output_axis=-1)
    assert phi1.shape[:2] == (9, 3)
    ref = jnp.einsum("ikp,jlp->ijkl", phi1, phi2)
    theta = empirical_ntk(apply_fn, params, x1, x2, method=method, output_axis=-1, batch_size=2)
    assert theta.shape == (9, 4, 3, 3)
    np.testing.assert_allclose(theta, ref, **F64)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f, p, x: empirical_ntk(f, p, x, x[:, :2]), "x2"),
        (lambda f, p, x: empirical_ntk(f, p, x, method="structured"), "method"),
        (lambda f, p, x: empirical_ntk(f, p, x, batch_size=0), "batch_size"),
        (lambda f, p, x: empirical_ntk(f, p, x[0, 0]), "x1"),
    ],
)
def test_bad_input_names_argument(key, xs, call, match):
    apply_fn, params = mlp(key)
    with pytest.raises(ValueError, match=match):
        call(apply_fn, params, xs[0])


def test_linen_apply_is_accepted(key, xs):
    """A Flax Linen ``apply`` over its variables dict is just another pure apply_fn."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.relu(nn.Dense(6)(x)))

    x1, x2 = xs
    variables = Net().init(key, x1)
    apply_fn = Net().apply
    phi1 = reference_phi(apply_fn, variables, x1)
    phi2 = reference_phi(apply_fn, variables, x2)
    ref = np.asarray(phi1, np.float64) @ np.asarray(phi2, np.float64).T
    for method in (NTKMethod.JACOBIAN_CONTRACTION, NTKMethod.NTK_VECTOR_PRODUCTS):
        theta = empirical_ntk(apply_fn, variables, x1, x2, method=method)
        np.testing.assert_allclose(theta, ref, **tol(jnp.float32))


def test_cached_features_give_the_same_gram_matrix():
    import flax.linen as nn

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(3, (3, 3))(x))
            return nn.Dense(1)(x.mean(axis=(1, 2)))[:, 0]

    x = np.random.default_rng(3).normal(size=(11, 5, 5, 2)).astype(np.float32)
    module = Small()
    params = module.init(jax.random.PRNGKey(1), x[:1])
    apply_fn = module.apply
    ref = np.asarray(empirical_ntk(apply_fn, params, x, batch_size=4))
    cached = np.asarray(empirical_ntk(apply_fn, params, x, batch_size=4, cache_features=True))
    np.testing.assert_allclose(cached, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cache_features"):
        empirical_ntk(apply_fn, params, x, x, batch_size=4, cache_features=True)
    with pytest.raises(ValueError, match="cache_features"):
        empirical_ntk(
            apply_fn, params, x, method=NTKMethod.NTK_VECTOR_PRODUCTS, cache_features=True
        )
