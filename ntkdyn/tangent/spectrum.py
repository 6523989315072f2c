"""The spectrum of the label-signed tangent features YΦ = U S Vᵀ, the theory's (U, s).

:func:`feature_spectrum` decomposes YΦ with the solver it is given, as ``diffeqsolve`` takes a
``Tsit5()``: :class:`Dense` takes ``eigh`` of the Gram matrix YΘY = U S² Uᵀ of the empirical NTK
in float64 (all directions; memory n², time n³); :class:`BlockKrylov` finds the k leading
triplets matrix-free with :func:`ntkdyn.truncated_svd` on :func:`signed_tangent_operator`
(products YΦV by JVPs and ΦᵀYU by VJPs over batches of examples; memory O(n·k + p·k), neither Φ
nor the Gram matrix is formed). Either way the result is one :class:`FeatureSpectrum` (U, s,
optional V, the solver's residuals and product count) that turns into the theory core's
:class:`ntkdyn.FeatureSystem` for a given λ (Pezeshki et al. 2021, Sec. 2 and 3).
:func:`signed_labels` is the one place labels in {−1, +1} or {0, 1} become ±1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ntkdyn._checks import check_outputs, check_x
from ntkdyn.linalg import BlockOperator, KrylovCheckpoint, OnUnconverged, truncated_svd
from ntkdyn.systems import FeatureSystem, feature_system
from ntkdyn.tangent.features import ApplyFn, apply_outputs
from ntkdyn.tangent.ntk import NTKMethod, empirical_ntk

__all__ = [
    "BlockKrylov",
    "Dense",
    "FeatureSpectrum",
    "feature_spectrum",
    "signed_labels",
    "signed_tangent_operator",
]

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


@dataclasses.dataclass(frozen=True)
class Dense:
    """Solver: ``eigh`` of the label-signed Gram matrix YΘY = U S² Uᵀ, every direction.

    The empirical NTK Θ = ΦΦᵀ (:func:`ntkdyn.empirical_ntk`) is cast to float64 in NumPy, whatever
    the model's dtype and whether or not ``jax_enable_x64`` is on; U and s come back in the default
    float dtype (float64 when x64 is on). Directions with s_j² ≤ tol · s₁² are dropped (a
    rank-deficient Φ, or more examples than parameters, gives exactly such null directions; they
    have no dynamics). Memory n², time n³: the path for n up to a few thousand.

    Attributes:
        tol: relative eigenvalue cut-off in [0, 1) (default n · ε of the kernel's dtype, e.g.
            ≈ 3.6e-5 for n = 300 in float32: below that the float32 Gram carries only rounding
            noise).
        method: :class:`ntkdyn.NTKMethod` of the Gram matrix (``STRUCTURED``: the layer-wise NTK of
            a dense network, the fast path of an MLP).
        batch_size: examples per NTK block (memory bound), or ``None`` for one block.
        cache_features: keep Φ in host memory and compute each block of it once
            (:func:`ntkdyn.empirical_ntk`'s ``cache_features``): the fast dense path for a large
            network on a few thousand examples.
    """

    tol: float | None = None
    method: NTKMethod = NTKMethod.JACOBIAN_CONTRACTION
    batch_size: int | None = None
    cache_features: bool = False

    def __post_init__(self) -> None:
        """Raises: ValueError naming ``tol`` outside [0, 1)."""
        if self.tol is not None and not (np.isfinite(self.tol) and 0 <= self.tol < 1):
            raise ValueError(f"tol: must be a relative cut-off in [0, 1), got {self.tol}")

    def describe(self) -> str:
        """One line for reports, e.g. ``"dense: eigh of the float64 Gram matrix YΘY, NTK by
        structured"``."""
        method = self.method.name.lower().replace("_", " ")
        cached = ", Φ kept in memory" if self.cache_features else ""
        return f"dense: eigh of the float64 Gram matrix YΘY, NTK by {method}{cached}"


@dataclasses.dataclass(frozen=True)
class BlockKrylov:
    """Solver: the k leading triplets of YΦ matrix-free, by randomized block Krylov.

    :func:`ntkdyn.truncated_svd` (thick-restarted block Lanczos with float64 Rayleigh–Ritz) on
    :func:`signed_tangent_operator`, whose products are JVPs and VJPs over batches of
    ``batch_size`` examples in the model's dtype: works for any ``apply_fn``. Memory
    O((n + p) · k), time ≈ (number of products) × (one forward-and-backward pass over the data).
    The iteration stops once every residual r_j = ‖YΦ v_j − s_j u_j‖ / s_j ≤ ``tol``
    (v_j = ΦᵀY u_j / s_j, so ΦᵀY u_j = s_j v_j exactly) or after ``max_iters`` block iterations.

    Attributes:
        k: number of leading directions, 1 ≤ k ≤ min(n, p).
        tol: the residual every r_j must reach, in (0, 1) (float32 models resolve r_j down to
            ≈ 1e-6 · s₁² / s_j²).
        max_iters: budget of block iterations (each costs at most 2·8 products).
        key: PRNG key of the random start block (required).
        batch_size: examples per JVP/VJP evaluation (default 1024).
        on_unconverged: an :class:`ntkdyn.OnUnconverged` (default: warn, and return the result
            with ``converged=False``).
        checkpoint: a :class:`ntkdyn.linalg.KrylovCheckpoint` that saves the iteration's state
            and continues from it (a resumable run; the result is the same bit for bit), or
            ``None``.
    """

    k: int
    tol: float = 1e-4
    max_iters: int = 60
    _: dataclasses.KW_ONLY
    key: PRNGKeyArray | None = None
    batch_size: int | None = None
    on_unconverged: OnUnconverged = OnUnconverged.WARN
    checkpoint: KrylovCheckpoint | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        """Raises: ValueError naming ``k``, ``tol``, ``max_iters`` or ``key``."""
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 1:
            raise ValueError(f"k: must be an integer >= 1, got k = {self.k}")
        if not (np.isfinite(self.tol) and 0 < self.tol < 1):
            raise ValueError(f"tol: must be a relative residual in (0, 1), got {self.tol}")
        if isinstance(self.max_iters, bool) or int(self.max_iters) < 1:
            raise ValueError(f"max_iters: must be an integer >= 1, got {self.max_iters}")
        if self.key is None:
            raise ValueError(
                "key: BlockKrylov needs a PRNG key for its random start block, e.g. "
                "BlockKrylov(k, key=jax.random.PRNGKey(0))"
            )

    def describe(self) -> str:
        """One line for reports: the method, k and the stopping rule."""
        return (
            f"matrix-free block Krylov: top {self.k} by JVP/VJP products, stop at every "
            f"r_j <= {self.tol:g} or after {self.max_iters} iterations"
        )


Solver = Dense | BlockKrylov


@dataclasses.dataclass(frozen=True)
class FeatureSpectrum:
    """Singular triplets of the label-signed tangent features YΦ = U S Vᵀ, from any solver.

    Unpacks as ``U, s = spectrum`` (the pair the theory uses).

    Attributes:
        U: (n, d) orthonormal columns, in order of decreasing s, signs with u_jᵀ1 ≥ 0.
        s: (d,) singular values s₁ ≥ … ≥ s_d > 0 (after truncation).
        V: (p, d) right singular vectors (rows in ``ravel_pytree(params)`` order), or ``None``
            when not requested.
        residuals: (d,) r_j = ‖YΦ v_j − s_j u_j‖ / s_j of :class:`BlockKrylov`; ``None`` for
            :class:`Dense` (``eigh`` computes none).
        iterations: block iterations of :class:`BlockKrylov` (``None`` for :class:`Dense`).
        products: operator products (columns) of :class:`BlockKrylov` (``None`` for
            :class:`Dense`).
        converged: whether every r_j reached the solver's tolerance (always true for
            :class:`Dense`).
        solver: the solver's one-line description (:meth:`Dense.describe`).
        report: the :class:`ntkdyn.TruncatedSVD` of :class:`BlockKrylov` (U and s in float64
            whatever the default dtype, residuals, products), ``None`` for :class:`Dense`.
    """

    U: Float[Array, "n d"]
    s: Float[Array, " d"]
    V: Float[Array, "p d"] | None = None
    residuals: Float[np.ndarray, " d"] | None = None
    iterations: int | None = None
    products: int | None = None
    converged: bool = True
    solver: str = ""
    report: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __iter__(self):
        """``U, s = spectrum``."""
        return iter((self.U, self.s))

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


_LEGACY = ("tol", "method", "batch_size", "k", "key", "residual_tol", "max_iters")
_LEGACY += ("on_unconverged", "return_V", "return_report")


def feature_spectrum(
    apply_fn: ApplyFn,
    params: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    solver: Solver | None = None,
    compute_V: bool = False,
    **legacy: Any,
) -> FeatureSpectrum | tuple:
    """Spectrum of the label-signed tangent features YΦ = U S Vᵀ at ``params`` (Sec. 2 and 3).

    Φ = ∇_θ f(X; θ) (n × p), Y = diag(y±); YΘY = YΦΦᵀY = U S² Uᵀ. The ``solver`` picks the
    algorithm (:class:`Dense`: ``eigh`` of YΘY in float64, every direction above its cut-off;
    :class:`BlockKrylov`: the k leading triplets matrix-free); the result is one
    :class:`FeatureSpectrum` either way, with the sign convention u_jᵀ1 ≥ 0. V = ΦᵀYUS⁻¹ comes
    from VJPs without forming Φ (:class:`Dense`, on request) or from the solver's own products
    (:class:`BlockKrylov`, no extra pass).

    Deprecated keyword form (kept for existing callers, translated to a solver): ``tol``,
    ``method``, ``batch_size`` → :class:`Dense`; with ``k`` (and ``key``, ``residual_tol``,
    ``max_iters``, ``on_unconverged``, ``batch_size``) → :class:`BlockKrylov`; ``return_V`` and
    ``return_report`` return the old tuples ``(spectrum, V)``, ``(spectrum, report)`` or
    ``(spectrum, V, report)`` (report: the :class:`ntkdyn.TruncatedSVD`).

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params: θ (a PyTree of floating arrays), usually θ₀.
        x: (n, ...) inputs.
        y: (n,) labels in {−1, +1} or {0, 1}.
        solver: :class:`Dense` (default ``Dense()``) or :class:`BlockKrylov`.
        compute_V: also fill :attr:`FeatureSpectrum.V` (:class:`BlockKrylov` always may).
        **legacy: the deprecated keywords above.

    Returns:
        :class:`FeatureSpectrum` (the deprecated ``return_V``/``return_report`` give tuples).

    Raises:
        ValueError: naming ``y`` (shape, values outside {−1, +1}/{0, 1}), ``solver``, ``x`` (a
            non-finite or zero kernel, non-finite outputs), ``k`` (above min(n, p) or the rank of
            Φ), ``batch_size`` or the arguments of :func:`ntkdyn.empirical_ntk`.
        ntkdyn.SVDNotConvergedError: :class:`BlockKrylov` with ``OnUnconverged.RAISE`` if the
            residuals miss its tolerance.
    """
    unknown = sorted(set(legacy) - set(_LEGACY))
    if unknown:
        raise TypeError(f"feature_spectrum() got unexpected keyword arguments {unknown}")
    if legacy:
        return _legacy_call(apply_fn, params, x, y, solver, compute_V, legacy)
    spectrum, _ = _solve(apply_fn, params, x, y, Dense() if solver is None else solver, compute_V)
    return spectrum


def _legacy_call(apply_fn, params, x, y, solver, compute_V, kw):
    """The deprecated keyword form: the same solver as an object, the old tuple shapes."""
    warnings.warn(
        "feature_spectrum(k=..., key=..., return_V=..., ...) is deprecated: pass "
        "solver=Dense(tol, method, batch_size) or solver=BlockKrylov(k, tol, max_iters, key=...) "
        "and read V and the residuals from the FeatureSpectrum",
        DeprecationWarning,
        stacklevel=3,
    )
    if solver is not None:
        raise ValueError(
            f"solver: pass either solver= or the deprecated keywords, got both ({sorted(kw)})"
        )
    return_V, return_report = kw.pop("return_V", False), kw.pop("return_report", False)
    if kw.get("k") is None:
        if return_report:
            raise ValueError(
                "return_report: the report belongs to the matrix-free path; pass k as well, or "
                "drop return_report for the dense decomposition"
            )
        # residual_tol, max_iters, key and on_unconverged have no effect here, as before.
        solver = Dense(**{name: kw[name] for name in ("tol", "method", "batch_size") if name in kw})
    else:
        if kw.get("tol") is not None:
            raise ValueError(
                f"tol: is the eigenvalue cut-off of the dense path (k=None), got tol={kw['tol']} "
                f"with k={kw['k']}; the matrix-free path stops on residual_tol"
            )
        solver = BlockKrylov(
            kw["k"],
            kw.get("residual_tol", 1e-4),
            kw.get("max_iters", 60),
            key=kw.get("key"),
            batch_size=kw.get("batch_size"),
            on_unconverged=kw.get("on_unconverged", OnUnconverged.WARN),
        )
    spectrum, report = _solve(apply_fn, params, x, y, solver, compute_V or return_V)
    out: tuple = (dataclasses.replace(spectrum, V=None) if not compute_V else spectrum,)
    if return_V:
        out += (spectrum.V,)
    if return_report:
        out += (report,)
    return out[0] if len(out) == 1 else out


def _solve(apply_fn, params, x, y, solver, compute_V) -> tuple[FeatureSpectrum, Any]:
    """(spectrum, the :class:`ntkdyn.TruncatedSVD` of :class:`BlockKrylov` or ``None``)."""
    x = check_x(x, "x")
    yv = signed_labels(y, x.shape[0])
    if isinstance(solver, BlockKrylov):
        return _block_krylov(apply_fn, params, x, yv, solver, compute_V)
    if not isinstance(solver, Dense):
        raise ValueError(
            f"solver: expected ntkdyn.tangent.Dense() or BlockKrylov(k, key=...), got {solver!r}"
        )
    theta = empirical_ntk(
        apply_fn, params, x, method=solver.method, batch_size=solver.batch_size,
        cache_features=solver.cache_features,
    )  # fmt: skip
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
    tol = solver.tol
    if tol is None:
        tol = x.shape[0] * float(jnp.finfo(theta.dtype).eps)
    keep = evals > tol * evals[0]
    U = evecs[:, keep]
    # Fix the sign of each direction so that u_jᵀ1 ≥ 0 (eigh's sign is arbitrary).
    U = U * np.where(U.sum(axis=0) < 0, -1.0, 1.0)[None, :]
    s = np.sqrt(evals[keep])
    dtype = jnp.result_type(float)
    V = None
    if compute_V:
        # V = Φᵀ Y U S⁻¹ column by column: VJPs with cotangents Y u_j / s_j.
        cots = jnp.asarray((yv[:, None] * U / s[None, :]).T, theta.dtype)
        V = _right_vectors(apply_fn, params, x, cots).T
    spectrum = FeatureSpectrum(
        jnp.asarray(U, dtype), jnp.asarray(s, dtype), V=V, solver=solver.describe()
    )
    return spectrum, None


def _block_krylov(apply_fn, params, x, yv, solver: BlockKrylov, compute_V: bool):
    """The :class:`BlockKrylov` path of :func:`feature_spectrum` (labels already ±1)."""
    op = signed_tangent_operator(apply_fn, params, x, yv, batch_size=solver.batch_size)
    res = truncated_svd(
        op,
        solver.k,
        key=solver.key,
        tol=solver.tol,
        max_iters=solver.max_iters,
        return_V=compute_V,
        on_unconverged=solver.on_unconverged,
        checkpoint=solver.checkpoint,
    )
    # The dense path's sign convention: u_jᵀ1 ≥ 0 (v_j flips with u_j).
    flip = np.where(res.U.sum(axis=0) < 0, -1.0, 1.0)
    res = res._replace(U=res.U * flip, V=None if res.V is None else res.V * flip)
    dtype = jnp.result_type(float)
    spectrum = FeatureSpectrum(
        jnp.asarray(res.U, dtype),
        jnp.asarray(res.s, dtype),
        V=None if res.V is None else jnp.asarray(res.V, op.dtype),
        residuals=np.asarray(res.residuals),
        iterations=int(res.iterations),
        products=int(res.matvecs),
        converged=bool(res.converged),
        solver=solver.describe(),
        report=res,
    )
    return spectrum, res
