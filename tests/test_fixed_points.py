"""Tests of fixed points and starvation sensitivities: closed forms, implicit vs FD, the paper's two-feature numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.dynamics import (
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
from ntkdyn.fixed_points import (
    finite_difference_jacobian_s,
    fixed_point,
    fixed_point_and_jacobian_s,
    fixed_point_jacobian_s,
    fixed_points_batch,
    lambert_w_fixed_point,
    sd_square_margin,
    starvation_matrix,
)
from ntkdyn.systems import FeatureSystem, random_orthonormal, random_system, rotation_system

S2, DELTA, LAM_CE, LAM_SD = 2.0, 0.5, 0.01, 0.002


def ref(s1, lam=LAM_CE):
    return rotation_system([s1, S2], DELTA, lam)


def test_fixed_point_solves_the_equation_and_is_the_gd_limit():
    system = ref(5.0)
    z = fixed_point(ce_field, system)
    np.testing.assert_allclose(
        system.lam * z, system.s**2 * (system.U.T @ jax.nn.sigmoid(-system.U @ z)), rtol=1e-12
    )
    long_gd = gd(ce_field, system, jnp.zeros(2), eta=0.05, num_steps=40_000, save_every=40_000)
    np.testing.assert_allclose(long_gd.final, z, rtol=1e-9)


def test_uncoupled_fixed_point_matches_lambert_w():
    s = jnp.array([8.0, 5.0, 3.0])
    lam = 1e-4
    system = FeatureSystem(jnp.eye(3), s, jnp.asarray(lam))
    z = fixed_point(ce_field, system)
    # Exact scalar equations λ z = s² σ(−z), feature by feature.
    np.testing.assert_allclose(lam * z, s**2 * jax.nn.sigmoid(-z), rtol=1e-12)
    w = lambert_w_fixed_point(s, lam)
    # Large-margin form: relative error O(e^{-z}) (here ≲ 2e-4 · z).
    np.testing.assert_allclose(z, w, rtol=3e-3)
    assert np.all(np.abs(z - w) < 2 * np.exp(-np.asarray(z)) * np.asarray(w))
    # U = I: no starvation at all, the Jacobian is diagonal.
    J = starvation_matrix(ce_field, system)
    np.testing.assert_allclose(J - jnp.diag(jnp.diag(J)), 0.0, atol=1e-14)


@pytest.mark.parametrize("n,seed", [(2, 0), (4, 1), (6, 2)])
def test_sd_fixed_point_square_u_closed_form(n, seed):
    U = random_orthonormal(jax.random.PRNGKey(seed), n, n)
    a = sd_square_margin(LAM_SD)
    assert abs(1 / (1 + math.exp(a)) - LAM_SD * a) < 1e-15
    expected = a * U.sum(0)
    for s in (jnp.linspace(1.0, 8.0, n), jnp.full(n, 3.0), jnp.linspace(9.0, 2.0, n) ** 1.5):
        z = fixed_point(sd_field, FeatureSystem(U, s, jnp.asarray(LAM_SD)))
        np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(U @ z, a, rtol=1e-12)  # every margin equals a


def test_sd_reference_values_and_no_starvation():
    for s1 in (2.0, 4.0, 8.0):
        system = ref(s1, LAM_SD)
        z = fixed_point(sd_field, system)
        np.testing.assert_allclose(z, [6.37, 1.71], atol=5e-3)
        M = starvation_matrix(sd_field, system)
        np.testing.assert_allclose(M, 0.0, atol=1e-13)


def test_dual_and_primal_fixed_points_agree():
    for s1 in (2.0, 4.0, 7.0):
        system = ref(s1)
        z = fixed_point(ce_field, system)
        # Warm start from the dual flow itself (Newton on α alone can leave (0, 1)).
        alpha0 = integrate(
            dual_field, system, jnp.full(2, 1e-6), t1=0.05, num_points=2, rtol=1e-6
        ).final
        alpha = fixed_point(dual_field, system, alpha0)
        np.testing.assert_allclose(dual_to_z(alpha, system), z, rtol=1e-10)
        np.testing.assert_allclose(alpha, z_to_dual(z, system), rtol=1e-10)


def test_quadratic_approximation_fixed_point_and_no_starvation():
    system = ref(6.0)
    a, b = 4.0, 2.0  # α₀ = 1/2
    z = fixed_point(quadratic_ce_field, system)
    s = system.s
    np.testing.assert_allclose(z, b * s**2 * system.U.sum(0) / (a * system.lam + s**2), rtol=1e-12)
    M = starvation_matrix(quadratic_ce_field, system)
    assert abs(float(M[1, 0])) < 1e-13  # decoupled: s₁ does not move z₂*


@pytest.mark.parametrize("s1", [3.0, 5.0, 8.0])
def test_implicit_derivative_equals_finite_differences(s1):
    system = ref(s1)
    J = fixed_point_jacobian_s(ce_field, system)
    F = finite_difference_jacobian_s(ce_field, system, h=1e-4)
    np.testing.assert_allclose(J, F, rtol=1e-6, atol=1e-9)


def test_implicit_derivative_matches_ift_formula_for_random_system(key):
    system = random_system(key, 12, jnp.array([6.0, 4.0, 3.0, 1.5]), 0.01)
    z = fixed_point(ce_field, system)
    dfdz = jax.jacfwd(ce_field)(z, system)
    dfds = jax.jacfwd(lambda s: ce_field(z, system._replace(s=s)))(system.s)
    expected = -jnp.linalg.solve(dfdz, dfds)
    np.testing.assert_allclose(starvation_matrix(ce_field, system), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        finite_difference_jacobian_s(ce_field, system, h=1e-4), expected, rtol=1e-5, atol=1e-8
    )


def test_reference_system_starvation_published_behaviour():
    s1 = jnp.array([2.0, 3.0, 4.0, 5.0, 6.0, 8.0])
    systems = jax.tree.map(lambda *x: jnp.stack(x), *[ref(float(v)) for v in s1])
    z = jax.vmap(lambda sy: fixed_point(ce_field, sy))(systems)
    dz2 = jax.vmap(lambda sy: fixed_point_jacobian_s(ce_field, sy)[1, 0])(systems)
    # z₂* ≈ 1.64 at s₁ = 2, ≈ 0.9 at s₁ = 8, falling monotonically.
    assert abs(float(z[0, 1]) - 1.64) < 5e-3
    assert abs(float(z[-1, 1]) - 0.9) < 0.05
    assert np.all(np.diff(np.asarray(z[:, 1])) < 0)
    # ∂z₂*/∂s₁ < 0 for s₁ > s₂ and = 0 at s₁ = s₂.
    assert np.all(np.asarray(dz2[1:]) < -0.05)
    assert abs(float(dz2[0])) < 1e-12
    fd = finite_difference_jacobian_s(ce_field, ref(2.0), h=1e-4)[1, 0]
    assert abs(float(fd)) < 1e-7


def test_vmapped_fixed_points_equal_loop():
    s1 = jnp.linspace(2.0, 8.0, 5)
    lam = jnp.array([0.01, 0.005, 0.02, 0.01, 0.001])
    systems = [ref(float(a), float(b)) for a, b in zip(s1, lam, strict=False)]
    batch = jax.tree.map(lambda *x: jnp.stack(x), *systems)
    zv = jax.vmap(lambda sy: fixed_point(ce_field, sy))(batch)
    Mv = jax.vmap(lambda sy: starvation_matrix(ce_field, sy))(batch)
    for i, sy in enumerate(systems):
        np.testing.assert_allclose(zv[i], fixed_point(ce_field, sy), rtol=1e-13)
        np.testing.assert_allclose(Mv[i], starvation_matrix(ce_field, sy), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("field", [ce_field, sd_field])
def test_fixed_point_and_jacobian_from_one_solve_equal_the_separate_calls(field, key):
    system = random_system(key, 6, [4.0, 2.5, 1.0], lam=LAM_CE)
    z, J = fixed_point_and_jacobian_s(field, system)
    np.testing.assert_allclose(z, fixed_point(field, system), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(J, starvation_matrix(field, system), rtol=1e-12, atol=1e-14)
    with pytest.raises(SolverError, match="max_steps=1"):
        fixed_point_and_jacobian_s(field, ref(8.0), max_steps=1)


def test_failure_is_reported():
    system = ref(8.0)
    with pytest.raises(SolverError, match="max_steps=1"):
        fixed_point(ce_field, system, max_steps=1)
    assert bool(jnp.all(jnp.isnan(fixed_point(ce_field, system, max_steps=1, throw=False))))
    with pytest.raises(ValueError, match="z0"):
        fixed_point(ce_field, system, jnp.zeros(3))
    with pytest.raises(ValueError, match="h"):
        finite_difference_jacobian_s(ce_field, system, h=5.0)
    with pytest.raises(ValueError, match="lam"):
        sd_square_margin(0.0)
    with pytest.raises(ValueError, match="s"):
        lambert_w_fixed_point([1.0, -2.0], 0.01)
    with pytest.raises(ValueError, match="s"):
        fixed_point(ce_field, system._replace(s=jnp.array([1.0, jnp.inf])))


def test_fixed_points_batch_equals_loop_and_reuses_one_compilation():
    from ntkdyn.fixed_points import _chunk_solve
    from ntkdyn.systems import stack_systems

    systems = [
        rotation_system([a, b], d, lam)
        for a, b, d, lam in [
            (2.0, 2.0, 0.5, 0.01),
            (6.0, 2.0, 0.3, 0.01),
            (3.0, 5.0, 0.5, 0.02),
            (8.0, 1.0, 0.0, 0.001),
            (4.0, 4.5, 0.8, 0.01),
        ]
    ]
    batch = stack_systems(systems)
    z, J = fixed_points_batch(ce_field, batch, chunk=2)  # 3 chunks, the last padded
    for i, sy in enumerate(systems):
        np.testing.assert_allclose(z[i], fixed_point(ce_field, sy), rtol=1e-13)
        np.testing.assert_allclose(
            J[i], fixed_point_jacobian_s(ce_field, sy), rtol=1e-10, atol=1e-14
        )
    before = _chunk_solve._cache_size()
    fixed_points_batch(ce_field, stack_systems(systems[:3]), chunk=2)
    assert _chunk_solve._cache_size() == before
    with pytest.raises(ValueError, match="systems"):
        fixed_points_batch(ce_field, systems[0])
    with pytest.raises(ValueError, match="systems"):
        stack_systems([systems[0], random_system(jax.random.PRNGKey(0), 3, [1.0, 2.0], 0.1)])
    with pytest.raises(SolverError, match=r"systems \[0, 1, 2, 3, 4\]"):
        fixed_points_batch(ce_field, batch, max_steps=1)


def test_float32_follows_input_dtype_with_its_own_tolerances():
    sy64 = ref(6.0)
    sy32 = jax.tree.map(lambda x: x.astype(jnp.float32), sy64)
    z32 = fixed_point(ce_field, sy32)
    assert z32.dtype == jnp.float32
    np.testing.assert_allclose(z32, fixed_point(ce_field, sy64), rtol=1e-5)
    np.testing.assert_allclose(
        starvation_matrix(ce_field, sy32), starvation_matrix(ce_field, sy64), rtol=1e-3, atol=1e-4
    )
