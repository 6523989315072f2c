"""Linearized model and its exact training: tracked z(t) equals the theory core's GD in feature space."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ntkdyn.dynamics import ce_field, gd, sd_field
from ntkdyn.linearized import linearize, train_gd
from ntkdyn.models.mlp import init_mlp
from ntkdyn.objectives import ERM, ClassConditionalSD, SpectralDecoupling, theory_lam
from ntkdyn.tangent import feature_spectrum, tangent_features


@pytest.fixture
def problem(key):
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (10, 2))
    y = jnp.where(x[:, 0] + 0.3 * x[:, 1] > 0, 1.0, -1.0)
    apply_fn, params = init_mlp(k2, 2, [12], dtype=jnp.float64)  # p = 49 > n = 10
    return apply_fn, params, x, y


def test_linearize_is_first_order_taylor(problem):
    apply_fn, params, x, _ = problem
    f_lin = linearize(apply_fn, params)
    flat, unravel = ravel_pytree(params)
    d = 0.3 * jax.random.normal(jax.random.PRNGKey(5), flat.shape)
    expected = apply_fn(params, x)[:, 0] + tangent_features(apply_fn, params, x) @ d
    np.testing.assert_allclose(f_lin(unravel(flat + d), x)[:, 0], expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(f_lin(params, x), apply_fn(params, x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "objective, wd, field",
    [(ERM(), 0.005, ce_field), (SpectralDecoupling(coef=0.025), 0.0, sd_field)],
)
def test_linearized_training_equals_theory_gd(problem, objective, wd, field):
    """center=True removes f(θ₀): margins Y(f_lin − f(θ₀)) = YΦ(θ − θ₀) = Uz, as in the theory.

    The objective's theory λ: n·wd for weight decay, 2·coef for SD (theory_lam), 0.05 both here.
    """
    apply_fn, params, x, y = problem
    eta, steps, every = 0.05, 200, 20
    got_field, lam = theory_lam(objective, num_examples=x.shape[0], weight_decay=wd)
    assert got_field is field and lam == pytest.approx(0.05)
    spec = feature_spectrum(apply_fn, params, x, y)
    assert spec.s.shape == (10,)  # full rank: U spans the margins
    trace = train_gd(
        apply_fn,
        params,
        x,
        y,
        eta=eta,
        num_steps=steps,
        save_every=every,
        linearized=True,
        objective=objective,
        weight_decay=wd,
    )
    z_tracked = trace.responses(y, spec.U)
    theory = gd(
        field, spec.to_system(lam), jnp.zeros(10), eta=eta, num_steps=steps, save_every=every
    )
    np.testing.assert_allclose(trace.t, theory.t, rtol=1e-12)
    assert float(jnp.max(jnp.abs(theory.z[-1]))) > 0.1  # it moved
    np.testing.assert_allclose(z_tracked, theory.z, rtol=1e-7, atol=1e-8)


def test_nonlinear_training_close_to_linearized_early(key):
    """A wide network stays close to its linearization at small times (lazy regime)."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (8, 2))
    y = jnp.where(x[:, 1] > 0, 1.0, -1.0)
    apply_fn, params = init_mlp(k2, 2, [1024], dtype=jnp.float64)
    spec = feature_spectrum(apply_fn, params, x, y)
    kw = dict(eta=0.02, num_steps=20, save_every=10)
    z_nl = train_gd(apply_fn, params, x, y, **kw).responses(y, spec.U)
    z_lin = train_gd(apply_fn, params, x, y, linearized=True, **kw).responses(y, spec.U)
    rel = float(jnp.linalg.norm(z_nl[-1] - z_lin[-1]) / jnp.linalg.norm(z_lin[-1]))
    assert rel < 0.05


def test_uncentered_training_uses_raw_outputs(problem):
    apply_fn, params, x, y = problem
    trace = train_gd(apply_fn, params, x, y, eta=0.1, num_steps=4, linearized=True, center=False)
    np.testing.assert_allclose(trace.outputs[0], trace.f0, atol=0)
    # one step by hand: θ₁ = θ₀ + η Φᵀ (y σ(−y f₀))
    phi = tangent_features(apply_fn, params, x)
    out1 = trace.f0 + 0.1 * phi @ (phi.T @ (y * jax.nn.sigmoid(-y * trace.f0)))
    np.testing.assert_allclose(trace.outputs[1], out1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(eta=0.0), "eta"),
        (dict(num_steps=0), "num_steps"),
        (dict(save_every=3), "save_every"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(objective=ClassConditionalSD()), "objective"),
    ],
)
def test_bad_input_names_argument(problem, kw, match):
    apply_fn, params, x, y = problem
    args = dict(eta=0.1, num_steps=10, save_every=1) | kw
    with pytest.raises(ValueError, match=match):
        train_gd(apply_fn, params, x, y, **args)
    with pytest.raises(ValueError, match="y"):
        train_gd(apply_fn, params, x, jnp.arange(10), eta=0.1, num_steps=2)
