"""The spectrum of the label-signed tangent features YΦ = U S Vᵀ, the theory's (U, s).

:func:`feature_spectrum` takes the Gram matrix YΘY = U S² Uᵀ of the empirical NTK and decomposes
it in float64 (all directions; memory n², time n³), or, given ``k``, finds the k leading triplets
matrix-free with :func:`ntkdyn.truncated_svd` on :func:`signed_tangent_operator` (products YΦV by
JVPs and ΦᵀYU by VJPs over batches of examples; memory O(n·k + p·k), neither Φ nor the Gram matrix
is formed). :class:`FeatureSpectrum` holds (U, s) and turns into the theory core's
:class:`ntkdyn.FeatureSystem` for a given λ (Pezeshki et al. 2021, Sec. 2 and 3).
:func:`signed_labels` is the one place labels in {−1, +1} or {0, 1} become ±1.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ntkdyn._checks import check_outputs, check_x
from ntkdyn.linalg import BlockOperator, OnUnconverged, TruncatedSVD, truncated_svd
from ntkdyn.systems import FeatureSystem, feature_system
from ntkdyn.tangent.features import ApplyFn, apply_outputs
from ntkdyn.tangent.ntk import NTKMethod, empirical_ntk

__all__ = ["FeatureSpectrum", "feature_spectrum", "signed_labels", "signed_tangent_operator"]

# Examples per JVP/VJP call of the matrix-free path when no batch_size is given: the working set is
# a few (columns × batch × width) activations, ≈ 80 MB per 64 columns of a 300-wide layer.
_DEFAULT_EXAMPLES_PER_BATCH = 1024
# Column blocks are padded to a multiple of this width, so that a solver whose block width changes
# (locking) compiles the products for a few shapes only.
_COLUMN_BUCKET = 8


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
    out, vjp = jax.vjp(lambda q: apply_outputs(apply_fn, q, x, None), params)
    cots = cots.astype(out.dtype)  # the outputs' dtype (float32 params with float64 inputs)
    return jax.vmap(lambda c: ravel_pytree(vjp(c)[0])[0])(cots)


def _signed_jvps(apply_fn, params, xb, yb, V):
    """(YΦ) V over stacked batches xb (m, bs, ...), yb (m, bs); V (p, c) -> (m·bs, c)."""
    _, unravel = ravel_pytree(params)

    def one(batch):
        xi, yi = batch
        _, lin = jax.linearize(lambda q: apply_outputs(apply_fn, q, xi, None), params)
        out = jax.vmap(lambda v: lin(unravel(v)), in_axes=1, out_axes=1)(V)
        return out * yi[:, None].astype(out.dtype)

    return jax.lax.map(one, (xb, yb)).reshape(-1, V.shape[1])


def _signed_vjps(apply_fn, params, xb, yb, U):
    """Φᵀ Y U summed over stacked batches; U (m, bs, c) -> (p, c)."""
    flat, _ = ravel_pytree(params)

    def body(acc, batch):
        xi, yi, ui = batch
        out, vjp = jax.vjp(lambda q: apply_outputs(apply_fn, q, xi, None), params)
        cots = (ui * yi[:, None]).astype(out.dtype)
        g = jax.vmap(lambda c: ravel_pytree(vjp(c)[0])[0], in_axes=1, out_axes=1)(cots)
        return acc + g.astype(acc.dtype), None

    acc, _ = jax.lax.scan(body, jnp.zeros((flat.size, U.shape[-1]), flat.dtype), (xb, yb, U))
    return acc


@functools.cache
def _compiled_products(backend: str):
    """The jitted product functions, with Eigen's matrix products on a CPU (about 8 % faster here
    than the default, measured by ``benchmarks/spectrum.py``; see
    :func:`ntkdyn.xla.eigen_matmul_options`)."""
    from ntkdyn.xla import eigen_matmul_options

    options = eigen_matmul_options(backend)
    return tuple(
        jax.jit(f, static_argnums=0, compiler_options=options or None)
        for f in (_signed_jvps, _signed_vjps)
    )


def signed_tangent_operator(
    apply_fn: ApplyFn,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    batch_size: int | None = None,
) -> BlockOperator:
    """YΦ (n × p, Φ = ∇_θ f(X; θ₀)) as a matrix-free :class:`ntkdyn.BlockOperator` (Sec. 2 and 3).

    ``matmat(V)`` = YΦV: per batch of examples, ``jax.linearize`` of ``apply_fn(·, x_b)`` at
    ``params`` and the linear map vmapped over the columns of V (JVPs). ``rmatmat(U)`` = ΦᵀYU: the
    VJP of the batch vmapped over the columns of U, summed over batches. The batches run inside
    one compiled ``lax.map``/``lax.scan``; the last batch is padded with copies of the first
    example (zero label, so they add nothing), and blocks are padded to a multiple of 8 columns,
    so a run compiles few shapes. Columns of V are in ``ravel_pytree(params)`` order; the
    products run in the params' dtype (a float32 model stays float32).

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params: θ₀ (a PyTree of floating arrays).
        x: (n, ...) inputs.
        y: (n,) labels in {−1, +1} or {0, 1}.
        batch_size: examples per JVP/VJP evaluation (default 1024); bounds the working memory to
            about (columns × batch_size × widest layer) activations.

    Returns:
        The operator, shape (n, p), dtype that of the raveled params.

    Raises:
        ValueError: naming ``x``, ``y``, ``params``, ``apply_fn`` or ``batch_size`` on bad input.
    """
    x = check_x(x, "x")
    n = x.shape[0]
    yv = signed_labels(y, n)
    check_outputs(apply_fn, params, x, None)
    flat, _ = ravel_pytree(params)
    if not jnp.issubdtype(flat.dtype, jnp.floating):
        raise ValueError(
            f"params: the matrix-free spectrum needs floating params, got dtype {flat.dtype}"
        )
    if batch_size is None:
        bs = min(n, _DEFAULT_EXAMPLES_PER_BATCH)
    elif isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size: must be a positive integer or None, got {batch_size}")
    else:
        bs = min(n, int(batch_size))
    m = math.ceil(n / bs)
    pad = m * bs - n
    xb = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
    xb = xb.reshape((m, bs) + x.shape[1:])
    yb = jnp.asarray(np.concatenate([yv, np.zeros(pad)]).reshape(m, bs), flat.dtype)
    dtype = flat.dtype

    jvps, vjps = _compiled_products(jax.default_backend())

    def width(c: int) -> int:
        return _COLUMN_BUCKET * math.ceil(c / _COLUMN_BUCKET)

    def matmat(V: Float[Array, "p c"]) -> Float[Array, "n c"]:
        c = V.shape[1]
        V = jnp.pad(jnp.asarray(V, dtype), ((0, 0), (0, width(c) - c)))
        return jvps(apply_fn, params, xb, yb, V)[:n, :c]

    def rmatmat(U: Float[Array, "n c"]) -> Float[Array, "p c"]:
        c = U.shape[1]
        U = jnp.pad(jnp.asarray(U, dtype), ((0, pad), (0, width(c) - c)))
        return vjps(apply_fn, params, xb, yb, U.reshape(m, bs, -1))[:, :c]

    return BlockOperator(matmat, rmatmat, (n, int(flat.size)), dtype)


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
    k: int | None = None,
    key: PRNGKeyArray | None = None,
    residual_tol: float = 1e-4,
    max_iters: int = 60,
    on_unconverged: OnUnconverged = OnUnconverged.WARN,
    return_report: bool = False,
) -> (
    FeatureSpectrum
    | tuple[FeatureSpectrum, Float[Array, "p d"]]
    | tuple[FeatureSpectrum, TruncatedSVD]
    | tuple[FeatureSpectrum, Float[Array, "p d"], TruncatedSVD]
):
    """Spectrum of the label-signed tangent features YΦ = U S Vᵀ from the signed Gram matrix (Sec. 3).

    Computes Θ = ΦΦᵀ with :func:`ntkdyn.empirical_ntk`, casts it to float64 (in NumPy, whatever
    the model's dtype and whether or not ``jax_enable_x64`` is on) and takes ``eigh`` of
    YΘY = U S² Uᵀ. Directions with s_j² ≤ tol · s₁² are dropped (a rank-deficient Φ, or more
    examples than parameters, gives exactly such null directions; they have no dynamics).
    U and s are returned as JAX arrays in the default float dtype (float64 when x64 is enabled).

    V is Φᵀ Y U S⁻¹ (p × d, rows in ``ravel_pytree(params)`` order); it is computed on demand by
    vector-Jacobian products, without forming Φ.

    With ``k``, only the k leading triplets are computed, matrix-free: :func:`ntkdyn.truncated_svd`
    (randomized block Krylov with float64 Rayleigh–Ritz) on :func:`signed_tangent_operator`, whose
    products are JVPs and VJPs over batches of ``batch_size`` examples in the model's dtype. Neither
    Φ nor the n × n Gram matrix is formed: memory O((n + p) · k), time ≈ (number of products) × (one
    forward-and-backward pass over the data). The iteration stops once every residual
    r_j = ‖YΦ v_j − s_j u_j‖ / s_j ≤ ``residual_tol`` (v_j = ΦᵀY u_j / s_j, so ΦᵀY u_j = s_j v_j
    exactly) or after ``max_iters`` block iterations; an unconverged result is handled as
    ``on_unconverged`` says and reported with ``return_report``. V comes from the same products (no
    extra pass). The same sign convention u_jᵀ1 ≥ 0 holds on both paths.

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params: θ₀.
        x: (n, ...) inputs.
        y: (n,) labels in {−1, +1} or {0, 1}.
        tol: relative eigenvalue cut-off (default n · ε of the kernel's dtype, e.g. ≈ 3.6e-5 for
            n = 300 in float32: below that the float32 Gram carries only rounding noise).
        return_V: also return V.
        method: :class:`ntkdyn.NTKMethod` for the Gram matrix (dense path only).
        batch_size: forwarded to :func:`ntkdyn.empirical_ntk`; with ``k``, the examples per JVP/VJP
            evaluation (default 1024).
        k: ``None`` for the dense path (all directions above ``tol``); an integer
            1 ≤ k ≤ min(n, p) for the k leading triplets, matrix-free.
        key: PRNG key of the random start block (required with ``k``).
        residual_tol: with ``k``, the residual every r_j must reach (float32 models resolve
            r_j down to ≈ 1e-6 · s₁² / s_j²).
        max_iters: with ``k``, the budget of block iterations (each costs at most 2·8 products:
            blocks of 8 columns, :func:`ntkdyn.linalg.truncated_svd`).
        on_unconverged: with ``k``, an :class:`ntkdyn.OnUnconverged` (default: warn and return
            the result flagged unconverged in the report).
        return_report: with ``k``, also return the solver's :class:`ntkdyn.TruncatedSVD` (residuals,
            iterations, converged, matvecs; U, s, V in float64 with the same signs).

    Returns:
        :class:`FeatureSpectrum` ``(U, s)``; with ``return_V`` the pair ``(spectrum, V)``; with
        ``return_report`` the report last: ``(spectrum, report)`` or ``(spectrum, V, report)``.

    Raises:
        ValueError: naming ``y`` (shape, values outside {−1, +1}/{0, 1}), ``tol``, or the arguments
            of :func:`ntkdyn.empirical_ntk`; naming ``x`` if the kernel is non-finite or zero;
            with ``k``, naming ``k`` (≤ 0, above min(n, p) or the rank of Φ), ``key``, ``tol``,
            ``residual_tol``, ``max_iters``, ``batch_size`` or the model's non-finite outputs.
        ntkdyn.SVDNotConvergedError: with ``k`` and ``OnUnconverged.RAISE``, if the residuals miss
            ``residual_tol``.
    """
    x = check_x(x, "x")
    yv = signed_labels(y, x.shape[0])
    if k is not None:
        return _matrix_free_spectrum(
            apply_fn,
            params,
            x,
            yv,
            k=k,
            key=key,
            tol=tol,
            residual_tol=residual_tol,
            max_iters=max_iters,
            batch_size=batch_size,
            on_unconverged=on_unconverged,
            return_V=return_V,
            return_report=return_report,
        )
    if return_report:
        raise ValueError(
            "return_report: the report belongs to the matrix-free path; pass k as well, or drop "
            "return_report for the dense decomposition"
        )
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


def _matrix_free_spectrum(
    apply_fn,
    params,
    x,
    yv,
    *,
    k,
    key,
    tol,
    residual_tol,
    max_iters,
    batch_size,
    on_unconverged,
    return_V,
    return_report,
):
    """The k-leading-triplet path of :func:`feature_spectrum` (arguments validated there)."""
    if tol is not None:
        raise ValueError(
            f"tol: is the eigenvalue cut-off of the dense path (k=None), got tol={tol} with k={k}; "
            "the matrix-free path stops on residual_tol"
        )
    if key is None:
        raise ValueError(
            "key: the matrix-free path (k given) needs a PRNG key for its random start block, "
            "e.g. key=jax.random.PRNGKey(0)"
        )
    if not (np.isfinite(residual_tol) and 0 < residual_tol < 1):
        raise ValueError(f"residual_tol: must be a relative residual in (0, 1), got {residual_tol}")
    op = signed_tangent_operator(apply_fn, params, x, yv, batch_size=batch_size)
    res = truncated_svd(
        op,
        k,
        key=key,
        tol=residual_tol,
        max_iters=max_iters,
        return_V=return_V,
        on_unconverged=on_unconverged,
    )
    # The dense path's sign convention: u_jᵀ1 ≥ 0 (v_j flips with u_j).
    flip = np.where(res.U.sum(axis=0) < 0, -1.0, 1.0)
    res = res._replace(U=res.U * flip, V=None if res.V is None else res.V * flip)
    dtype = jnp.result_type(float)
    spectrum = FeatureSpectrum(jnp.asarray(res.U, dtype), jnp.asarray(res.s, dtype))
    out: tuple = (spectrum,)
    if return_V:
        out += (jnp.asarray(res.V, op.dtype),)
    if return_report:
        out += (res,)
    return out[0] if len(out) == 1 else out
