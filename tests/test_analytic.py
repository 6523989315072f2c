"""Analytic ReLU NTK: closed forms, and the empirical NTK of wide NTK-parametrised MLPs converging to it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.analytic import init_ntk_mlp, relu_ntk
from ntkdyn.tangent import NTKMethod, empirical_ntk


@pytest.fixture
def x(key):
    return jax.random.normal(key, (6, 4))


def test_linear_model_kernel(x):
    theta = relu_ntk(x, depth=0, sigma_w=1.5, sigma_b=0.3)
    np.testing.assert_allclose(theta, 2.25 * x @ x.T / 4 + 0.09, rtol=1e-12)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_diagonal_closed_form(x, depth):
    """With σ_b = 0 each ReLU layer halves the variance: Θ(x, x) = (L + 1)(σ_w²/2)^L σ_w²|x|²/d₀."""
    sw = 1.3
    theta, nngp = relu_ntk(x, depth=depth, sigma_w=sw, return_nngp=True)
    base = sw**2 * jnp.sum(x * x, axis=1) / 4
    np.testing.assert_allclose(
        jnp.diag(theta), (depth + 1) * (sw**2 / 2) ** depth * base, rtol=1e-12
    )
    np.testing.assert_allclose(jnp.diag(nngp), (sw**2 / 2) ** depth * base, rtol=1e-12)


def test_one_hidden_layer_against_monte_carlo(key, x):
    """Σ² = σ_w² E[relu(u) relu(v)] by sampling the first-layer Gaussian process."""
    sw, sb = 1.2, 0.4
    _, nngp = relu_ntk(x, depth=1, sigma_w=sw, sigma_b=sb, return_nngp=True)
    cov = sw**2 * x @ x.T / 4 + sb**2
    L = jnp.linalg.cholesky(cov + 1e-12 * jnp.eye(6))
    u = L @ jax.random.normal(key, (6, 400_000))
    mc = sw**2 * (jax.nn.relu(u) @ jax.nn.relu(u).T) / u.shape[1] + sb**2
    np.testing.assert_allclose(nngp, mc, rtol=0.02, atol=0.01)


def test_symmetry_and_cross_kernel(key, x):
    x2 = jax.random.normal(jax.random.PRNGKey(7), (3, 4))
    full = relu_ntk(jnp.concatenate([x, x2]), depth=2, sigma_b=0.1)
    np.testing.assert_allclose(relu_ntk(x, x2, depth=2, sigma_b=0.1), full[:6, 6:], rtol=1e-12)
    np.testing.assert_allclose(full, full.T, rtol=1e-12)


def _relative_errors(x, widths, seeds, sigma_b):
    exact = relu_ntk(x, depth=2, sigma_w=1.4, sigma_b=sigma_b)
    errs = []
    for w in widths:
        e = []
        for s in range(seeds):
            apply_fn, params = init_ntk_mlp(
                jax.random.PRNGKey(100 + s), 4, [w, w], sigma_w=1.4, sigma_b=sigma_b
            )
            emp = empirical_ntk(apply_fn, params, x, method=NTKMethod.NTK_VECTOR_PRODUCTS)
            e.append(float(jnp.linalg.norm(emp - exact) / jnp.linalg.norm(exact)))
        errs.append(np.mean(e))
    return errs


def test_wide_empirical_ntk_approaches_analytic(x):
    errs = _relative_errors(x, [16, 128, 1024], seeds=2, sigma_b=0.2)
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.1
    assert errs[2] < errs[0] / 3  # O(1/√width): √64 = 8 in the limit


@pytest.mark.slow
def test_convergence_rate_is_inverse_sqrt_width(x):
    widths = [64, 256, 1024, 4096]
    errs = _relative_errors(x, widths, seeds=4, sigma_b=0.0)
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    assert -0.7 < slope < -0.3


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(depth=-1), "depth"),
        (dict(depth=1, sigma_w=0.0), "sigma_w"),
        (dict(depth=1, sigma_b=-1.0), "sigma_b"),
    ],
)
def test_bad_input_names_argument(x, kw, match):
    with pytest.raises(ValueError, match=match):
        relu_ntk(x, **kw)
    with pytest.raises(ValueError, match="x2"):
        relu_ntk(x, x[:, :3], depth=1)
    with pytest.raises(ValueError, match="x1"):
        relu_ntk(jnp.ones(3), depth=1)
