"""The frozen-batch-statistics view: a batch-norm network as a per-example function for tangent features.

Tangent features Φ = ∇_θ f(X; θ₀) need f to act on each example alone: row i of Φ must not depend
on which other examples share the batch. Batch norm in train mode breaks that (it normalises with
the batch's mean and variance); in eval mode it normalises with stored statistics, which at
initialisation are Flax's zeros and ones, not the statistics of any data. :func:`freeze_batch_stats`
measures, at θ₀, the population mean and variance of every batch-norm layer's input over the
training inputs, layer by layer (each layer sees its predecessors already normalised with their
measured statistics, as in eval mode), stores them as ``batch_stats`` and returns the pure
eval-mode function

    f(params, x) = module.apply({"params": params, "batch_stats": stats}, x, train=False),

which is per-example and differentiates only the ``"params"`` collection.

Two traps, and what to do:

* A Linen ``apply`` given the whole ``variables`` dict as ``params``: the ``"batch_stats"``
  collection sits among the leaves, so tangent features would differentiate the statistics too.
  Pass ``variables["params"]`` and close over the statistics, i.e. use :func:`freeze_batch_stats`
  (:func:`check_params` raises an :class:`ntkdyn.errors.InputError` saying so).
* ``train=True`` in the apply function: Flax then wants to update the running averages and raises
  ``flax.errors.ModifyScopeVariableError`` (the ``batch_stats`` collection is immutable unless
  ``mutable=["batch_stats"]``). Batch statistics of the current batch are not a per-example
  function anyway: evaluate in eval mode with frozen statistics (:func:`freeze_batch_stats`).
  :func:`ntkdyn.models.registry.check_logits` turns that exception into an ``InputError`` that
  says this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ntkdyn.errors import InputError

__all__ = ["freeze_batch_stats", "check_params", "batch_norm_inputs"]


def _unfreeze(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _unfreeze(v) for k, v in tree.items()}
    return tree


def check_params(params: Any, *, flag: str = "--model") -> None:
    """Reject a params tree that holds a ``"batch_stats"`` collection (the whole Linen ``variables``).

    Args:
        params: what is about to be differentiated.
        flag: the flag named in the message.

    Raises:
        InputError: ``params`` is a mapping with a ``"batch_stats"`` key.
    """
    if isinstance(params, Mapping) and "batch_stats" in params:
        raise InputError(
            f"{flag}: the params hold a 'batch_stats' collection (the whole Linen variables "
            f"dict, keys {sorted(params)}), so tangent features would differentiate the batch "
            "statistics; pass variables['params'] and freeze the statistics with "
            "ntkdyn.models.frozen.freeze_batch_stats(module, variables, x_train)"
        )


def _reduce_axes(module: nn.BatchNorm, ndim: int) -> tuple[int, ...]:
    feature = module.axis if isinstance(module.axis, tuple) else (module.axis,)
    feature = {a % ndim for a in feature}
    return tuple(a for a in range(ndim) if a not in feature)


def batch_norm_inputs(
    module: nn.Module, variables: Mapping[str, Any], x: Array, **kwargs: Any
) -> tuple[Any, list[tuple[tuple[str, ...], Array, Array, Array]]]:
    """Run ``module`` in eval mode and report, for every batch-norm call, its input's moments.

    Args:
        module: a Linen module whose ``__call__`` takes ``train``.
        variables: ``{"params": ..., "batch_stats": ...}``.
        x: a batch of inputs.
        **kwargs: further keyword arguments of the module's call.

    Returns:
        ``(output, calls)``: the eval-mode output and, per batch-norm call in call order,
        ``(path, count, mean, m2)``: the module path, the number of reduced values per channel, the
        per-channel mean and the sum of squared deviations Σ(v − mean)² of its input.
    """
    calls: list = []

    def spy(next_fun, args, kw, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            v = jnp.asarray(args[0], jnp.float32)
            axes = _reduce_axes(context.module, v.ndim)
            count = np.prod([v.shape[a] for a in axes])
            mean = jnp.mean(v, axis=axes)
            m2 = jnp.sum(jnp.square(v - _bcast(mean, v, axes)), axis=axes)
            calls.append((tuple(context.module.path), jnp.float32(count), mean, m2))
        return next_fun(*args, **kw)

    with nn.intercept_methods(spy):
        out = module.apply(dict(variables), x, train=False, **kwargs)
    return out, calls


def _bcast(mean: Array, v: Array, axes: tuple[int, ...]) -> Array:
    shape = [1 if a in axes else v.shape[a] for a in range(v.ndim)]
    return mean.reshape(shape)


def _set(tree: dict, path: tuple[str, ...], stats: dict) -> None:
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = stats


def freeze_batch_stats(
    module: nn.Module,
    variables: Mapping[str, Any],
    x: Float[Array, "n ..."],
    *,
    batch_size: int = 256,
) -> tuple[Callable[[Any, Array], Array], Any, dict[str, Any]]:
    """Measure every batch-norm layer's population statistics over ``x`` at θ₀ and freeze them.

    Layer by layer in call order, the mean μ_l and the (biased) variance σ_l² of layer l's input
    over all of ``x`` (every example and every spatial position, per channel) are computed with
    the earlier layers already normalising with their measured statistics — the statistics that
    eval mode will then reproduce exactly. Not a running average: exact over all of ``x``
    (per-batch moments combined with Chan et al.'s formula in float64). One pass over ``x`` per
    batch-norm layer.

    Args:
        module: a Flax Linen module whose ``__call__(x, train=...)`` uses ``nn.BatchNorm`` with
            ``use_running_average=not train`` (e.g. :class:`ntkdyn.models.resnet.ResNet`).
        variables: its variables at θ₀, ``{"params": ..., "batch_stats": ...}``.
        x: the training inputs whose statistics are measured (``stats_x``).
        batch_size: examples per forward pass (memory bound only; the result does not depend on it
            beyond float rounding).

    Returns:
        ``(apply_fn, params, batch_stats)``: ``apply_fn(params, x) = module.apply({"params":
        params, "batch_stats": batch_stats}, x, train=False)`` (jitted; it composes with ``grad``,
        ``vmap`` and an outer ``jit``), ``params = variables["params"]`` and the measured
        statistics (``{…: {"mean", "var"}}`` in the module's layout).

    Raises:
        ValueError: ``variables`` has no ``"params"``, ``x`` is empty, or ``batch_size`` < 1.
    """
    variables = _unfreeze(variables)
    if "params" not in variables:
        raise ValueError(
            f"variables: expected a Linen variables dict with 'params', got keys {sorted(variables)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    if x.shape[0] < 1:
        raise ValueError(f"x: need at least one example to measure statistics, got {x.shape}")
    params = variables["params"]
    others = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    stats = _unfreeze(variables.get("batch_stats", {}))

    @jax.jit
    def moments(stats, xb):
        _, calls = batch_norm_inputs(module, {"params": params, "batch_stats": stats, **others}, xb)
        return [(c, m, s) for _, c, m, s in calls]

    # the call order of the batch-norm layers (their paths), from shapes alone
    paths: list[tuple[str, ...]] = []

    def order(stats, xb):
        _, calls = batch_norm_inputs(module, {"params": params, "batch_stats": stats, **others}, xb)
        paths.extend(p for p, *_ in calls)
        return 0

    jax.eval_shape(order, stats, x[:1])
    for layer, path in enumerate(paths):
        count = 0.0
        mean = m2 = None
        for start in range(0, x.shape[0], batch_size):
            c, mb, sb = (
                np.asarray(a, np.float64)
                for a in moments(stats, x[start : start + batch_size])[layer]
            )
            if mean is None:
                count, mean, m2 = float(c), mb, sb
                continue
            total = count + float(c)
            delta = mb - mean
            mean = mean + delta * (float(c) / total)
            m2 = m2 + sb + delta**2 * (count * float(c) / total)
            count = total
        dtype = jnp.asarray(_get(stats, path)["mean"]).dtype
        _set(
            stats,
            path,
            {"mean": jnp.asarray(mean, dtype), "var": jnp.asarray(m2 / count, dtype)},
        )

    @jax.jit
    def apply_fn(params, x):
        return module.apply({"params": params, "batch_stats": stats, **others}, x, train=False)

    return apply_fn, params, stats


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
    node = tree
    for name in path:
        node = node[name]
    return node
