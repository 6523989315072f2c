"""Argument checks shared by several modules (private: the public API re-validates through these).

Each check names the argument, the value received and what to pass instead (house rule 7). Checks
on values run only when the values are concrete: under ``jit``/``vmap`` the arrays are tracers and
the checks move to the caller that built the batch, or to the run's result codes.

* :func:`is_concrete`: no tracer among the leaves;
* :func:`check_x`: a batch of inputs (n, ...) with n ≥ 1 and finite values;
* :func:`check_output_axis`, :func:`check_outputs`: the output of a pure ``apply_fn(params, x)``
  (one scalar, or K classes with an output axis, per example);
* :func:`validate_system`, :func:`validate_state`: a :class:`ntkdyn.FeatureSystem` and an initial
  state of a vector field on it.

The checks of inputs and of a model (``check_x``, ``check_output_axis``, ``check_outputs``) guard
what a user can hand over from the command line too (a data file, a ``module:factory`` network), so
they raise :class:`ntkdyn.errors.InputError` (a ``ValueError``): the command line reports it as the
user's to fix. The checks of theory objects raise a plain ``ValueError``: the commands build those
objects themselves after validating their flags, so a failure there is a fault of ntkdyn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from ntkdyn.errors import InputError
from ntkdyn.systems import FeatureSystem, feature_system

__all__ = [
    "is_concrete",
    "check_x",
    "check_output_axis",
    "check_outputs",
    "validate_system",
    "validate_state",
]


def is_concrete(*xs: Any) -> bool:
    """Whether no leaf of ``xs`` is a tracer (so its values can be inspected in Python).

    Args:
        *xs: PyTrees.

    Returns:
        ``True`` outside ``jit``/``vmap`` tracing.
    """
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))


def check_x(x: ArrayLike, name: str) -> Array:
    """A batch of inputs shaped (n, ...) with n ≥ 1 and, for floating inputs, finite values.

    Args:
        x: the inputs.
        name: the argument name used in errors.

    Returns:
        ``x`` as a JAX array.

    Raises:
        InputError: naming ``name`` for a scalar, an empty batch or non-finite values.
    """
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise InputError(
            f"{name}: expected a batch of inputs shaped (n, ...) with n >= 1, got shape {x.shape}"
        )
    if jnp.issubdtype(x.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(x))):
        raise InputError(f"{name}: contains non-finite values (NaN or inf); clean the inputs first")
    return x


def check_output_axis(output_axis: int | None) -> int | None:
    """The class axis of an (n, K) output: 1, −1 or ``None`` (a scalar model).

    Raises:
        InputError: naming ``output_axis`` for any other value.
    """
    if output_axis is not None and output_axis not in (1, -1):
        raise InputError(
            f"output_axis: the class axis of an (n, K) output must be 1 or -1, got {output_axis}"
        )
    return output_axis


def check_outputs(
    apply_fn: Callable[[Any, Array], Array],
    params: Any,
    x: Array,
    output_axis: int | None,
    name: str = "x",
) -> int | None:
    """Shape-check ``apply_fn(params, x)`` without running it (``jax.eval_shape``).

    Args:
        apply_fn: pure ``apply_fn(params, x)``.
        params: its params PyTree.
        x: (n, ...) inputs.
        output_axis: ``None`` for a scalar model ((n,) or (n, 1) outputs), else the class axis.
        name: the name of ``x`` used in errors.

    Returns:
        K, the number of outputs per example, or ``None`` for a scalar model.

    Raises:
        InputError: naming ``params`` when ``apply_fn`` fails on them, ``apply_fn`` when its output
            is not one row per example or not scalar without ``output_axis``.
    """
    try:
        out = jax.eval_shape(apply_fn, params, x)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise InputError(
            f"params: apply_fn(params, {name}) failed for {name} of shape {x.shape} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); pass the "
            "params that belong to apply_fn and inputs of the shape it expects"
        ) from exc
    shape = tuple(out.shape)
    if not shape or shape[0] != x.shape[0]:
        raise InputError(
            f"apply_fn: must return one output row per example of {name} "
            f"(shape ({x.shape[0]}, ...)), got {shape}"
        )
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        if output_axis is not None:
            return shape[1] if len(shape) == 2 else None
        return None
    if len(shape) == 2 and output_axis is not None:
        return shape[1]
    raise InputError(
        f"apply_fn: output has shape {shape}, not a scalar per example ((n,) or (n, 1)); pass "
        "output_axis=-1 for per-class (n, K) outputs"
    )


def validate_system(system: FeatureSystem) -> None:
    """Check that ``system`` is a valid :class:`ntkdyn.FeatureSystem` (concrete, unbatched only).

    Raises:
        ValueError: naming ``system`` (wrong type) or the field of it that is invalid.
    """
    if not isinstance(system, FeatureSystem):
        raise ValueError(
            f"system: expected a FeatureSystem, got {type(system).__name__}; build one with "
            "ntkdyn.feature_system / rotation_system / system_from_matrix"
        )
    if not is_concrete(system) or jnp.ndim(system.U) != 2:
        return  # batched or traced: validated by the caller that built the batch
    feature_system(system.U, system.s, system.lam)


def validate_state(
    field: Callable[[Array, FeatureSystem], Array], system: FeatureSystem, z0: ArrayLike
) -> Array:
    """An initial state ``z0`` that ``field`` maps to the same shape, finite when concrete.

    Args:
        field: the vector field ``field(z, system)``.
        system: the feature system.
        z0: the initial state ((d,) for primal fields, (n,) for the dual field).

    Returns:
        ``z0`` as a floating JAX array.

    Raises:
        ValueError: naming ``z0`` for a wrong rank or length, or non-finite values.
    """
    z0 = jnp.asarray(z0)
    if not jnp.issubdtype(z0.dtype, jnp.floating):
        z0 = z0.astype(jnp.result_type(float))
    if z0.ndim != 1:
        raise ValueError(f"z0: expected a 1-D initial state, got shape {z0.shape}")
    try:
        out_shape = jax.eval_shape(field, z0, system).shape
    except TypeError:  # the field's matrix products reject the state's length
        out_shape = None
    if out_shape != z0.shape:
        raise ValueError(
            f"z0: the field does not map a state of shape {z0.shape} to the same shape (got "
            f"{out_shape}); pass z0 of shape (d,) = ({system.d},) for primal fields or "
            f"(n,) = ({system.n},) for dual_field"
        )
    # NumPy, not jnp: the check stays concrete under jit when z0 is a constant.
    if is_concrete(z0) and not np.all(np.isfinite(np.asarray(z0))):
        raise ValueError("z0: contains non-finite values (NaN or inf); pass a finite initial state")
    return z0
