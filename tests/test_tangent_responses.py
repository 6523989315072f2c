"""Feature responses z = Uᵀ Y (f(X; θ_t) − f(X; θ₀)): every entry point against S Vᵀ (θ_t − θ₀)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tangent_models import F64, inputs, mlp

from ntkdyn.tangent import (
    FeatureResponseTracker,
    feature_response_trajectory,
    feature_responses,
    feature_spectrum,
    responses_from_outputs,
)


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
    spec = feature_spectrum(f, p0, x, y, compute_V=True)
    V = spec.V
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


def test_tracker_is_empty_before_the_first_call(key):
    x, _ = inputs()
    apply_fn, params = mlp(key)
    track = FeatureResponseTracker(apply_fn, params, x, jnp.ones(9), jnp.eye(9)[:, :2])
    assert track.z.shape == (0, 0) and track.steps.shape == (0,)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda f, p, x: feature_responses(f, p, p, x, jnp.ones(9), jnp.ones((8, 2))), "U:"),
        (lambda f, p, x: feature_responses(f, p, p, x, jnp.ones(8), jnp.ones((9, 2))), "y:"),
        (
            lambda f, p, x: feature_response_trajectory(f, p, [], x, jnp.ones(9), jnp.ones((9, 2))),
            "checkpoints",
        ),
    ],
)
def test_bad_input_names_argument(key, call, match):
    apply_fn, params = mlp(key)
    with pytest.raises(ValueError, match=match):
        call(apply_fn, params, inputs()[0])
