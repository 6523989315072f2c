"""Optional cross-check against neural-tangents' infinite-width kernels (never imported by the core).

neural-tangents 0.6.5 (the last release) does not import on current JAX: it imports names that
moved (``jax.core.Jaxpr``/``Var``/``Literal``/``JaxprEqn``/``Primitive``, ``jax.util``) or were
removed (``jax.interpreters.ad.zeros_like_p``), and its ``experimental`` package requires
TensorFlow. :func:`import_neural_tangents` restores those names from their current homes (the
attributes are only added where missing) and, when TensorFlow is absent, replaces
``neural_tangents.experimental`` (the TF-only empirical kernels) by a stub that raises on use. The
analytic ``stax`` kernels then work unchanged.

Install without its TensorFlow dependency::

    pip install --no-deps neural-tangents==0.6.5 frozendict

:func:`nt_relu_ntk` is neural-tangents' analytic NTK of the ReLU MLP of :mod:`ntkdyn.analytic`
(same NTK parametrisation), so the two implementations can be compared, and both against the
empirical NTK of wide networks (Pezeshki et al. 2021, Sec. 2).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = ["import_neural_tangents", "nt_relu_ntk"]


class _TensorFlowOnly(types.ModuleType):
    """Stand-in for ``neural_tangents.experimental``: every attribute raises ImportError."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"neural_tangents.experimental.{name} needs TensorFlow, which ntkdyn does not install; "
            "install tensorflow and tf2jax to use the TF kernels"
        )


def _patch_jax() -> None:
    import jax._src.core as src_core
    import jax._src.util as src_util
    import jax.core
    import jax.extend.core as ext_core
    from jax.interpreters import ad

    for name in ("Jaxpr", "Var", "Literal", "JaxprEqn", "Primitive"):
        if not hasattr(jax.core, name):
            setattr(jax.core, name, getattr(ext_core, name))
    for name in ("ShapedArray", "AbstractValue", "eval_context"):
        if not hasattr(jax.core, name):
            setattr(jax.core, name, getattr(src_core, name))
    if importlib.util.find_spec("jax.util") is None and "jax.util" not in sys.modules:
        util = types.ModuleType("jax.util")
        util.safe_map, util.safe_zip = src_util.safe_map, src_util.safe_zip
        sys.modules["jax.util"] = util
        jax.util = util
    if not hasattr(ad, "zeros_like_p"):
        # Only used as a dictionary key of neural-tangents' structured-derivative rules; no JAX
        # program emits it any more.
        ad.zeros_like_p = ext_core.Primitive("zeros_like")


def import_neural_tangents():
    """Import neural-tangents 0.6.5 on the installed JAX, applying the compatibility patches.

    Returns:
        The ``neural_tangents`` module.

    Raises:
        ImportError: if neural-tangents (or its ``frozendict`` dependency) is not installed, with
            the command that installs it without TensorFlow.
    """
    if "neural_tangents" in sys.modules:
        return sys.modules["neural_tangents"]
    if (
        importlib.util.find_spec("neural_tangents") is None
        or importlib.util.find_spec("frozendict") is None
    ):
        raise ImportError(
            "neural-tangents is not installed; install it without TensorFlow: "
            "pip install --no-deps neural-tangents==0.6.5 frozendict"
        )
    _patch_jax()
    if importlib.util.find_spec("tensorflow") is None:
        sys.modules.setdefault(
            "neural_tangents.experimental", _TensorFlowOnly("neural_tangents.experimental")
        )
    return importlib.import_module("neural_tangents")


def nt_relu_ntk(
    x1: Float[ArrayLike, "n1 d"],
    x2: Float[ArrayLike, "n2 d"] | None = None,
    *,
    depth: int,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
) -> Float[Array, "n1 n2"]:
    """neural-tangents' infinite-width NTK of a ReLU MLP with ``depth`` hidden layers.

    ``stax.serial([Dense(·, W_std=σ_w, b_std=σ_b), Relu()] × depth, Dense(1, ...))`` in the NTK
    parametrisation, i.e. the network of :func:`ntkdyn.analytic.init_ntk_mlp`; compare with
    :func:`ntkdyn.analytic.relu_ntk`.

    Args:
        x1: (n1, d) inputs.
        x2: (n2, d) inputs or ``None`` (x2 = x1).
        depth: hidden layers L ≥ 0.
        sigma_w: weight scale σ_w > 0.
        sigma_b: bias scale σ_b ≥ 0 (0: no biases).

    Returns:
        Θ (n1, n2).

    Raises:
        ImportError: if neural-tangents is not installed.
        ValueError: naming ``depth``, ``sigma_w`` or ``sigma_b``, or ``x1``/``x2`` when not 2-D.
    """
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth: number of hidden layers must be an integer >= 0, got {depth}")
    if not sigma_w > 0 or not sigma_b >= 0:
        raise ValueError(
            f"sigma_w, sigma_b: need sigma_w > 0 and sigma_b >= 0, got {sigma_w}, {sigma_b}"
        )
    a = jnp.asarray(x1)
    b = None if x2 is None else jnp.asarray(x2)
    for name, arr in (("x1", a), ("x2", b)):
        if arr is not None and arr.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D (n, d) array, got shape {arr.shape}")
    stax = import_neural_tangents().stax
    b_std = sigma_b if sigma_b > 0 else None
    layers = []
    for _ in range(int(depth)):
        layers += [stax.Dense(1, W_std=sigma_w, b_std=b_std), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=sigma_w, b_std=b_std))
    return jnp.asarray(jax.block_until_ready(kernel_fn(a, b, "ntk")))
