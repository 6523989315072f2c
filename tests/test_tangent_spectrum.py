"""Spectrum of YΦ: reconstruction, truncation, float64 decomposition, the FeatureSystem it gives,
the two solvers (Dense, BlockKrylov) against each other and the deprecated keyword form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from flax import nnx
from tangent_models import F64, custom, inputs, mlp

from ntkdyn.linalg import OnUnconverged, SVDNotConvergedError, SVDNotConvergedWarning
from ntkdyn.models.cnn import init_cnn
from ntkdyn.models.mlp import MLP, init_mlp, pure
from ntkdyn.systems import FeatureSystem
from ntkdyn.tangent import (
    BlockKrylov,
    Dense,
    FeatureSpectrum,
    feature_spectrum,
    signed_labels,
    tangent_features,
)
from ntkdyn.tangent.spectrum import signed_tangent_operator


@pytest.fixture
def xs():
    return inputs()


def test_spectrum_reconstructs_signed_features(key, xs):
    x, _ = xs
    apply_fn, params = mlp(key, hidden=(16,))
    y = jnp.array([1, -1, 1, 1, -1, -1, 1, -1, 1])
    spec = feature_spectrum(apply_fn, params, x, y, compute_V=True)
    U, s = spec
    V = spec.V
    assert spec.residuals is None and spec.iterations is None and spec.converged
    assert spec.solver.startswith("dense")
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
    spec = feature_spectrum(lambda p, x: x @ p["w"] + p["b"], params, x, y, compute_V=True)
    V = spec.V
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
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.ones(9), solver=Dense(tol=2.0)), "tol"),
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.ones(9), solver="dense"), "solver:"),
        (lambda f, p, x: feature_spectrum(f, p, x[0, 0], jnp.ones(9)), "x:"),
    ],
)
def test_bad_input_names_argument(key, xs, call, match):
    apply_fn, params = mlp(key)
    with pytest.raises(ValueError, match=match):
        call(apply_fn, params, xs[0])


# --------------------------------------------------------------------------------------------------
# Matrix-free path (k given): against the dense eigh path


def _separated(s, rel=1e-3):
    """Indices j whose s_j is at least ``rel`` (relatively) away from its neighbours."""
    s = np.asarray(s)
    gaps = np.minimum(np.abs(np.diff(s, prepend=np.inf)), np.abs(np.diff(s, append=-np.inf)))
    return np.flatnonzero(gaps > rel * s)


def _compare_to_dense(apply_fn, params, x, y, k, *, key, rtol, residual_tol, **kw):
    dense = feature_spectrum(apply_fn, params, x, y, compute_V=True)
    V_dense = dense.V
    solver = BlockKrylov(k, residual_tol, key=key, **kw)
    spec = feature_spectrum(apply_fn, params, x, y, solver=solver, compute_V=True)
    V, report = spec.V, spec
    assert isinstance(spec, FeatureSpectrum) and spec.solver == solver.describe()
    assert report.converged and report.residuals.shape == (k,)
    assert bool(np.all(report.residuals <= residual_tol)) and report.products > 0
    assert spec.U.shape == (x.shape[0], k) and V.shape == (V_dense.shape[0], k)
    np.testing.assert_allclose(spec.s, dense.s[:k], rtol=rtol)
    sep = _separated(dense.s[: k + 1])
    sep = sep[sep < k]
    assert len(sep) >= k // 2  # the vector check covers most directions
    cos_u = np.abs(np.sum(np.asarray(spec.U) * np.asarray(dense.U[:, :k]), axis=0))
    cos_v = np.abs(np.sum(np.asarray(V, np.float64) * np.asarray(V_dense[:, :k]), axis=0))
    np.testing.assert_allclose(cos_u[sep], 1.0, atol=50 * rtol)
    np.testing.assert_allclose(cos_v[sep], 1.0, atol=50 * rtol)
    assert bool(jnp.all(spec.U.sum(axis=0) >= 0))  # same sign convention as the dense path
    return spec, V, report


def test_matrix_free_matches_dense_mlp(key):
    x = jax.random.normal(jax.random.PRNGKey(5), (120, 6))
    y = jnp.where(x[:, 0] + 0.3 * x[:, 1] > 0, 1, -1)
    apply_fn, params = init_mlp(key, 6, [24, 24], dtype=jnp.float64)
    _compare_to_dense(
        apply_fn, params, x, y, 8, key=key, rtol=1e-9, residual_tol=1e-8, batch_size=50
    )


def test_matrix_free_matches_dense_cnn_float32(key):
    x = jax.random.uniform(jax.random.PRNGKey(6), (64, 6, 6, 2), jnp.float32)
    y = (jnp.arange(64) % 3 == 0).astype(jnp.int32)  # {0, 1} labels
    apply_fn, params = init_cnn(key, 2, channels=(4, 6))
    spec, V, report = _compare_to_dense(
        apply_fn, params, x, y, 6, key=key, rtol=1e-4, residual_tol=1e-4, batch_size=20
    )
    assert V.dtype == jnp.float32  # products in the model's dtype


def test_matrix_free_dict_params_and_report(key):
    x, _ = inputs()
    x = jnp.concatenate([x, 0.5 * x[::-1] + 0.1])  # 18 examples
    y = jnp.where(jnp.arange(18) % 2 == 0, 1, -1)
    apply_fn, params = custom(key)
    solver = BlockKrylov(4, 0.3, 1, key=key, on_unconverged=OnUnconverged.IGNORE)
    spec = feature_spectrum(apply_fn, params, x, y, solver=solver, compute_V=True)
    V, report = spec.V, spec
    # The reported residuals are those of the triplets returned, against the true YΦ.
    YPhi = np.asarray(y[:, None] * tangent_features(apply_fn, params, x))
    U, s, V = np.asarray(spec.U), np.asarray(spec.s), np.asarray(V)
    left = np.linalg.norm(YPhi @ V - U * s, axis=0) / s
    np.testing.assert_allclose(report.residuals, left, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(YPhi.T @ U, V * s, atol=1e-10)
    assert report.products > 0 and report.iterations == 1


def test_matrix_free_unconverged_is_flagged(key):
    x = jax.random.normal(jax.random.PRNGKey(7), (80, 5))
    y = jnp.where(x[:, 1] > 0, 1, -1)
    apply_fn, params = init_mlp(key, 5, [16], dtype=jnp.float64)
    solver = BlockKrylov(10, 1e-12, 1, key=key)
    with pytest.warns(SVDNotConvergedWarning):
        report = feature_spectrum(apply_fn, params, x, y, solver=solver)
    assert not report.converged and report.residuals.max() > 1e-12
    raising = BlockKrylov(10, 1e-12, 1, key=key, on_unconverged=OnUnconverged.RAISE)
    with pytest.raises(SVDNotConvergedError):
        feature_spectrum(apply_fn, params, x, y, solver=raising)


def test_matrix_free_bad_inputs(key):
    x = jax.random.normal(jax.random.PRNGKey(8), (20, 3))
    apply_fn, params = mlp(key)  # p = 3·7 + 7 + 7·5 + 5 + 5 + 1 = 74
    y = jnp.where(jnp.arange(20) % 2 == 0, 1, -1)
    call = functools.partial(feature_spectrum, apply_fn, params, x)
    with pytest.raises(ValueError, match="k: .*got k = 0"):
        BlockKrylov(0, key=key)
    with pytest.raises(ValueError, match=r"k: .*min\(n, p\) = 20.*got k = 21"):
        call(y, solver=BlockKrylov(21, key=key))
    with pytest.raises(ValueError, match="y: labels must lie"):
        call(jnp.arange(20), solver=BlockKrylov(2, key=key))
    with pytest.raises(ValueError, match="key"):
        BlockKrylov(2)
    with pytest.raises(ValueError, match="tol"):
        BlockKrylov(2, 0.0, key=key)
    with pytest.raises(ValueError, match="max_iters"):
        BlockKrylov(2, max_iters=0, key=key)
    with pytest.raises(ValueError, match="batch_size"):
        call(y, solver=BlockKrylov(2, key=key, batch_size=0))
    bad = jax.tree.map(lambda a: a * jnp.nan, params)
    with pytest.raises(ValueError, match="non-finite outputs"):
        feature_spectrum(apply_fn, bad, x, y, solver=BlockKrylov(2, key=key))
    # the deprecated keyword form keeps its errors
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="tol"):
        call(y, k=2, key=key, tol=1e-6)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="return_report"):
        call(y, return_report=True)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="solver"):
        call(y, solver=Dense(), tol=1e-6)


def test_signed_tangent_operator_products(key):
    x, _ = inputs()
    y = jnp.where(jnp.arange(9) % 3 == 0, 1, -1)
    apply_fn, params = custom(key)
    op = signed_tangent_operator(apply_fn, params, x, y, batch_size=4)  # 3 batches, 3 padded rows
    YPhi = np.asarray(y[:, None] * tangent_features(apply_fn, params, x))
    V = jax.random.normal(key, (op.shape[1], 5), jnp.float64)
    U = jax.random.normal(key, (9, 3), jnp.float64)
    assert op.shape == YPhi.shape
    np.testing.assert_allclose(op.matmat(V), YPhi @ V, **F64)
    np.testing.assert_allclose(op.rmatmat(U), YPhi.T @ U, **F64)


def test_right_vectors_of_a_float32_model_on_float64_inputs():
    """V = Φᵀ Y U S⁻¹ when the inputs are float64 and the parameters float32 (cotangent dtype)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.models.mlp import init_mlp
    from ntkdyn.tangent import feature_spectrum, tangent_features

    f, p = init_mlp(jax.random.PRNGKey(0), 3, [8], dtype=jnp.float32)
    x = np.random.default_rng(0).normal(size=(10, 3))
    y = np.where(x[:, 0] > 0, 1.0, -1.0)
    spec = feature_spectrum(f, p, x, y, compute_V=True)
    V = spec.V
    phi = np.asarray(tangent_features(f, p, x), np.float64)
    want = phi.T @ (y[:, None] * np.asarray(spec.U)) / np.asarray(spec.s)
    np.testing.assert_allclose(np.asarray(V, np.float64), want, rtol=2e-3, atol=2e-4)


def test_deprecated_keywords_are_the_solver_objects(key):
    """k=/key=/return_V=/return_report= give the old tuples with the solver objects' numbers."""
    x = jax.random.normal(jax.random.PRNGKey(9), (40, 4))
    y = jnp.where(x[:, 0] > 0, 1, -1)
    apply_fn, params = init_mlp(key, 4, [12], dtype=jnp.float64)
    with pytest.warns(DeprecationWarning, match="solver="):
        old, V_old, report = feature_spectrum(
            apply_fn,
            params,
            x,
            y,
            k=3,
            key=key,
            residual_tol=1e-6,
            return_V=True,
            return_report=True,
        )
    new = feature_spectrum(
        apply_fn, params, x, y, solver=BlockKrylov(3, 1e-6, key=key), compute_V=True
    )
    np.testing.assert_array_equal(old.s, new.s)
    np.testing.assert_array_equal(old.U, new.U)
    np.testing.assert_array_equal(V_old, new.V)
    np.testing.assert_array_equal(report.residuals, new.residuals)
    assert report.matvecs == new.products and report.iterations == new.iterations
    with pytest.warns(DeprecationWarning):
        dense_old = feature_spectrum(apply_fn, params, x, y, tol=1e-10)
    dense_new = feature_spectrum(apply_fn, params, x, y, solver=Dense(tol=1e-10))
    np.testing.assert_array_equal(dense_old.s, dense_new.s)
    assert dense_old.V is None


def test_dense_and_block_krylov_agree_on_a_small_mlp(key):
    """The top k of BlockKrylov are the top k of Dense's eigh, to the residual tolerance."""
    x = jax.random.normal(jax.random.PRNGKey(10), (60, 3))
    y = jnp.where(x[:, 1] - x[:, 2] > 0, 1, -1)
    apply_fn, params = init_mlp(key, 3, [16, 16], dtype=jnp.float64)
    dense = feature_spectrum(apply_fn, params, x, y, solver=Dense())
    top = feature_spectrum(apply_fn, params, x, y, solver=BlockKrylov(5, 1e-9, key=key))
    assert top.s.shape == (5,) and top.converged and top.iterations >= 1
    np.testing.assert_allclose(top.s, dense.s[:5], rtol=1e-12)
    np.testing.assert_allclose(np.abs(np.sum(top.U * dense.U[:, :5], 0)), 1.0, atol=1e-8)
