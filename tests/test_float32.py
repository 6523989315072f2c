"""The float32 default paths, also run in a session with float64 off (``NTKDYN_TEST_X64=0``).

The main test session turns ``jax_enable_x64`` on for the theory checks, so every array a user
would get in float32 by default is float64 there. These tests build float32 inputs explicitly and
check results, dtypes and that the library never flips x64 itself; CI runs them a second time with
float64 off (``NTKDYN_TEST_X64=0 pytest -m float32``), where they see exactly what a user sees.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ntkdyn
from ntkdyn import objectives as ob
from ntkdyn.train.fullbatch import train_fullbatch
from ntkdyn.train.layout import SeedAxis, SeedLayout

pytestmark = pytest.mark.float32
F32 = dict(rtol=2e-4, atol=2e-5)


@pytest.fixture
def net():
    key = jax.random.PRNGKey(0)
    apply_fn, params = ntkdyn.init_mlp(key, 3, [24, 24])
    x = jax.random.normal(jax.random.PRNGKey(1), (30, 3), jnp.float32)
    y = np.where(np.asarray(x[:, 0]) + 0.3 * np.asarray(x[:, 1]) > 0, 1.0, -1.0)
    return apply_fn, params, x, y


def test_x64_follows_the_session():
    import os

    want = os.environ.get("NTKDYN_TEST_X64", "1") == "1"
    assert jax.config.jax_enable_x64 == want


def test_ntk_methods_in_float32(net):
    apply_fn, params, x, _ = net
    phi = np.asarray(ntkdyn.tangent_features(apply_fn, params, x), np.float64)
    want = phi @ phi.T
    for method in ntkdyn.NTKMethod:
        K = ntkdyn.empirical_ntk(apply_fn, params, x, method=method)
        assert K.dtype == jnp.float32, method
        np.testing.assert_allclose(
            np.asarray(K, np.float64), want, rtol=2e-4, atol=2e-4 * want.max()
        )


def test_feature_spectrum_in_float32(net):
    apply_fn, params, x, y = net
    spec = ntkdyn.feature_spectrum(apply_fn, params, x, y)
    U, s = np.asarray(spec.U, np.float64), np.asarray(spec.s, np.float64)
    np.testing.assert_allclose(U.T @ U, np.eye(len(s)), atol=1e-5)
    K = np.asarray(ntkdyn.empirical_ntk(apply_fn, params, x), np.float64)
    signed = y[:, None] * K * y[None, :]
    np.testing.assert_allclose(U @ np.diag(s**2) @ U.T, signed, rtol=1e-4, atol=1e-4 * s[0] ** 2)
    assert np.all(np.diff(s) <= 0)


def test_objectives_in_float32():
    f = jnp.linspace(-3, 3, 8, dtype=jnp.float32)
    y = jnp.array([0, 1] * 4, jnp.float32)
    for obj in (ob.ERM(), ob.SpectralDecoupling(coef=0.1), ob.ClassConditionalSD()):
        value, _ = obj.loss(f, y)
        assert value.dtype == jnp.float32 and np.isfinite(value)
    dro = ob.GroupDRO(num_groups=2)
    _, (state, _) = dro.loss(f, y, state=dro.init(), groups=jnp.array([0, 1] * 4))
    assert state.q.dtype == jnp.float32
    np.testing.assert_allclose(float(state.q.sum()), 1.0, rtol=1e-6)


def test_fullbatch_layouts_agree_in_float32(net):
    apply_fn, params, x, y = net
    y01 = jnp.asarray((y + 1) / 2, jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 0.9 * a, 1.1 * a]), params)

    def loss_fn(p, state, batch, step, key):
        value, (_, metrics) = ob.SpectralDecoupling(coef=0.01).loss(apply_fn(p, batch)[:, 0], y01)
        return value, (state, metrics)

    runs = [
        train_fullbatch(
            loss_fn, optax.adam(1e-2), stacked, x, keys=keys, num_steps=20, layout=layout
        )
        for layout in (SeedLayout(), SeedLayout(SeedAxis.MAP), SeedLayout(SeedAxis.VMAP, 2))
    ]
    for other in runs[1:]:
        for a, b in zip(
            jax.tree_util.tree_leaves(runs[0].state.params),
            jax.tree_util.tree_leaves(other.state.params),
            strict=True,
        ):
            assert a.dtype == jnp.float32
            np.testing.assert_allclose(a, b, **F32)


def test_sd_fixed_point_of_a_square_system_in_float32():
    """SD's fixed point of a square system is a·Uᵀ1 with σ(−a) = λa, in float32 as well."""
    system = ntkdyn.rotation_system(jnp.array([6.0, 2.0], jnp.float32), delta=0.5, lam=0.002)
    z = ntkdyn.fixed_point(ntkdyn.sd_field, system)
    assert z.dtype == system.U.dtype  # float32 with x64 off: the library follows its inputs
    a = ntkdyn.sd_square_margin(0.002)
    want = a * np.asarray(system.U, np.float64).T @ np.ones(2)
    np.testing.assert_allclose(np.asarray(z, np.float64), want, rtol=1e-4)
    assert jax.config.jax_enable_x64 == (
        __import__("os").environ.get("NTKDYN_TEST_X64", "1") == "1"
    )
