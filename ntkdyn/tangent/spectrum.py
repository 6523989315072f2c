"""The spectrum of the label-signed tangent features YΦ = U S Vᵀ, the theory's (U, s).

:func:`feature_spectrum` takes the Gram matrix YΘY = U S² Uᵀ of the empirical NTK and decomposes
it in float64; :class:`FeatureSpectrum` holds (U, s) and turns into the theory core's
:class:`ntkdyn.FeatureSystem` for a given λ (Pezeshki et al. 2021, Sec. 2 and 3).
:func:`signed_labels` is the one place labels in {−1, +1} or {0, 1} become ±1.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float

from ntkdyn._checks import check_x
from ntkdyn.systems import FeatureSystem, feature_system
from ntkdyn.tangent.features import ApplyFn, apply_outputs
from ntkdyn.tangent.ntk import NTKMethod, empirical_ntk

__all__ = ["FeatureSpectrum", "feature_spectrum", "signed_labels"]


def signed_labels(y: ArrayLike, n: int, name: str = "y") -> np.ndarray:
    """Labels as float64 ±1, accepting {−1, +1} or {0, 1} (mapped by y± = 2y − 1).

    Args:
        y: (n,) labels.
        n: expected number of labels.
        name: the argument name used in errors.

    Returns:
        (n,) NumPy float64 array of ±1.

    Raises:
        ValueError: naming ``name`` for a wrong shape or values outside {−1, +1} / {0, 1}.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (n,):
        raise ValueError(f"{name}: expected ({n},) labels, one per example, got shape {y.shape}")
    y = y.astype(np.float64)
    values = set(np.unique(y).tolist())
    if values <= {-1.0, 1.0}:
        return y
    if values <= {0.0, 1.0}:
        return 2.0 * y - 1.0
    raise ValueError(
        f"{name}: labels must lie in {{-1, +1}} or {{0, 1}}, got values {sorted(values)[:6]}"
    )


class FeatureSpectrum(NamedTuple):
    """Left singular vectors and singular values of the label-signed tangent features YΦ = U S Vᵀ.

    Attributes:
        U: (n, d) orthonormal columns, in order of decreasing s.
        s: (d,) singular values s₁ ≥ … ≥ s_d > 0 (after truncation).
    """

    U: Float[Array, "n d"]
    s: Float[Array, " d"]

    def to_system(self, lam: ArrayLike) -> FeatureSystem:
        """The theory core's :class:`ntkdyn.FeatureSystem` (U, s, λ) of this spectrum.

        Args:
            lam: λ ≥ 0 (weight decay for CE, the logit penalty for SD).

        Returns:
            The validated feature system.

        Raises:
            ValueError: naming ``lam`` if it is negative or non-finite.
        """
        atol = 1e-8 if self.U.dtype == jnp.float64 else 1e-4
        return feature_system(self.U, self.s, lam, atol=atol)

    def label_alignment(self) -> Float[Array, " d"]:
        """|u_jᵀ 1| for each direction: how much feature j by itself separates the training set.

        Returns:
            (d,) alignments; Σ_j (u_jᵀ1)² ≤ n with equality when U spans the all-ones vector.
        """
        return jnp.abs(self.U.sum(axis=0))


@functools.partial(jax.jit, static_argnums=0)
def _right_vectors(apply_fn, params, x, cots):
    """Rows Φᵀc for each cotangent c (VJPs), raveled: (d, p)."""
    _, vjp = jax.vjp(lambda q: apply_outputs(apply_fn, q, x, None), params)
    return jax.vmap(lambda c: ravel_pytree(vjp(c)[0])[0])(cots)


def feature_spectrum(
    apply_fn: ApplyFn,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    tol: float | None = None,
    return_V: bool = False,
    method: NTKMethod = NTKMethod.JACOBIAN_CONTRACTION,
    batch_size: int | None = None,
) -> FeatureSpectrum | tuple[FeatureSpectrum, Float[Array, "p d"]]:
    """Spectrum of the label-signed tangent features YΦ = U S Vᵀ from the signed Gram matrix (Sec. 3).

    Computes Θ = ΦΦᵀ with :func:`ntkdyn.empirical_ntk`, casts it to float64 (in NumPy, whatever
    the model's dtype and whether or not ``jax_enable_x64`` is on) and takes ``eigh`` of
    YΘY = U S² Uᵀ. Directions with s_j² ≤ tol · s₁² are dropped (a rank-deficient Φ, or more
    examples than parameters, gives exactly such null directions; they have no dynamics).
    U and s are returned as JAX arrays in the default float dtype (float64 when x64 is enabled).

    V is Φᵀ Y U S⁻¹ (p × d, rows in ``ravel_pytree(params)`` order); it is computed on demand by
    vector-Jacobian products, without forming Φ.

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params: θ₀.
        x: (n, ...) inputs.
        y: (n,) labels in {−1, +1} or {0, 1}.
        tol: relative eigenvalue cut-off (default n · ε of the kernel's dtype, e.g. ≈ 3.6e-5 for
            n = 300 in float32: below that the float32 Gram carries only rounding noise).
        return_V: also return V.
        method: :class:`ntkdyn.NTKMethod` for the Gram matrix.
        batch_size: forwarded to :func:`ntkdyn.empirical_ntk`.

    Returns:
        :class:`FeatureSpectrum` ``(U, s)``; with ``return_V`` the pair ``(spectrum, V)``.

    Raises:
        ValueError: naming ``y`` (shape, values outside {−1, +1}/{0, 1}), ``tol``, or the arguments
            of :func:`ntkdyn.empirical_ntk`; naming ``x`` if the kernel is non-finite or zero.
    """
    x = check_x(x, "x")
    yv = signed_labels(y, x.shape[0])
    if tol is not None and not (np.isfinite(tol) and 0 <= tol < 1):
        raise ValueError(f"tol: must be a relative cut-off in [0, 1), got {tol}")
    theta = empirical_ntk(apply_fn, params, x, method=method, batch_size=batch_size)
    G = np.asarray(theta, dtype=np.float64)
    if not np.all(np.isfinite(G)):
        raise ValueError(
            "x: the empirical NTK has non-finite entries; check the inputs and params for overflow"
        )
    G = 0.5 * (G + G.T)
    G = yv[:, None] * G * yv[None, :]
    evals, evecs = np.linalg.eigh(G)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    if evals[0] <= 0:
        raise ValueError(
            "x: the tangent features are zero on these inputs (the NTK is zero); nothing to decompose"
        )
    if tol is None:
        tol = x.shape[0] * float(jnp.finfo(theta.dtype).eps)
    keep = evals > tol * evals[0]
    U = evecs[:, keep]
    # Fix the sign of each direction so that u_jᵀ1 ≥ 0 (eigh's sign is arbitrary).
    U = U * np.where(U.sum(axis=0) < 0, -1.0, 1.0)[None, :]
    s = np.sqrt(evals[keep])
    dtype = jnp.result_type(float)
    spectrum = FeatureSpectrum(jnp.asarray(U, dtype), jnp.asarray(s, dtype))
    if not return_V:
        return spectrum
    # V = Φᵀ Y U S⁻¹ column by column: VJPs with cotangents Y u_j / s_j.
    out_dtype = theta.dtype
    cots = jnp.asarray((yv[:, None] * U / s[None, :]).T, out_dtype)
    V = _right_vectors(apply_fn, params, x, cots)
    return spectrum, V.T
