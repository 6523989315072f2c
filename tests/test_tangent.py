"""Tangent features, empirical NTK (every method against the Jacobian contraction), spectrum, responses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tol
from flax import nnx
from jax.flatten_util import ravel_pytree

from ntkdyn.models.cnn import init_cnn
from ntkdyn.models.mlp import MLP, DenseApply, init_mlp, pure
from ntkdyn.systems import FeatureSystem
from ntkdyn.tangent import (
    FeatureResponseTracker,
    NTKMethod,
    empirical_ntk,
    feature_response_trajectory,
    feature_responses,
    feature_spectrum,
    responses_from_outputs,
    tangent_features,
)

F64 = dict(rtol=1e-10, atol=1e-10)


def _mlp(key, hidden=(7, 5), out=1, **kw):
    return init_mlp(key, 3, list(hidden), out, dtype=jnp.float64, **kw)


def _custom(key):
    """A model with a custom params PyTree: nested dict + tuple, tanh, a skip connection."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "enc": (jax.random.normal(k1, (3, 6)), jnp.zeros(6) + 0.1),
        "head": {"w": jax.random.normal(k2, (6,)), "skip": jax.random.normal(k3, (3,))},
    }

    def apply_fn(p, x):
        W, b = p["enc"]
        return jnp.tanh(x @ W + b) @ p["head"]["w"] + x @ p["head"]["skip"]

    return apply_fn, params


_REF_CACHE = {}


def _reference_phi(apply_fn, params, x, cache_key=None):
    """Slow reference: one jax.grad per example, raveled (cached per model across parametrisations)."""
    if cache_key is not None:
        if cache_key not in _REF_CACHE:
            _REF_CACHE[cache_key] = _reference_phi(apply_fn, params, x)
        return _REF_CACHE[cache_key]
    grad = jax.jit(jax.grad(lambda p, xi: apply_fn(p, xi[None]).sum()))
    return jnp.stack([ravel_pytree(grad(params, xi))[0] for xi in x])


@pytest.fixture
def xs():
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    return jax.random.normal(k1, (9, 3)), jax.random.normal(k2, (4, 3))


def test_tangent_features_match_per_example_gradients(key, xs):
    x, _ = xs
    for apply_fn, params in (_mlp(key), _custom(key)):
        phi = tangent_features(apply_fn, params, x)
        assert phi.shape == (9, ravel_pytree(params)[0].size)
        np.testing.assert_allclose(phi, _reference_phi(apply_fn, params, x), **F64)
        np.testing.assert_allclose(tangent_features(apply_fn, params, x, batch_size=4), phi, **F64)


def test_tangent_features_linearize_outputs(key, xs):
    """Φ dθ is the first-order change of the outputs (column order = ravel_pytree order)."""
    x, _ = xs
    apply_fn, params = _custom(key)
    flat, unravel = ravel_pytree(params)
    d = 1e-6 * jax.random.normal(jax.random.PRNGKey(9), flat.shape)
    df = apply_fn(unravel(flat + d), x) - apply_fn(unravel(flat - d), x)
    np.testing.assert_allclose(
        2 * tangent_features(apply_fn, params, x) @ d, df, rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize("model", ["mlp", "mlp_nobias_tanh", "custom", "cnn"])
@pytest.mark.parametrize("method", list(NTKMethod))
def test_every_method_matches_jacobian_contraction(key, xs, model, method):
    x1, x2 = xs
    if model == "mlp":
        apply_fn, params = _mlp(key)
    elif model == "mlp_nobias_tanh":
        k = jax.random.split(key, 3)
        params = [
            (jax.random.normal(k[0], (3, 8)), None),
            (jax.random.normal(k[1], (8, 4)), jnp.ones(4)),
            (jax.random.normal(k[2], (4, 1)), None),
        ]
        apply_fn = DenseApply(jnp.tanh)
    elif model == "custom":
        apply_fn, params = _custom(key)
    else:
        apply_fn, params = init_cnn(key, 1, (2, 3), dtype=jnp.float64)
        x1 = jax.random.normal(key, (5, 4, 4, 1))
        x2 = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 1))
    if method is NTKMethod.STRUCTURED and model in ("custom", "cnn"):
        with pytest.raises(ValueError, match="method"):
            empirical_ntk(apply_fn, params, x1, method=method)
        return
    phi1 = _reference_phi(apply_fn, params, x1, (model, 1))
    phi2 = _reference_phi(apply_fn, params, x2, (model, 2))
    for a, b, ref in ((x1, None, phi1 @ phi1.T), (x1, x2, phi1 @ phi2.T)):
        theta = empirical_ntk(apply_fn, params, a, b, method=method)
        assert theta.shape == ref.shape
        np.testing.assert_allclose(theta, ref, **F64)
        for bs in (
            (2,) if model != "cnn" else ()
        ):  # batching is model-independent code; spare CNN compiles
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
    apply_fn, params = _mlp(key, out=3)
    phi1 = tangent_features(apply_fn, params, x1, output_axis=-1)
    phi2 = tangent_features(apply_fn, params, x2, output_axis=-1)
    assert phi1.shape[:2] == (9, 3)
    ref = jnp.einsum("ikp,jlp->ijkl", phi1, phi2)
    theta = empirical_ntk(apply_fn, params, x1, x2, method=method, output_axis=-1, batch_size=2)
    assert theta.shape == (9, 4, 3, 3)
    np.testing.assert_allclose(theta, ref, **F64)


def test_spectrum_reconstructs_signed_features(key, xs):
    x, _ = xs
    apply_fn, params = _mlp(key, hidden=(16,))
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


def test_feature_responses_of_linear_model_equal_S_Vt_dtheta(key):
    """For a model linear in θ, z = Uᵀ Y Φ (θ_t − θ₀) = S Vᵀ (θ_t − θ₀)."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (6, 8))
    y = jnp.array([1, 1, -1, 1, -1, -1])
    f = lambda p, x: x @ p["w"]  # noqa: E731
    p0 = {"w": jnp.zeros(8)}
    ckpts = [
        {"w": 0.1 * (i + 1) * jax.random.normal(jax.random.fold_in(k2, i), (8,))} for i in range(4)
    ]
    spec, V = feature_spectrum(f, p0, x, y, return_V=True)
    for c in ckpts:
        np.testing.assert_allclose(
            feature_responses(f, p0, c, x, y, spec.U), spec.s * (V.T @ c["w"]), **F64
        )
    traj = feature_response_trajectory(f, p0, ckpts, x, y, spec.U)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ckpts)
    np.testing.assert_allclose(
        feature_response_trajectory(f, p0, stacked, x, y, spec.U), traj, **F64
    )
    tracker = FeatureResponseTracker(f, p0, x, y, spec.U)
    for i, c in enumerate(ckpts):
        tracker(10 * i, c)
    np.testing.assert_array_equal(tracker.steps, [0, 10, 20, 30])
    np.testing.assert_allclose(tracker.z, traj, **F64)
    np.testing.assert_allclose(feature_responses(f, p0, p0, x, y, spec.U), 0.0, atol=0)
    # Recorded outputs give the same responses, with any leading axes and {0, 1} labels.
    outs = jnp.stack([f(c, x) for c in ckpts])
    np.testing.assert_allclose(responses_from_outputs(outs, f(p0, x), y, spec.U), traj, **F64)
    np.testing.assert_allclose(
        responses_from_outputs(outs[None], f(p0, x), (y + 1) // 2, spec.U)[0], traj, **F64
    )
    for kw, name in (
        (dict(outputs=outs[:, :5]), "outputs"),
        (dict(f0=outs), "f0"),
        (dict(y=y[:5]), "y"),
        (dict(U=spec.U[:5]), "U"),
    ):
        args = dict(outputs=outs, f0=f(p0, x), y=y, U=spec.U) | kw
        with pytest.raises(ValueError, match=name):
            responses_from_outputs(**args)


def test_tolerances_by_dtype_used(xs):
    assert tol(jnp.float32)["rtol"] > tol(jnp.float64)["rtol"]


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
        (lambda f, p, x: empirical_ntk(f, p, x, x[:, :2]), "x2"),
        (lambda f, p, x: empirical_ntk(f, p, x, method="structured"), "method"),
        (lambda f, p, x: empirical_ntk(f, p, x, batch_size=0), "batch_size"),
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.arange(9)), "y:"),
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.ones(4)), "y:"),
        (lambda f, p, x: feature_spectrum(f, p, x, jnp.ones(9), tol=2.0), "tol"),
        (lambda f, p, x: feature_responses(f, p, p, x, jnp.ones(9), jnp.ones((8, 2))), "U:"),
        (
            lambda f, p, x: feature_response_trajectory(f, p, [], x, jnp.ones(9), jnp.ones((9, 2))),
            "checkpoints",
        ),
    ],
)
def test_bad_input_names_argument(key, xs, call, match):
    apply_fn, params = _mlp(key)
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
    phi1 = _reference_phi(apply_fn, variables, x1)
    phi2 = _reference_phi(apply_fn, variables, x2)
    ref = np.asarray(phi1, np.float64) @ np.asarray(phi2, np.float64).T
    for method in (NTKMethod.JACOBIAN_CONTRACTION, NTKMethod.NTK_VECTOR_PRODUCTS):
        theta = empirical_ntk(apply_fn, variables, x1, x2, method=method)
        np.testing.assert_allclose(theta, ref, **tol(jnp.float32))
