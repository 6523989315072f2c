"""Feature systems (U, s, λ): the objects the theory core integrates (Pezeshki et al. 2021, Sec. 3).

A linearized binary classifier ŷ = Φθ with labels y has label-signed tangent features
YΦ = U S Vᵀ (thin SVD). Its feature responses z = S Vᵀ θ ∈ ℝᵈ evolve under gradient flow by a
vector field that depends only on U (n × d, orthonormal columns), the singular values s (d) and the
regularisation strength λ. :class:`FeatureSystem` holds exactly these three arrays; it is a PyTree
(a NamedTuple), so grids of systems are batched with ``jax.vmap``.

Build one with :func:`feature_system` (validates), :func:`rotation_system` (the paper's two-feature
system U(δ)), :func:`random_system` (random orthonormal U) or :func:`system_from_matrix` (from any
YΦ, via its SVD).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = [
    "FeatureSystem",
    "feature_system",
    "rotation_matrix",
    "rotation_system",
    "random_orthonormal",
    "random_system",
    "system_from_matrix",
    "stack_systems",
]


class FeatureSystem(NamedTuple):
    """A d-feature system of a linearized classifier: YΦ = U diag(s) Vᵀ and regularisation λ.

    Attributes:
        U: (n, d) left singular vectors of YΦ, orthonormal columns.
        s: (d,) singular values, all > 0.
        lam: scalar λ ≥ 0 (weight decay for CE, the logit penalty for SD).

    Construct through :func:`feature_system` to validate; the raw constructor does no checks so that
    it can be used under ``jit``/``vmap``.
    """

    U: Float[Array, "n d"]
    s: Float[Array, " d"]
    lam: Float[Array, ""]

    @property
    def n(self) -> int:
        return self.U.shape[-2]

    @property
    def d(self) -> int:
        return self.U.shape[-1]


def _orthonormality_tol(dtype) -> float:
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def feature_system(
    U: ArrayLike, s: ArrayLike, lam: ArrayLike, *, atol: float | None = None
) -> FeatureSystem:
    """Validate (U, s, λ) and return a :class:`FeatureSystem`.

    Args:
        U: (n, d) matrix with orthonormal columns (UᵀU = I), n ≥ d.
        s: (d,) positive singular values (any order).
        lam: λ ≥ 0.
        atol: tolerance on ‖UᵀU − I‖_max (default 1e-10 in float64, 1e-4 in float32).

    Returns:
        The system, in the floating dtype of the inputs (float64 only if x64 is enabled).

    Raises:
        ValueError: naming ``U``, ``s`` or ``lam`` for a wrong shape, a d mismatch, non-orthonormal
            columns, s ≤ 0, λ < 0 or non-finite values.
    """
    U_np = np.asarray(U, dtype=float)
    s_np = np.atleast_1d(np.asarray(s, dtype=float))
    lam_np = np.asarray(lam, dtype=float)
    if U_np.ndim != 2:
        raise ValueError(f"U: expected a 2-D (n, d) matrix, got shape {U_np.shape}")
    if s_np.ndim != 1:
        raise ValueError(f"s: expected a 1-D vector of singular values, got shape {s_np.shape}")
    n, d = U_np.shape
    if s_np.shape[0] != d:
        raise ValueError(
            f"s: has {s_np.shape[0]} singular values but U has d={d} columns; pass one value per column of U"
        )
    if n < d:
        raise ValueError(f"U: has n={n} rows < d={d} columns, so its columns cannot be orthonormal")
    if lam_np.ndim != 0:
        raise ValueError(f"lam: expected a scalar, got shape {lam_np.shape}")
    for name, arr in (("U", U_np), ("s", s_np), ("lam", lam_np)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{name}: contains non-finite values (NaN or inf); pass finite numbers"
            )
    if np.any(s_np <= 0):
        raise ValueError(
            f"s: singular values must be > 0, got {s_np.tolist()}; drop zero directions or use system_from_matrix"
        )
    if lam_np < 0:
        raise ValueError(f"lam: must be >= 0, got {float(lam_np)}")
    dtype = (
        jnp.asarray(U).dtype
        if jnp.issubdtype(jnp.asarray(U).dtype, jnp.floating)
        else jnp.result_type(float)
    )
    tol = _orthonormality_tol(dtype) if atol is None else atol
    err = np.max(np.abs(U_np.T @ U_np - np.eye(d)))
    if err > tol:
        raise ValueError(
            f"U: columns are not orthonormal (max |UᵀU - I| = {err:.2e} > {tol:.0e}); "
            "orthonormalise it (e.g. with a QR decomposition) or build the system with system_from_matrix"
        )
    return FeatureSystem(
        jnp.asarray(U_np, dtype), jnp.asarray(s_np, dtype), jnp.asarray(lam_np, dtype)
    )


def rotation_matrix(delta: ArrayLike) -> Float[Array, "2 2"]:
    """The two-feature U(δ) = [[√(1−δ²), −δ], [δ, √(1−δ²)]] (the paper's reference system) (jit/vmap friendly).

    δ = 0 gives U = I (uncoupled features); |δ| < 1 is required.
    """
    delta = jnp.asarray(delta, dtype=jnp.result_type(delta, float))
    c = jnp.sqrt(1.0 - delta**2)
    return jnp.stack([jnp.stack([c, -delta]), jnp.stack([delta, c])])


def rotation_system(s: ArrayLike, delta: ArrayLike, lam: ArrayLike) -> FeatureSystem:
    """The paper's two-feature system: U = U(δ), singular values s = (s₁, s₂), regulariser λ.

    Args:
        s: (2,) singular values.
        delta: coupling δ with |δ| < 1.
        lam: λ ≥ 0.

    Raises:
        ValueError: for |δ| ≥ 1 or a bad ``s``/``lam`` (see :func:`feature_system`).
    """
    d = float(np.asarray(delta))
    if not np.isfinite(d) or abs(d) >= 1:
        raise ValueError(f"delta: must satisfy |delta| < 1, got {d}")
    s_arr = jnp.asarray(s, dtype=jnp.result_type(float))
    return feature_system(rotation_matrix(jnp.asarray(d, s_arr.dtype)), s_arr, lam)


def random_orthonormal(key: PRNGKeyArray, n: int, d: int, dtype=None) -> Float[Array, "n d"]:
    """A Haar-random n × d matrix with orthonormal columns (QR of a Gaussian matrix, signs fixed).

    Raises:
        ValueError: if d > n or either is < 1.
    """
    if n < 1 or d < 1 or d > n:
        raise ValueError(f"n, d: need 1 <= d <= n, got n={n}, d={d}")
    dtype = jnp.result_type(float) if dtype is None else dtype
    g = jax.random.normal(key, (n, d), dtype)
    q, r = jnp.linalg.qr(g)
    return q * jnp.sign(jnp.diagonal(r))[None, :]


def random_system(key: PRNGKeyArray, n: int, s: ArrayLike, lam: ArrayLike) -> FeatureSystem:
    """A system with Haar-random U (n × len(s)) and the given singular values.

    Args:
        key: PRNG key for U.
        n: number of examples (rows of U).
        s: (d,) positive singular values.
        lam: λ ≥ 0.

    Returns:
        The validated :class:`FeatureSystem`.
    """
    s_arr = jnp.atleast_1d(jnp.asarray(s, dtype=jnp.result_type(float)))
    return feature_system(random_orthonormal(key, n, s_arr.shape[0], s_arr.dtype), s_arr, lam)


def system_from_matrix(
    YPhi: ArrayLike, lam: ArrayLike, *, rtol: float | None = None, return_V: bool = False
):
    """The feature system of an arbitrary label-signed feature matrix YΦ = U S Vᵀ.

    Singular values below ``rtol · s_max`` are dropped (a documented truncation: those directions
    have no dynamics). Singular values are returned in decreasing order.

    Args:
        YPhi: (n, p) matrix, rows already multiplied by the labels ±1.
        lam: λ ≥ 0.
        rtol: relative truncation tolerance (default: max(n, p) · machine epsilon of the dtype).
        return_V: also return V (p × d).

    Returns:
        ``FeatureSystem`` (and ``V`` when ``return_V``).

    Raises:
        ValueError: naming ``YPhi`` if it is not 2-D, is non-finite or is zero.
    """
    A = jnp.asarray(YPhi)
    if A.ndim != 2:
        raise ValueError(f"YPhi: expected a 2-D (n, p) matrix, got shape {A.shape}")
    if not bool(jnp.all(jnp.isfinite(A))):
        raise ValueError("YPhi: contains non-finite values (NaN or inf)")
    if not jnp.issubdtype(A.dtype, jnp.floating):
        A = A.astype(jnp.result_type(float))
    U, s, Vt = jnp.linalg.svd(A, full_matrices=False)
    if rtol is None:
        rtol = max(A.shape) * float(jnp.finfo(A.dtype).eps)
    if float(s[0]) == 0.0:
        raise ValueError("YPhi: is the zero matrix; it has no features")
    keep = np.asarray(s > rtol * s[0])
    system = feature_system(U[:, keep], s[keep], lam, atol=100 * _orthonormality_tol(A.dtype))
    if return_V:
        return system, Vt[keep].T
    return system


def stack_systems(systems) -> FeatureSystem:
    """Stack systems of equal shapes into one batched system (U (B, n, d), s (B, d), lam (B,)) for ``jax.vmap``.

    Stacks on the host (``numpy``), which is much faster than stacking many device arrays.

    Args:
        systems: a non-empty sequence of :class:`FeatureSystem` with equal shapes.

    Returns:
        The batched system, in the dtype of the first system.

    Raises:
        ValueError: naming ``systems`` if it is empty or the shapes differ.
    """
    systems = list(systems)
    if not systems:
        raise ValueError("systems: got an empty sequence; pass at least one FeatureSystem")
    shapes = {tuple(np.shape(x) for x in sy) for sy in systems}
    if len(shapes) != 1:
        raise ValueError(f"systems: all systems must have the same shapes, got {sorted(shapes)}")
    dtype = jnp.asarray(systems[0].s).dtype
    return FeatureSystem(
        *(jnp.asarray(np.stack([np.asarray(sy[i]) for sy in systems]), dtype) for i in range(3))
    )
