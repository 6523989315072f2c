"""The empirical neural tangent kernel Θ = ΦΦᵀ by three methods that give the same kernel.

:class:`NTKMethod` picks the implementation (each member documents its trade-off);
:func:`empirical_ntk` computes Θ(x1, x2), batched over examples so that the memory is bounded by
the kernel, not by Φ. The Jacobian contraction is the reference; the other two are tested against
it (Jacot et al. 2018; Pezeshki et al. 2021, Sec. 2).
"""

from __future__ import annotations

import enum
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ntkdyn._checks import check_output_axis, check_outputs, check_x
from ntkdyn.tangent.features import (
    ApplyFn,
    apply_outputs,
    batch_bounds,
    jacobian_blocks,
    tangent_features,
)
from ntkdyn.tangent.structure import DenseStructure

__all__ = ["NTKMethod", "empirical_ntk"]

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
            Φ, holds p × batch parameter cotangents (64 columns at a time without
            ``batch_size``). Slower than the contraction on dense nets, but the only generic
            choice when p · n does not fit in memory.
        STRUCTURED: the layer-wise form of a dense network,
            Θ = Σ_l (A_{l−1}A'_{l−1}ᵀ + 1) ⊙ (Δ_l Δ'_lᵀ)
            (A_l the post-activations with A_0 = x, Δ_l = ∂f/∂h_l the back-propagated errors of
            the pre-activations h_l = A_{l−1}W_l + b_l; the "+1" is the bias term, dropped for
            layers without bias). Costs ≈ n₁n₂ Σ_l (h_{l−1} + h_l) FLOPs, about h-fold fewer than
            the contraction, and O(n Σ_l h_l) memory. Needs an ``apply_fn`` that implements
            :class:`ntkdyn.tangent.DenseStructure` (e.g. :class:`ntkdyn.DenseApply`, what
            :func:`ntkdyn.pure` returns for an :class:`ntkdyn.MLP` without batch norm); any other
            ``apply_fn`` raises a ``ValueError`` (no silent fallback).
    """

    JACOBIAN_CONTRACTION = "jacobian_contraction"
    NTK_VECTOR_PRODUCTS = "ntk_vector_products"
    STRUCTURED = "structured"


# --------------------------------------------------------------------------------------------------
# Jacobian contraction (the reference)


def _contract(j1: list[Array], j2: list[Array], K: int | None) -> Array:
    if K is None:
        return sum(a @ b.T for a, b in zip(j1, j2, strict=True))
    return sum(jnp.einsum("ikp,jlp->ijkl", a, b) for a, b in zip(j1, j2, strict=True))


@functools.partial(jax.jit, static_argnames="K")
def _contract_jit(j1, j2, *, K):
    return _contract(j1, j2, K)


def _ntk_jacobian(apply_fn, params, x1, x2, K, batch_size, same):
    jac = functools.partial(jacobian_blocks, apply_fn, K=K)
    contract = functools.partial(_contract_jit, K=K)
    rows = batch_bounds(x1.shape[0], batch_size)
    cols = batch_bounds(x2.shape[0], batch_size)
    if len(rows) == 1 and len(cols) == 1:
        j1 = jac(params, x1)
        return contract(j1, j1 if same else jac(params, x2))
    out = []
    for a, b in rows:
        j1 = jac(params, x1[a:b])
        out.append(jnp.concatenate([contract(j1, jac(params, x2[c:d])) for c, d in cols], axis=1))
    return jnp.concatenate(out, axis=0)


def _ntk_cached(apply_fn, params, x, batch_size):
    """ΦΦᵀ with Φ computed once, block by block, into host memory (``cache_features``)."""
    rows = batch_bounds(x.shape[0], batch_size)
    phi = None
    for a, b in rows:
        block = np.asarray(tangent_features(apply_fn, params, x[a:b]))
        if phi is None:
            phi = np.empty((x.shape[0], block.shape[1]), block.dtype)
        phi[a:b] = block
    gram = np.empty((x.shape[0], x.shape[0]), phi.dtype)
    for a, b in rows:
        gram[a:b] = phi[a:b] @ phi.T
    return jnp.asarray(gram)


# --------------------------------------------------------------------------------------------------
# NTK-vector products


@functools.partial(jax.jit, static_argnums=0, static_argnames="K")
def _ntk_columns(apply_fn, params, x1, x2, cots, *, K):
    """Θ columns for a batch of output cotangents on x2: JVP on x1 of the VJP on x2."""
    _, vjp2 = jax.vjp(lambda q: apply_outputs(apply_fn, q, x2, K), params)

    def one(c):
        (tangent,) = vjp2(c)
        return jax.jvp(lambda q: apply_outputs(apply_fn, q, x1, K), (params,), (tangent,))[1]

    return jax.vmap(one)(cots)


def _ntk_vector_products(apply_fn, params, x1, x2, K, batch_size):
    """Θ columns by VJP (cotangent e_j on x2) then JVP (on x1); p × batch memory."""
    n2 = x2.shape[0]
    out_dim = () if K is None else (K,)

    f2 = lambda p: apply_outputs(apply_fn, p, x2, K)  # noqa: E731
    basis_dtype = jax.eval_shape(f2, params).dtype
    blocks = []
    size = n2 * (1 if K is None else K)
    for a, b in batch_bounds(size, _VP_DEFAULT_COLUMNS if batch_size is None else batch_size):
        idx = jnp.arange(a, b)
        cots = jax.nn.one_hot(idx, size, dtype=basis_dtype).reshape((b - a, n2) + out_dim)
        blocks.append(_ntk_columns(apply_fn, params, x1, x2, cots, K=K))  # (batch, n1[, K])
    cols = jnp.concatenate(blocks, axis=0)  # (n2[*K], n1[, K])
    if K is None:
        return cols.T
    # cols[(j, l), i, k] = Θ[i, j, k, l]
    return cols.reshape(n2, K, x1.shape[0], K).transpose(2, 0, 3, 1)


# --------------------------------------------------------------------------------------------------
# Structured: the layer-wise form of a dense network


def _dense_features(apply_fn: DenseStructure, params: Any, x: Array, K: int | None):
    """A_{l−1} and Δ_l of each layer (see :class:`NTKMethod`), plus whether the layer has a bias."""
    layers = list(apply_fn.layers(params))
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
    if not isinstance(apply_fn, DenseStructure):
        raise ValueError(
            "method: NTKMethod.STRUCTURED needs an apply_fn that implements "
            "ntkdyn.tangent.DenseStructure (an `activation` and a `layers(params)` method, e.g. "
            "ntkdyn.DenseApply from ntkdyn.pure(MLP(...)) without batch norm), got apply_fn of "
            f"type {type(apply_fn).__name__}; use NTKMethod.JACOBIAN_CONTRACTION or "
            "NTKMethod.NTK_VECTOR_PRODUCTS for other models"
        )
    try:
        hash(apply_fn)
    except TypeError as exc:
        raise ValueError(
            f"apply_fn: a DenseStructure is a static argument of jax.jit and must be hashable; "
            f"{type(apply_fn).__name__} is not (make it a frozen dataclass)"
        ) from exc
    rows = batch_bounds(x1.shape[0], batch_size)
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
    cache_features: bool = False,
) -> Float[Array, "n1 n2"] | Float[Array, "n1 n2 k k"]:
    """Empirical neural tangent kernel Θ(x1, x2) = Φ(x1) Φ(x2)ᵀ (Jacot et al. 2018; Sec. 2).

    All methods give the same kernel up to floating-point rounding; see :class:`NTKMethod` for the
    trade-offs. With ``batch_size`` the inputs are processed in blocks of that many examples: the
    working memory is O(n₁n₂ + p · batch_size) (O(n₁n₂ + n Σ h) for ``STRUCTURED``) and the result
    does not depend on the batch size.

    Args:
        apply_fn: pure ``apply_fn(params, x)`` (see :mod:`ntkdyn.tangent.features`).
        params: its params PyTree (θ at which the kernel is taken).
        x1: (n1, ...) inputs.
        x2: (n2, ...) inputs; ``None`` for x2 = x1 (a symmetric Gram matrix).
        method: an :class:`NTKMethod`.
        batch_size: examples per block (``None``: one block).
        output_axis: for per-class outputs (n, K), the class axis (1 or -1); Θ is then
            (n1, n2, K, K) with Θ[i, j, k, l] = ∇f_k(x1_i) · ∇f_l(x2_j).
        cache_features: ``JACOBIAN_CONTRACTION`` with ``batch_size`` on one input set (x2 =
            ``None``), scalar outputs: compute each block of Φ once and keep Φ (n × p numbers) in
            host memory, so the Gram matrix costs n per-example gradients instead of
            (n / batch_size)² blocks of them (a ResNet on a few thousand images: minutes, not
            hours); memory O(n·p).

    Returns:
        Θ, shape (n1, n2) (or (n1, n2, K, K)), in the dtype of the outputs.

    Raises:
        ValueError: naming ``x1``/``x2`` (rank, non-finite, feature mismatch), ``params``,
            ``apply_fn`` (non-scalar output without ``output_axis``), ``method`` (not an
            :class:`NTKMethod`, or ``STRUCTURED`` on a model it does not cover) or ``batch_size``.
    """
    if not isinstance(method, NTKMethod):
        raise ValueError(f"method: expected an ntkdyn.NTKMethod member, got {method!r}")
    x1 = check_x(x1, "x1")
    same = x2 is None
    x2 = x1 if same else check_x(x2, "x2")
    if x1.shape[1:] != x2.shape[1:]:
        raise ValueError(
            f"x2: examples have shape {x2.shape[1:]} but x1's have {x1.shape[1:]}; they must match"
        )
    output_axis = check_output_axis(output_axis)
    K = check_outputs(apply_fn, params, x1, output_axis, "x1")
    batch_bounds(x1.shape[0], batch_size)
    if cache_features:
        if method is not NTKMethod.JACOBIAN_CONTRACTION or not same or K is not None:
            raise ValueError(
                "cache_features: needs method=JACOBIAN_CONTRACTION, one input set (x2=None) and "
                "scalar outputs"
            )
        return _ntk_cached(apply_fn, params, x1, batch_size)
    if method is NTKMethod.JACOBIAN_CONTRACTION:
        return _ntk_jacobian(apply_fn, params, x1, x2, K, batch_size, same)
    if method is NTKMethod.NTK_VECTOR_PRODUCTS:
        return _ntk_vector_products(apply_fn, params, x1, x2, K, batch_size)
    return _ntk_structured(apply_fn, params, x1, x2, K, batch_size, same)
