"""Tangent features Φ = ∇_θ f(X; θ) of any pure ``apply_fn(params, x)``, and its per-example view.

``apply_fn(params, x)`` is any pure JAX function over any params PyTree: a Flax Linen ``apply``,
an NNX module viewed with :func:`ntkdyn.pure`, or a plain function of a dict of arrays. Its output
is (n,) or (n, 1) for a scalar model, or (n, K) with ``output_axis`` naming the class axis for
per-class outputs (Pezeshki et al. 2021, Sec. 2).

Besides :func:`tangent_features` this module holds the helpers the other tangent modules share:
:func:`apply_outputs` (outputs reshaped to (n,) or (n, K)), :func:`per_example` (the model on one
example), :func:`batch_bounds` (the blocks of a batched computation) and :func:`jacobian_blocks`
(per-example Jacobians, one block per params leaf).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ntkdyn._checks import check_output_axis, check_outputs, check_x

__all__ = [
    "ApplyFn",
    "tangent_features",
    "apply_outputs",
    "per_example",
    "batch_bounds",
    "jacobian_blocks",
]

#: A pure model ``apply_fn(params, x) -> outputs`` over any params PyTree.
ApplyFn = Callable[[Any, Array], Array]


def apply_outputs(apply_fn: ApplyFn, params: Any, x: Array, K: int | None) -> Array:
    """``apply_fn(params, x)`` reshaped to (n,) for a scalar model (K = None) or (n, K).

    Args:
        apply_fn: pure ``apply_fn(params, x)``.
        params: its params PyTree.
        x: (n, ...) inputs.
        K: outputs per example, ``None`` for a scalar model (see :func:`ntkdyn._checks.check_outputs`).

    Returns:
        The outputs, (n,) or (n, K).
    """
    out = apply_fn(params, x)
    return out.reshape(x.shape[0]) if K is None else out.reshape(x.shape[0], K)


def per_example(apply_fn: ApplyFn, K: int | None) -> Callable[[Any, Array], Array]:
    """f(params, x_i) for one example x_i: a scalar, or (K,) for per-class outputs.

    Args:
        apply_fn: pure batched ``apply_fn(params, x)``.
        K: outputs per example, ``None`` for a scalar model.

    Returns:
        The per-example function, to be batched with ``jax.vmap``.
    """

    def f(params, xi):
        out = apply_fn(params, xi[None])[0]
        return out.reshape(()) if K is None else out.reshape((K,))

    return f


def batch_bounds(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    """The [a, b) bounds of consecutive blocks of ``batch_size`` examples out of n.

    Args:
        n: number of examples.
        batch_size: examples per block; ``None`` for one block.

    Returns:
        The list of (a, b) pairs covering 0 … n.

    Raises:
        ValueError: naming ``batch_size`` when it is not a positive integer.
    """
    if batch_size is None:
        return [(0, n)]
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: must be a positive integer or None, got {batch_size}")
    b = int(batch_size)
    return [(i, min(i + b, n)) for i in range(0, n, b)]


def _jacobian_leaves(apply_fn: ApplyFn, params: Any, x: Array, K: int | None) -> list[Array]:
    """Per-example Jacobian, one (n, [K,] p_leaf) block per params leaf."""
    jac = jax.vmap(jax.jacrev(per_example(apply_fn, K)), in_axes=(None, 0))(params, x)
    lead = 1 if K is None else 2
    return [leaf.reshape(leaf.shape[:lead] + (-1,)) for leaf in jax.tree.leaves(jac)]


@functools.partial(jax.jit, static_argnums=0, static_argnames="K")
def jacobian_blocks(apply_fn: ApplyFn, params: Any, x: Array, *, K: int | None) -> list[Array]:
    """Per-example Jacobians ∂f(x_i)/∂θ, one (n, [K,] p_leaf) block per params leaf (jitted).

    Args:
        apply_fn: pure ``apply_fn(params, x)`` (static: hashable).
        params: its params PyTree.
        x: (n, ...) inputs.
        K: outputs per example, ``None`` for a scalar model.

    Returns:
        The blocks in the order of ``jax.tree.leaves(params)``.
    """
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
    x = check_x(x, "x")
    output_axis = check_output_axis(output_axis)
    K = check_outputs(apply_fn, params, x, output_axis)
    blocks = [
        _jacobian_flat(apply_fn, params, x[a:b], K=K)
        for a, b in batch_bounds(x.shape[0], batch_size)
    ]
    return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=0)
