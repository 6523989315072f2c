"""Feature responses of real training: z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) with U taken at θ₀.

For a linearized network this is exactly z = S Vᵀ(θ_t − θ₀) restricted to the span of U; for a
real network it measures how much of each initial tangent feature the training has put into the
margins (Pezeshki et al. 2021, Sec. 4, Fig. 5). Four entry points, by what the caller holds:

* :func:`responses_from_outputs`: outputs already recorded along a run (no forward pass);
* :func:`feature_responses`: one params PyTree θ_t;
* :func:`feature_response_trajectory`: a list or a stacked PyTree of checkpoints;
* :class:`FeatureResponseTracker`: a callable to record z from inside any training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ntkdyn._checks import check_outputs, check_x
from ntkdyn.tangent.features import ApplyFn, apply_outputs
from ntkdyn.tangent.spectrum import signed_labels

__all__ = [
    "feature_responses",
    "responses_from_outputs",
    "feature_response_trajectory",
    "FeatureResponseTracker",
]


def _check_U(U: ArrayLike, n: int) -> Array:
    U = jnp.asarray(U)
    if U.ndim != 2 or U.shape[0] != n:
        raise ValueError(
            f"U: expected an ({n}, d) matrix of left singular vectors, got shape {U.shape}"
        )
    return U


def _response_fn(
    apply_fn: ApplyFn, params0: Any, x: ArrayLike, y: ArrayLike, U: ArrayLike
) -> Callable[[Any], Array]:
    """Validate the inputs once; return θ ↦ z = Uᵀ Y (f(X; θ) − f(X; θ₀))."""
    x = check_x(x, "x")
    check_outputs(apply_fn, params0, x, None)
    yv = jnp.asarray(signed_labels(y, x.shape[0]), jnp.result_type(float))
    U = _check_U(U, x.shape[0])
    f0 = apply_outputs(apply_fn, params0, x, None)
    return lambda p: U.T @ (yv * (apply_outputs(apply_fn, p, x, None) - f0))


def responses_from_outputs(
    outputs: ArrayLike,
    f0: ArrayLike,
    y: ArrayLike,
    U: ArrayLike,
) -> Float[Array, "... d"]:
    """Feature responses z = Uᵀ Y (f − f₀) of outputs recorded during training (Sec. 4, Fig. 5).

    :func:`feature_responses` without the forward pass: for outputs already recorded along a run,
    e.g. by the ``eval_fn`` of :func:`ntkdyn.train_fullbatch` or in :class:`ntkdyn.GDTrace`.

    Args:
        outputs: (..., n) outputs f(X; θ_t) on the n examples U was computed on; leading axes
            (time, seeds) are kept.
        f0: (n,) outputs f(X; θ₀).
        y: (n,) labels in {−1, +1} or {0, 1}.
        U: (n, d) left singular vectors at θ₀ (:func:`ntkdyn.feature_spectrum`).

    Returns:
        (..., d) responses, in the floating dtype of ``outputs`` and ``f0``.

    Raises:
        ValueError: naming ``outputs``, ``f0``, ``y`` or ``U`` on a shape or label mismatch.
    """
    f0 = jnp.asarray(f0)
    if f0.ndim != 1:
        raise ValueError(f"f0: expected (n,) outputs at initialisation, got shape {f0.shape}")
    n = f0.shape[0]
    outputs = jnp.asarray(outputs)
    if outputs.ndim < 1 or outputs.shape[-1] != n:
        raise ValueError(
            f"outputs: expected (..., {n}) outputs on the {n} examples of f0, "
            f"got shape {outputs.shape}"
        )
    dtype = jnp.result_type(outputs, f0, float)
    yv = jnp.asarray(signed_labels(y, n), dtype)
    U = _check_U(U, n).astype(dtype)
    return ((outputs - f0) * yv) @ U


def feature_responses(
    apply_fn: ApplyFn,
    params0: Any,
    params_t: Any,
    x: ArrayLike,
    y: ArrayLike,
    U: ArrayLike,
) -> Float[Array, " d"]:
    """Empirical feature responses z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) (Sec. 4, Fig. 5).

    For a linearized network this is exactly z = S Vᵀ(θ_t − θ₀) restricted to the span of U; for
    a real network it measures how much of each initial tangent feature the training has put into
    the margins.

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params0: θ₀ (where U was taken).
        params_t: θ_t.
        x: (n, ...) the inputs U was computed on.
        y: (n,) labels in {−1, +1} or {0, 1}.
        U: (n, d) left singular vectors from :func:`ntkdyn.feature_spectrum` at θ₀.

    Returns:
        z, shape (d,).

    Raises:
        ValueError: naming ``x``, ``y``, ``U`` or ``params`` on bad input.
    """
    return _response_fn(apply_fn, params0, x, y, U)(params_t)


def feature_response_trajectory(
    apply_fn: ApplyFn,
    params0: Any,
    checkpoints: Sequence[Any] | Any,
    x: ArrayLike,
    y: ArrayLike,
    U: ArrayLike,
) -> Float[Array, "t d"]:
    """z(t) of :func:`feature_responses` for each checkpoint.

    Args:
        apply_fn, params0, x, y, U: as in :func:`feature_responses`.
        checkpoints: a list of params PyTrees, or one PyTree whose leaves are stacked along a leading
            axis (e.g. the output of a ``lax.scan`` training loop).

    Returns:
        (T, d) responses, one row per checkpoint.

    Raises:
        ValueError: as :func:`feature_responses`; naming ``checkpoints`` when empty.
    """
    z = _response_fn(apply_fn, params0, x, y, U)
    if isinstance(checkpoints, (list, tuple)):
        if not checkpoints:
            raise ValueError("checkpoints: is empty; pass at least one params PyTree")
        checkpoints = jax.tree.map(lambda *leaves: jnp.stack(leaves), *checkpoints)
    return jax.jit(jax.vmap(z))(checkpoints)


class FeatureResponseTracker:
    """Record z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) from inside any training loop.

    Example::

        spec = feature_spectrum(apply_fn, params0, x, y)
        track = FeatureResponseTracker(apply_fn, params0, x, y, spec.U)
        for step in range(num_steps):
            params = update(params)
            if step % 100 == 0:
                track(step, params)
        steps, z = track.steps, track.z      # (T,), (T, d)

    Args:
        apply_fn, params0, x, y, U: as in :func:`feature_responses` (U is usually
            ``feature_spectrum(...).U``).

    Raises:
        ValueError: as :func:`feature_responses`.
    """

    def __init__(self, apply_fn: ApplyFn, params0: Any, x: ArrayLike, y: ArrayLike, U: ArrayLike):
        self._z = jax.jit(_response_fn(apply_fn, params0, x, y, U))
        self._steps: list[int] = []
        self._values: list[np.ndarray] = []

    def __call__(self, step: int, params: Any) -> Float[Array, " d"]:
        """Compute and record z at ``step``; returns it."""
        z = self._z(params)
        self._steps.append(int(step))
        self._values.append(np.asarray(z))
        return z

    @property
    def steps(self) -> np.ndarray:
        """(T,) the recorded steps."""
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def z(self) -> np.ndarray:
        """(T, d) the recorded responses (empty (0, 0) before the first call)."""
        return np.stack(self._values) if self._values else np.zeros((0, 0))
