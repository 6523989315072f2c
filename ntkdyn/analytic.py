"""The infinite-width NTK of a deep ReLU network (arc-cosine kernels) and its finite-width model.

A fully connected ReLU network in the NTK parametrisation (Jacot et al. 2018),

    h¹ = (σ_w/√d₀) W¹ x + σ_b b¹,   h^{l+1} = (σ_w/√n_l) W^{l+1} relu(h^l) + σ_b b^{l+1},
    f(x) = h^{L+1},   all W, b ~ N(0, 1),

has, as every width n_l → ∞, the deterministic NTK Θ = Θ^{L+1} given by the recursion

    Σ¹(x, x') = σ_w² x·x'/d₀ + σ_b²,                Θ¹ = Σ¹,
    Σ^{l+1} = σ_w² κ₁(Σ^l) + σ_b²,   Σ̇^{l+1} = σ_w² κ₀(Σ^l),   Θ^{l+1} = Θ^l Σ̇^{l+1} + Σ^{l+1},

with the arc-cosine kernels (Cho and Saul 2009) of the angle φ = arccos(Σ(x,x')/√(Σ(x,x)Σ(x',x')))

    κ₁ = √(Σ(x,x)Σ(x',x')) (sin φ + (π − φ) cos φ) / (2π),   κ₀ = (π − φ) / (2π).

The empirical NTK of :func:`init_ntk_mlp` converges to it at rate O(1/√width) (a test). In the
standard parametrisation (:class:`ntkdyn.MLP`) the NTK is not width-independent: its hidden-layer
terms grow with the width, so compare the two only in the NTK parametrisation used here.
Used to check the empirical NTK of wide MLPs (Pezeshki et al. 2021, Sec. 2 and App. A, which
analyse networks in this kernel regime).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = ["relu_ntk", "init_ntk_mlp"]


def _check_inputs(x: ArrayLike, name: str) -> Array:
    x = jnp.asarray(x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"{name}: expected inputs shaped (n, ...) with n >= 1, got shape {x.shape}"
        )
    x = x.reshape(x.shape[0], -1)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{name}: contains non-finite values (NaN or inf)")
    return x


def _arccos_step(cov, var1, var2):
    norm = jnp.sqrt(var1[:, None] * var2[None, :])
    cos = jnp.clip(cov / jnp.where(norm > 0, norm, 1.0), -1.0, 1.0)
    phi = jnp.arccos(cos)
    k1 = norm * (jnp.sin(phi) + (jnp.pi - phi) * cos) / (2 * jnp.pi)
    k0 = (jnp.pi - phi) / (2 * jnp.pi)
    return k1, k0


def relu_ntk(
    x1: Float[ArrayLike, "n1 ..."],
    x2: Float[ArrayLike, "n2 ..."] | None = None,
    *,
    depth: int,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    return_nngp: bool = False,
) -> Float[Array, "n1 n2"] | tuple[Float[Array, "n1 n2"], Float[Array, "n1 n2"]]:
    """Infinite-width NTK Θ(x1, x2) of a ReLU MLP with ``depth`` hidden layers (NTK parametrisation).

    Implements the recursion of the module docstring; follows the input dtype.

    Args:
        x1: (n1, ...) inputs (trailing dims flattened to d₀ features).
        x2: (n2, ...) inputs, or ``None`` for x2 = x1.
        depth: number of hidden ReLU layers L ≥ 0 (0: a linear model).
        sigma_w: weight scale σ_w > 0.
        sigma_b: bias scale σ_b ≥ 0 (0: no biases).
        return_nngp: also return the output NNGP kernel Σ^{L+1}.

    Returns:
        Θ (n1, n2); with ``return_nngp`` the pair (Θ, Σ).

    Raises:
        ValueError: naming ``x1``/``x2`` (rank, non-finite, feature mismatch), ``depth``,
            ``sigma_w`` or ``sigma_b``.
    """
    if int(depth) != depth or depth < 0:
        raise ValueError(f"depth: number of hidden layers must be an integer >= 0, got {depth}")
    if not sigma_w > 0:
        raise ValueError(f"sigma_w: must be > 0, got {sigma_w}")
    if not sigma_b >= 0:
        raise ValueError(f"sigma_b: must be >= 0, got {sigma_b}")
    a = _check_inputs(x1, "x1")
    b = a if x2 is None else _check_inputs(x2, "x2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x2: has {b.shape[1]} features per example but x1 has {a.shape[1]}")
    a, b = jnp.asarray(a, jnp.result_type(a, b)), jnp.asarray(b, jnp.result_type(a, b))
    sw2, sb2 = sigma_w**2, sigma_b**2
    d0 = a.shape[1]
    cov = sw2 * (a @ b.T) / d0 + sb2
    var1 = sw2 * jnp.sum(a * a, axis=1) / d0 + sb2
    var2 = sw2 * jnp.sum(b * b, axis=1) / d0 + sb2
    ntk = cov
    for _ in range(int(depth)):
        k1, k0 = _arccos_step(cov, var1, var2)
        # κ₁ on the diagonal is Σ(x, x)/2
        var1, var2 = sw2 * var1 / 2 + sb2, sw2 * var2 / 2 + sb2
        cov = sw2 * k1 + sb2
        ntk = ntk * (sw2 * k0) + cov
    return (ntk, cov) if return_nngp else ntk


def init_ntk_mlp(
    key: PRNGKeyArray,
    in_features: int,
    hidden: Sequence[int],
    *,
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    dtype: Any = None,
) -> tuple[Callable, dict]:
    """A scalar-output ReLU MLP in the NTK parametrisation (module docstring), as ``(apply_fn, params)``.

    ``params`` is a plain dict ``{'W': [W¹, …, W^{L+1}], 'b': [...]}`` of N(0, 1) arrays (no ``'b'``
    when σ_b = 0); its empirical NTK tends to :func:`relu_ntk` with the same σ's as the widths grow.

    Args:
        key: PRNG key for the weights.
        in_features: d₀.
        hidden: hidden widths n₁, …, n_L.
        sigma_w: weight scale σ_w > 0.
        sigma_b: bias scale σ_b ≥ 0.
        dtype: parameter dtype (default: the default float dtype).

    Returns:
        ``(apply_fn, params)`` with ``apply_fn(params, x)`` → (n, 1).

    Raises:
        ValueError: naming ``in_features``, ``hidden``, ``sigma_w`` or ``sigma_b`` when out of range.
    """
    dims = [int(in_features), *[int(h) for h in hidden], 1]
    if dims[0] < 1 or any(h < 1 for h in dims[1:-1]):
        raise ValueError(
            f"in_features, hidden: all widths must be >= 1, got in_features={in_features}, hidden={list(hidden)}"
        )
    if not sigma_w > 0 or not sigma_b >= 0:
        raise ValueError(
            f"sigma_w, sigma_b: need sigma_w > 0 and sigma_b >= 0, got {sigma_w}, {sigma_b}"
        )
    dtype = jnp.result_type(float) if dtype is None else dtype
    keys = jax.random.split(key, 2 * (len(dims) - 1))
    params = {
        "W": [
            jax.random.normal(keys[2 * i], (a, b), dtype)
            for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True))
        ]
    }
    if sigma_b > 0:
        params["b"] = [
            jax.random.normal(keys[2 * i + 1], (b,), dtype) for i, b in enumerate(dims[1:])
        ]

    def apply_fn(p, x):
        h = jnp.asarray(x).reshape(x.shape[0], -1)
        num = len(p["W"])
        for i, W in enumerate(p["W"]):
            h = (sigma_w / jnp.sqrt(W.shape[0])) * (h @ W)
            if "b" in p:
                h = h + sigma_b * p["b"][i]
            if i < num - 1:
                h = jax.nn.relu(h)
        return h

    return apply_fn, params
