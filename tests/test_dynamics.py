"""Tests of the feature-response dynamics: exactness against GD on θ, closed forms, vmap, failures."""

import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.dynamics import (
    RESULTS,
    SolverError,
    ce_field,
    dual_field,
    dual_to_z,
    gd,
    integrate,
    quadratic_ce_field,
    sd_field,
    z_to_dual,
)
from ntkdyn.systems import FeatureSystem, rotation_system, system_from_matrix


def _theta_gd(Phi, y, theta0, eta, num_steps, lam, penalty):
    """Slow reference: plain GD on θ of Σ softplus(−y Φθ) + (λ/2)·penalty."""

    def loss(theta):
        out = Phi @ theta
        reg = theta @ theta if penalty == "weight" else out @ out
        return jnp.sum(jax.nn.softplus(-y * out)) + 0.5 * lam * reg

    grad = jax.jit(jax.grad(loss))
    thetas = [theta0]
    theta = theta0
    for _ in range(num_steps):
        theta = theta - eta * grad(theta)
        thetas.append(theta)
    return jnp.stack(thetas)


@pytest.mark.parametrize("field,penalty", [(ce_field, "weight"), (sd_field, "output")])
def test_gd_in_z_equals_gd_on_theta(key, field, penalty):
    n, p, lam, eta, K = 6, 9, 0.05, 0.1, 300
    k1, k2 = jax.random.split(key)
    Phi = jax.random.normal(k1, (n, p)) / math.sqrt(p)
    y = jnp.where(jax.random.bernoulli(k2, 0.5, (n,)), 1.0, -1.0)
    system, V = system_from_matrix(y[:, None] * Phi, lam, return_V=True)
    thetas = _theta_gd(Phi, y, jnp.zeros(p), eta, K, lam, penalty)
    z_ref = (thetas @ V) * system.s
    traj = gd(field, system, jnp.zeros(system.d), eta=eta, num_steps=K)
    np.testing.assert_allclose(traj.z, z_ref, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(traj.t, eta * np.arange(K + 1))
    assert bool(traj.success)


def test_gd_sampling_and_time_axis():
    system = rotation_system([4.0, 2.0], 0.5, 0.01)
    full = gd(ce_field, system, jnp.zeros(2), eta=0.05, num_steps=200)
    sub = gd(ce_field, system, jnp.zeros(2), eta=0.05, num_steps=200, save_every=20)
    assert sub.z.shape == (11, 2)
    np.testing.assert_allclose(sub.z, full.z[::20], rtol=1e-13)
    np.testing.assert_allclose(sub.t, full.t[::20])
    np.testing.assert_array_equal(sub.z[0], 0.0)


def test_ode_overlays_gd_for_small_steps():
    system = rotation_system([5.0, 2.0], 0.5, 0.01)
    ode = integrate(ce_field, system, jnp.zeros(2), t1=20.0, num_points=11)
    fine = gd(ce_field, system, jnp.zeros(2), eta=1e-3, num_steps=20_000, save_every=2000)
    np.testing.assert_allclose(ode.t, fine.t, rtol=1e-12)
    # GD is a first-order discretisation of the flow: error O(η).
    np.testing.assert_allclose(ode.z, fine.z, atol=5e-3)
    assert bool(ode.success) and int(ode.num_steps) > 0


def test_ode_eta_rescales_time():
    system = rotation_system([3.0, 2.0], 0.5, 0.01)
    a = integrate(ce_field, system, jnp.zeros(2), t1=10.0, eta=1.0, num_points=5)
    b = integrate(ce_field, system, jnp.zeros(2), t1=200.0, eta=0.05, num_points=5)
    np.testing.assert_allclose(a.z, b.z, rtol=1e-7, atol=1e-9)


def test_quadratic_field_closed_form_fixed_point():
    alpha0 = 0.3
    system = rotation_system([6.0, 2.0], 0.5, 0.01)
    field = functools.partial(quadratic_ce_field, alpha0=alpha0)
    traj = integrate(field, system, jnp.zeros(2), t1=5000.0, num_points=2)
    a = 1 / (alpha0 * (1 - alpha0))
    b = math.log((1 - alpha0) / alpha0) + 1 / (1 - alpha0)
    s = system.s
    expected = b * s**2 * system.U.sum(0) / (a * system.lam + s**2)
    np.testing.assert_allclose(traj.final, expected, rtol=1e-7)
    # Its σ replacement is the tangent of σ(−m) at the expansion point of the entropy.
    m0 = math.log((1 - alpha0) / alpha0)
    z_m0 = jnp.linalg.solve(system.U, jnp.full(2, m0))
    np.testing.assert_allclose(
        quadratic_ce_field(z_m0, system, alpha0), ce_field(z_m0, system), rtol=1e-12
    )


def test_dual_flow_reaches_primal_fixed_point():
    system = rotation_system([4.0, 2.0], 0.5, 0.01)
    primal = integrate(ce_field, system, jnp.zeros(2), t1=3000.0, num_points=2)
    alpha0 = jnp.full(2, 1e-6)
    dual = integrate(dual_field, system, alpha0, t1=1.0, num_points=2)
    np.testing.assert_allclose(dual_to_z(dual.final, system), primal.final, rtol=1e-6)
    np.testing.assert_allclose(z_to_dual(primal.final, system), dual.final, rtol=1e-6)


def test_sd_fixed_point_does_not_depend_on_s():
    finals = [
        integrate(
            sd_field, rotation_system([s1, 2.0], 0.5, 0.002), jnp.zeros(2), t1=2000.0, num_points=2
        ).final
        for s1 in (2.0, 5.0, 8.0)
    ]
    np.testing.assert_allclose(finals[0], finals[1], rtol=1e-7)
    np.testing.assert_allclose(finals[0], finals[2], rtol=1e-7)


def test_vmap_over_systems_equals_loop():
    s1 = jnp.array([2.0, 3.5, 5.0, 8.0])
    deltas = jnp.array([0.0, 0.2, 0.5, 0.7])
    systems = [rotation_system([a, 2.0], d, 0.01) for a, d in zip(s1, deltas, strict=False)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *systems)
    z0 = jnp.zeros(2)
    v_gd = jax.vmap(lambda sys: gd(ce_field, sys, z0, eta=0.05, num_steps=400, save_every=40))(
        batch
    )
    v_ode = jax.vmap(lambda sys: integrate(sd_field, sys, z0, t1=20.0, num_points=6))(batch)
    for i, system in enumerate(systems):
        np.testing.assert_allclose(
            v_gd.z[i],
            gd(ce_field, system, z0, eta=0.05, num_steps=400, save_every=40).z,
            rtol=1e-13,
        )
        np.testing.assert_allclose(
            v_ode.z[i],
            integrate(sd_field, system, z0, t1=20.0, num_points=6).z,
            rtol=1e-9,
            atol=1e-12,
        )
    assert bool(jnp.all(v_gd.success)) and bool(jnp.all(v_ode.success))
    # Inside an outer jit too (z0 is then a closed-over constant).
    j_gd = jax.jit(
        jax.vmap(lambda sy: gd(ce_field, sy, z0, eta=0.05, num_steps=400, save_every=40))
    )(batch)
    np.testing.assert_allclose(j_gd.z, v_gd.z, rtol=1e-13)


def test_float32_follows_input_dtype():
    system = jax.tree.map(lambda x: x.astype(jnp.float32), rotation_system([4.0, 2.0], 0.5, 0.01))
    traj = gd(ce_field, system, jnp.zeros(2, jnp.float32), eta=0.05, num_steps=100)
    assert traj.z.dtype == jnp.float32 and traj.t.dtype == jnp.float32


# ---- failures -----------------------------------------------------------------------------------


def test_gd_divergence_raises_naming_eta():
    system = rotation_system([8.0, 2.0], 0.5, 0.01)
    with pytest.raises(SolverError, match=r"eta.*got eta=300"):
        gd(ce_field, system, jnp.zeros(2), eta=300.0, num_steps=2000)
    traj = gd(ce_field, system, jnp.zeros(2), eta=300.0, num_steps=2000, throw=False)
    assert not bool(traj.success) and traj.result == RESULTS.gd_diverged
    # SD diverges once η·λ·s_max² > 2.
    with pytest.raises(SolverError, match="diverged"):
        gd(
            sd_field,
            system._replace(lam=jnp.asarray(0.002)),
            jnp.zeros(2),
            eta=20.0,
            num_steps=2000,
        )


def test_gd_divergence_under_vmap_is_reported():
    systems = jax.tree.map(
        lambda *x: jnp.stack(x), *[rotation_system([a, 2.0], 0.5, 0.01) for a in (2.0, 8.0)]
    )
    etas = jnp.array([0.05, 300.0])
    run = jax.vmap(
        lambda sys, e: gd(ce_field, sys, jnp.zeros(2), eta=e, num_steps=1000, throw=False)
    )
    traj = run(systems, etas)
    np.testing.assert_array_equal(traj.success, [True, False])
    assert (
        jax.tree.map(lambda r: r[1], traj.result) == RESULTS.gd_unstable
    )  # 1.5**1000 is still finite: caught by the stability check
    with pytest.raises(eqx.EquinoxRuntimeError, match="eta"):
        jax.block_until_ready(
            jax.vmap(lambda sys, e: gd(ce_field, sys, jnp.zeros(2), eta=e, num_steps=1000))(
                systems, etas
            ).z
        )


def test_step_budget_exhausted_is_reported_not_nan():
    system = rotation_system([8.0, 2.0], 0.5, 0.01)
    with pytest.raises(SolverError, match=r"max_steps=5.*rtol"):
        integrate(ce_field, system, jnp.zeros(2), t1=100.0, max_steps=5)
    traj = integrate(ce_field, system, jnp.zeros(2), t1=100.0, max_steps=5, throw=False)
    assert traj.result == RESULTS.max_steps_reached and not bool(traj.success)


@pytest.mark.slow
def test_implicit_solver_option():
    system = rotation_system([8.0, 2.0], 0.5, 0.01)
    implicit = integrate(
        ce_field, system, jnp.zeros(2), t1=100.0, solver=diffrax.Kvaerno5(), num_points=3
    )
    explicit = integrate(ce_field, system, jnp.zeros(2), t1=100.0, num_points=3)
    assert bool(implicit.success)
    np.testing.assert_allclose(implicit.z, explicit.z, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eta=-0.1, num_steps=10), "eta"),
        (dict(eta=float("nan"), num_steps=10), "eta"),
        (dict(eta=0.1, num_steps=0), "num_steps"),
        (dict(eta=0.1, num_steps=10, save_every=3), "save_every"),
    ],
)
def test_gd_bad_arguments(kwargs, match):
    system = rotation_system([3.0, 2.0], 0.5, 0.01)
    with pytest.raises(ValueError, match=match):
        gd(ce_field, system, jnp.zeros(2), **kwargs)


def test_bad_state_and_system():
    system = rotation_system([3.0, 2.0], 0.5, 0.01)
    with pytest.raises(ValueError, match="z0"):
        gd(ce_field, system, jnp.zeros(3), eta=0.1, num_steps=10)
    with pytest.raises(ValueError, match="z0"):
        integrate(ce_field, system, jnp.array([0.0, jnp.nan]), t1=1.0)
    bad_U = FeatureSystem(jnp.array([[1.0, 0.3], [0.0, 1.0]]), system.s, system.lam)
    with pytest.raises(ValueError, match="U"):
        gd(ce_field, bad_U, jnp.zeros(2), eta=0.1, num_steps=10)
    with pytest.raises(ValueError, match="s"):
        integrate(ce_field, system._replace(s=jnp.array([3.0, -1.0])), jnp.zeros(2), t1=1.0)
    with pytest.raises(ValueError, match="lam"):
        integrate(ce_field, system._replace(lam=jnp.asarray(-0.1)), jnp.zeros(2), t1=1.0)
    with pytest.raises(ValueError, match="t1"):
        integrate(ce_field, system, jnp.zeros(2), t1=-1.0)
    with pytest.raises(ValueError, match="ts"):
        integrate(ce_field, system, jnp.zeros(2), t1=1.0, ts=jnp.array([0.0, 2.0]))
