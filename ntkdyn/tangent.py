"""Tangent features, the empirical NTK and the feature spectrum of real networks.

For a network f(x; θ) at θ₀ the tangent features are Φ = ∇_θ f(X; θ₀) (n × p, one row per
example, columns in the order of ``jax.flatten_util.ravel_pytree(params)``), the empirical neural
tangent kernel is Θ = ΦΦᵀ, and the label-signed features have the thin SVD YΦ = U S Vᵀ whose
(U, s) form the feature system of the theory core (Pezeshki et al. 2021, Sec. 2 and 3). The
feature responses of a trained network are z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) with U from θ₀
(Sec. 4, Fig. 5).

``apply_fn(params, x)`` is any pure JAX function over any params PyTree: a Flax Linen ``apply``,
an NNX module viewed with :func:`ntkdyn.models.mlp.pure`, or a plain function of a dict of arrays.
Its output is (n,) or (n, 1) for a scalar model, or (n, K) with ``output_axis`` naming the class
axis for per-class outputs.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float

from ntkdyn.models.mlp import DenseApply
from ntkdyn.systems import FeatureSystem, feature_system

__all__ = [
    "NTKMethod",
    "tangent_features",
    "empirical_ntk",
    "FeatureSpectrum",
    "feature_spectrum",
    "feature_responses",
    "responses_from_outputs",
    "feature_response_trajectory",
    "FeatureResponseTracker",
    "signed_labels",
]

ApplyFn = Callable[[Any, Array], Array]

# Kernel columns per VJP/JVP batch of NTK_VECTOR_PRODUCTS when no batch_size is given: bounds its
# memory to p × 64 parameter cotangents, never n × p.
_VP_DEFAULT_COLUMNS = 64


class NTKMethod(enum.Enum):
    """How :func:`empirical_ntk` computes Θ = ΦΦᵀ.

    Attributes:
        JACOBIAN_CONTRACTION: per-example Jacobians (``vmap(jacrev)``) contracted leaf by leaf. The
            reference: works for any ``apply_fn``; costs ≈ n₁n₂p FLOPs and holds a
            (batch × p) Jacobian block (n × p without ``batch_size``).
        NTK_VECTOR_PRODUCTS: columns Θ e_j = Φ₁(Φ₂ᵀ e_j) by a VJP followed by a JVP; never forms
            Φ, holds p × batch parameter cotangents (64 columns at a time without ``batch_size``). Slower than the contraction on dense nets,
            but the only generic choice when p · n does not fit in memory.
        STRUCTURED: the layer-wise form of a dense network,
            Θ = Σ_l (A_{l−1}A'_{l−1}ᵀ + 1) ⊙ (Δ_l Δ'_lᵀ)
            (A_l the post-activations with A_0 = x, Δ_l = ∂f/∂h_l the back-propagated errors of
            the pre-activations h_l = A_{l−1}W_l + b_l; the "+1" is the bias term, dropped for
            layers without bias). Costs ≈ n₁n₂ Σ_l (h_{l−1} + h_l) FLOPs, about h-fold fewer than
            the contraction, and O(n Σ_l h_l) memory. Recognises only a
            :class:`ntkdyn.models.mlp.DenseApply` (what :func:`ntkdyn.models.mlp.pure` returns for an
            :class:`ntkdyn.MLP` without batch norm, or ``DenseApply(activation)`` for a list of
            (W, b) layers); any other ``apply_fn`` raises a ``ValueError`` (no silent fallback).
    """

    JACOBIAN_CONTRACTION = "jacobian_contraction"
    NTK_VECTOR_PRODUCTS = "ntk_vector_products"
    STRUCTURED = "structured"


# --------------------------------------------------------------------------------------------------
# Validation


def _check_x(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(
            f"{name}: expected a batch of inputs shaped (n, ...) with n >= 1, got shape {x.shape}"
        )
    if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf); clean the inputs first")
    return x


def _check_output_axis(output_axis: int | None) -> int | None:
    if output_axis is not None and output_axis not in (1, -1):
        raise ValueError(
            f"output_axis: the class axis of an (n, K) output must be 1 or -1, got {output_axis}"
        )
    return output_axis


def _out_shape(apply_fn: ApplyFn, params: Any, x: Array, output_axis: int | None, name: str = "x"):
    """Shape-check ``apply_fn(params, x)``; returns K (None for a scalar model)."""
    try:
        out = jax.eval_shape(apply_fn, params, x)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"params: apply_fn(params, {name}) failed for {name} of shape {x.shape} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); pass the params that belong to apply_fn and "
            "inputs of the shape it expects"
        ) from exc
    shape = tuple(out.shape)
    if not shape or shape[0] != x.shape[0]:
        raise ValueError(
            f"apply_fn: must return one output row per example of {name} (shape ({x.shape[0]}, ...)), got {shape}"
        )
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        if output_axis is not None:
            return shape[1] if len(shape) == 2 else None
        return None
    if len(shape) == 2 and output_axis is not None:
        return shape[1]
    raise ValueError(
        f"apply_fn: output has shape {shape}, not a scalar per example ((n,) or (n, 1)); pass "
        "output_axis=-1 for per-class (n, K) outputs"
    )


def _per_example(apply_fn: ApplyFn, K: int | None) -> Callable[[Any, Array], Array]:
    """f(params, x_i) for one example: a scalar, or (K,) with an output axis."""

    def f(params, xi):
        out = apply_fn(params, xi[None])[0]
        return out.reshape(()) if K is None else out.reshape((K,))

    return f


def _batches(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    if batch_size is None:
        return [(0, n)]
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be a positive integer or None, got {batch_size}")
    b = int(batch_size)
    return [(i, min(i + b, n)) for i in range(0, n, b)]


# --------------------------------------------------------------------------------------------------
# Tangent features


def _jacobian_leaves(apply_fn: ApplyFn, params: Any, x: Array, K: int | None) -> list[Array]:
    """Per-example Jacobian, one (n, [K,] p_leaf) block per params leaf."""
    jac = jax.vmap(jax.jacrev(_per_example(apply_fn, K)), in_axes=(None, 0))(params, x)
    lead = 1 if K is None else 2
    return [leaf.reshape(leaf.shape[:lead] + (-1,)) for leaf in jax.tree.leaves(jac)]


@functools.partial(jax.jit, static_argnums=0, static_argnames="K")
def _jacobian_leaves_jit(apply_fn, params, x, *, K):
    return _jacobian_leaves(apply_fn, params, x, K)


@functools.partial(jax.jit, static_argnums=0, static_argnames="K")
def _jacobian_flat(apply_fn, params, x, *, K):
    return jnp.concatenate(_jacobian_leaves(apply_fn, params, x, K), axis=-1)


def tangent_features(
    apply_fn: ApplyFn,
    params: Any,
    x: ArrayLike,
    *,
    output_axis: int | None = None,
    batch_size: int | None = None,
) -> Float[Array, "n p"] | Float[Array, "n k p"]:
    """Tangent features Φ = ∇_θ f(X; θ) (Pezeshki et al. 2021, Sec. 2).

    Row i is the gradient of the output on example i with respect to all parameters, flattened in
    the order of ``jax.flatten_util.ravel_pytree(params)``, so ``Φ @ ravel_pytree(dθ)[0]`` is the
    first-order change of the outputs.

    Args:
        apply_fn: pure ``apply_fn(params, x)`` returning (n,) or (n, 1) (or (n, K), see
            ``output_axis``).
        params: its params PyTree.
        x: (n, ...) inputs.
        output_axis: for per-class outputs (n, K), the class axis (1 or -1); Φ is then (n, K, p).
        batch_size: examples per Jacobian evaluation (bounds the working memory; same result).

    Returns:
        Φ, shape (n, p) (or (n, K, p)), in the dtype of the outputs.

    Raises:
        ValueError: naming ``x`` (wrong rank, non-finite), ``params`` (do not fit ``apply_fn``),
            ``apply_fn`` (non-scalar output without ``output_axis``), ``output_axis`` or
            ``batch_size``.
    """
    x = _check_x(x, "x")
    output_axis = _check_output_axis(output_axis)
    K = _out_shape(apply_fn, params, x, output_axis)
    blocks = [
        _jacobian_flat(apply_fn, params, x[a:b], K=K) for a, b in _batches(x.shape[0], batch_size)
    ]
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)


# --------------------------------------------------------------------------------------------------
# Empirical NTK


def _contract(j1: list[Array], j2: list[Array], K: int | None) -> Array:
    if K is None:
        return sum(a @ b.T for a, b in zip(j1, j2, strict=True))
    return sum(jnp.einsum("ikp,jlp->ijkl", a, b) for a, b in zip(j1, j2, strict=True))


@functools.partial(jax.jit, static_argnames="K")
def _contract_jit(j1, j2, *, K):
    return _contract(j1, j2, K)


def _ntk_jacobian(apply_fn, params, x1, x2, K, batch_size, same):
    jac = functools.partial(_jacobian_leaves_jit, apply_fn, K=K)
    contract = functools.partial(_contract_jit, K=K)
    rows = _batches(x1.shape[0], batch_size)
    cols = _batches(x2.shape[0], batch_size)
    if len(rows) == 1 and len(cols) == 1:
        j1 = jac(params, x1)
        return contract(j1, j1 if same else jac(params, x2))
    out = []
    for a, b in rows:
        j1 = jac(params, x1[a:b])
        out.append(jnp.concatenate([contract(j1, jac(params, x2[c:d])) for c, d in cols], axis=1))
    return jnp.concatenate(out, axis=0)


@functools.partial(jax.jit, static_argnums=0, static_argnames="K")
def _ntk_columns(apply_fn, params, x1, x2, cots, *, K):
    """Θ columns for a batch of output cotangents on x2: JVP on x1 of the VJP on x2."""
    _, vjp2 = jax.vjp(lambda q: _outputs(apply_fn, q, x2, K), params)

    def one(c):
        (tangent,) = vjp2(c)
        return jax.jvp(lambda q: _outputs(apply_fn, q, x1, K), (params,), (tangent,))[1]

    return jax.vmap(one)(cots)


def _ntk_vector_products(apply_fn, params, x1, x2, K, batch_size):
    """Θ columns by VJP (cotangent e_j on x2) then JVP (on x1); p × batch memory."""
    n2 = x2.shape[0]
    out_dim = () if K is None else (K,)

    f2 = lambda p: _outputs(apply_fn, p, x2, K)  # noqa: E731
    basis_dtype = jax.eval_shape(f2, params).dtype
    blocks = []
    size = n2 * (1 if K is None else K)
    for a, b in _batches(size, _VP_DEFAULT_COLUMNS if batch_size is None else batch_size):
        idx = jnp.arange(a, b)
        cots = jax.nn.one_hot(idx, size, dtype=basis_dtype).reshape((b - a, n2) + out_dim)
        blocks.append(_ntk_columns(apply_fn, params, x1, x2, cots, K=K))  # (batch, n1[, K])
    cols = jnp.concatenate(blocks, axis=0)  # (n2[*K], n1[, K])
    if K is None:
        return cols.T
    # cols[(j, l), i, k] = Θ[i, j, k, l]
    return cols.reshape(n2, K, x1.shape[0], K).transpose(2, 0, 3, 1)


def _outputs(apply_fn, params, x, K):
    out = apply_fn(params, x)
    return out.reshape(x.shape[0]) if K is None else out.reshape(x.shape[0], K)


def _dense_features(apply_fn: DenseApply, params: Any, x: Array, K: int | None):
    """A_{l−1} and Δ_l of each layer (see :class:`NTKMethod`), plus whether the layer has a bias."""
    layers = apply_fn.layers(params)
    a = x.reshape(x.shape[0], -1)
    acts, pres = [a], []
    for i, (W, b) in enumerate(layers):
        h = a @ W + (b if b is not None else 0.0)
        pres.append(h)
        if i < len(layers) - 1:
            a = apply_fn.activation(h)
            acts.append(a)
    n, K_out = x.shape[0], layers[-1][0].shape[1]
    # Δ_L: ∂f_k/∂h_L = e_k (one column per output), shape (n, K_out, h_L).
    delta = jnp.broadcast_to(jnp.eye(K_out, dtype=pres[-1].dtype), (n, K_out, K_out))
    deltas = [delta]
    for i in range(len(layers) - 1, 0, -1):
        h = pres[i - 1]
        dphi = jax.jvp(apply_fn.activation, (h,), (jnp.ones_like(h),))[1]
        delta = jnp.einsum("nko,ho->nkh", delta, layers[i][0]) * dphi[:, None, :]
        deltas.append(delta)
    deltas = deltas[::-1]
    if K is None:
        deltas = [d[:, 0, :] for d in deltas]
    has_bias = [b is not None for _, b in layers]
    return acts, deltas, has_bias


def _structured_block(apply_fn, params, x1, x2, K, same):
    A1, D1, has_bias = _dense_features(apply_fn, params, x1, K)
    A2, D2, _ = (A1, D1, has_bias) if same else _dense_features(apply_fn, params, x2, K)
    theta = 0.0
    for a1, d1, a2, d2, bias in zip(A1, D1, A2, D2, has_bias, strict=True):
        gram_a = a1 @ a2.T + (1.0 if bias else 0.0)
        if K is None:
            theta = theta + gram_a * (d1 @ d2.T)
        else:
            theta = theta + gram_a[:, :, None, None] * jnp.einsum("ikh,jlh->ijkl", d1, d2)
    return theta


@functools.partial(jax.jit, static_argnums=0, static_argnames=("K", "same"))
def _structured_jit(apply_fn, params, x1, x2, *, K, same):
    return _structured_block(apply_fn, params, x1, x2, K, same)


def _ntk_structured(apply_fn, params, x1, x2, K, batch_size, same):
    if not isinstance(apply_fn, DenseApply):
        raise ValueError(
            f"method: NTKMethod.STRUCTURED needs a dense network given as ntkdyn.DenseApply (from "
            f"ntkdyn.pure(MLP(...)) without batch norm, or DenseApply(activation) over a list of (W, b) "
            f"layers), got apply_fn of type {type(apply_fn).__name__}; use NTKMethod.JACOBIAN_CONTRACTION "
            "or NTKMethod.NTK_VECTOR_PRODUCTS for other models"
        )
    rows = _batches(x1.shape[0], batch_size)
    if len(rows) == 1:
        return _structured_jit(apply_fn, params, x1, x2, K=K, same=same)
    return jnp.concatenate(
        [_structured_jit(apply_fn, params, x1[a:b], x2, K=K, same=False) for a, b in rows], axis=0
    )


def empirical_ntk(
    apply_fn: ApplyFn,
    params: Any,
    x1: ArrayLike,
    x2: ArrayLike | None = None,
    *,
    method: NTKMethod = NTKMethod.JACOBIAN_CONTRACTION,
    batch_size: int | None = None,
    output_axis: int | None = None,
) -> Float[Array, "n1 n2"] | Float[Array, "n1 n2 k k"]:
    """Empirical neural tangent kernel Θ(x1, x2) = Φ(x1) Φ(x2)ᵀ (Jacot et al. 2018; Pezeshki et al. 2021, Sec. 2).

    All methods give the same kernel up to floating-point rounding; see :class:`NTKMethod` for the
    trade-offs. With ``batch_size`` the inputs are processed in blocks of that many examples: the
    working memory is O(n₁n₂ + p · batch_size) (O(n₁n₂ + n Σ h) for ``STRUCTURED``) and the result
    does not depend on the batch size.

    Args:
        apply_fn: pure ``apply_fn(params, x)`` (see the module docstring).
        params: its params PyTree (θ at which the kernel is taken).
        x1: (n1, ...) inputs.
        x2: (n2, ...) inputs; ``None`` for x2 = x1 (a symmetric Gram matrix).
        method: an :class:`NTKMethod`.
        batch_size: examples per block (``None``: one block).
        output_axis: for per-class outputs (n, K), the class axis (1 or -1); Θ is then
            (n1, n2, K, K) with Θ[i, j, k, l] = ∇f_k(x1_i) · ∇f_l(x2_j).

    Returns:
        Θ, shape (n1, n2) (or (n1, n2, K, K)), in the dtype of the outputs.

    Raises:
        ValueError: naming ``x1``/``x2`` (rank, non-finite, feature mismatch), ``params``,
            ``apply_fn`` (non-scalar output without ``output_axis``), ``method`` (not an
            :class:`NTKMethod`, or ``STRUCTURED`` on a model it does not cover) or ``batch_size``.
    """
    if not isinstance(method, NTKMethod):
        raise ValueError(f"method: expected an ntkdyn.NTKMethod member, got {method!r}")
    x1 = _check_x(x1, "x1")
    same = x2 is None
    x2 = x1 if same else _check_x(x2, "x2")
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x2: examples have shape {x2.shape[1:]} but x1's have {x1.shape[1:]}; they must match"
        )
    output_axis = _check_output_axis(output_axis)
    K = _out_shape(apply_fn, params, x1, output_axis, "x1")
    _batches(x1.shape[0], batch_size)
    if method is NTKMethod.JACOBIAN_CONTRACTION:
        return _ntk_jacobian(apply_fn, params, x1, x2, K, batch_size, same)
    if method is NTKMethod.NTK_VECTOR_PRODUCTS:
        return _ntk_vector_products(apply_fn, params, x1, x2, K, batch_size)
    return _ntk_structured(apply_fn, params, x1, x2, K, batch_size, same)


# --------------------------------------------------------------------------------------------------
# Spectrum of YΦ


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
    _, vjp = jax.vjp(lambda q: _outputs(apply_fn, q, x, None), params)
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
):
    """Spectrum of the label-signed tangent features YΦ = U S Vᵀ from the signed Gram matrix (Sec. 3).

    Computes Θ = ΦΦᵀ with :func:`empirical_ntk`, casts it to float64 (in NumPy, whatever the
    model's dtype and whether or not ``jax_enable_x64`` is on) and takes ``eigh`` of
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
        method: :class:`NTKMethod` for the Gram matrix.
        batch_size: forwarded to :func:`empirical_ntk`.

    Returns:
        :class:`FeatureSpectrum` ``(U, s)``; with ``return_V`` the pair ``(spectrum, V)``.

    Raises:
        ValueError: naming ``y`` (shape, values outside {−1, +1}/{0, 1}), ``tol``, or the arguments
            of :func:`empirical_ntk`; naming ``x`` if the kernel is non-finite or zero.
    """
    x = _check_x(x, "x")
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


# --------------------------------------------------------------------------------------------------
# Feature responses of real training


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
    x = _check_x(x, "x")
    _out_shape(apply_fn, params0, x, None)
    yv = jnp.asarray(signed_labels(y, x.shape[0]), jnp.result_type(float))
    U = _check_U(U, x.shape[0])
    f0 = _outputs(apply_fn, params0, x, None)
    return lambda p: U.T @ (yv * (_outputs(apply_fn, p, x, None) - f0))


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
        U: (n, d) left singular vectors at θ₀ (:func:`feature_spectrum`).

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
            f"outputs: expected (..., {n}) outputs on the {n} examples of f0, got shape {outputs.shape}"
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
    """Empirical feature responses z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) (Pezeshki et al. 2021, Sec. 4, Fig. 5).

    For a linearized network this is exactly z = S Vᵀ(θ_t − θ₀) restricted to the span of U; for
    a real network it measures how much of each initial tangent feature the training has put into
    the margins.

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params0: θ₀ (where U was taken).
        params_t: θ_t.
        x: (n, ...) the inputs U was computed on.
        y: (n,) labels in {−1, +1} or {0, 1}.
        U: (n, d) left singular vectors from :func:`feature_spectrum` at θ₀.

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
