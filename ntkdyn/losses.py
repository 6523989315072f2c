"""Losses and penalties, one definition shared by the theory and by every training loop.

All functions take logits ``f`` shaped (n,) and labels ``y`` shaped (n,) — never (n, 1): a
(n,) against (n, 1) broadcast silently builds an n × n matrix, the classic logistic-loss bug, so
shapes are checked. Labels are ±1 (``signed``) or {0, 1} (``binary``) as documented per function.

References: Pezeshki et al. 2021 (Gradient Starvation / Spectral Decoupling); Arjovsky et al. 2019
(IRMv1); Krueger et al. 2021 (V-REx). The training objectives built from them (SD with its
schedules, class-conditional SD, IRMv1, V-REx, Group DRO) are in :mod:`ntkdyn.objectives`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "logistic_loss",
    "binary_cross_entropy",
    "binary_accuracy",
    "sd_penalty",
    "irm_penalty",
    "vrex_penalty",
    "to_signed",
]


def _check_pair(f: Array, y: Array, name_f: str = "logits", name_y: str = "y") -> None:
    if f.ndim != 1 or y.shape != f.shape:
        raise ValueError(
            f"{name_f}, {name_y}: expected two 1-D arrays of the same length, got shapes {f.shape} and {y.shape}; "
            "squeeze a trailing output axis of size 1 first"
        )


def to_signed(y01: ArrayLike) -> Array:
    """Map {0, 1} labels to {−1, +1}: y± = 2y − 1.

    Args:
        y01: labels in {0, 1} (any shape).

    Returns:
        Float labels in {−1, +1}, same shape.
    """
    y01 = jnp.asarray(y01)
    return 2.0 * y01.astype(jnp.result_type(float)) - 1.0


def logistic_loss(
    logits: Float[Array, " n"], y: Float[Array, " n"], *, reduction: str = "mean"
) -> Array:
    """Logistic loss on signed labels: ℓ = log(1 + exp(−y f)) = softplus(−y f).

    Args:
        logits: (n,) model outputs f.
        y: (n,) labels in {−1, +1}.
        reduction: "mean", "sum" or "none".
    """
    _check_pair(logits, y)
    per = jax.nn.softplus(-y * logits)
    if reduction == "mean":
        return jnp.mean(per)
    if reduction == "sum":
        return jnp.sum(per)
    if reduction == "none":
        return per
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def binary_cross_entropy(logits: Float[Array, " n"], y01: Float[Array, " n"]) -> Array:
    """Mean binary cross-entropy with logits on {0, 1} labels: mean(softplus(f) − y f).

    Equals :func:`logistic_loss` on the signed labels 2y − 1.

    Args:
        logits: (n,) model outputs f.
        y01: (n,) labels in {0, 1}.

    Returns:
        The scalar mean loss.
    """
    _check_pair(logits, y01, name_y="y01")
    return jnp.mean(jax.nn.softplus(logits) - y01 * logits)


def binary_accuracy(logits: Float[Array, " n"], y01: Float[Array, " n"]) -> Array:
    """Fraction of examples whose prediction 1[f > 0] equals the {0, 1} label (a float32 scalar).

    Args:
        logits: (n,) model outputs f.
        y01: (n,) labels in {0, 1}.

    Returns:
        The scalar accuracy in [0, 1].
    """
    _check_pair(logits, y01, name_y="y01")
    return jnp.mean(
        ((logits > 0).astype(jnp.float32) == jnp.asarray(y01, jnp.float32)).astype(jnp.float32)
    )


def sd_penalty(logits: Float[Array, " n"]) -> Array:
    """Spectral Decoupling penalty mean(ŷ²) (Pezeshki et al. 2021, Sec. 4).

    The training loss is ℓ + c·mean(ŷ²); with the sum-form loss of the theory this is (λ/2)‖ŷ‖².

    Args:
        logits: (n,) model outputs ŷ.

    Returns:
        The scalar mean of ŷ².
    """
    if logits.ndim != 1:
        raise ValueError(f"logits: expected shape (n,), got {logits.shape}")
    return jnp.mean(logits**2)


def irm_penalty(logits: Float[Array, " n"], y01: Float[Array, " n"]) -> Array:
    """IRMv1 penalty of one environment: ‖∇_w R(w · f)|_{w=1}‖² with R the mean BCE.

    Computed as in Arjovsky et al.'s reference code: the squared gradient of the risk with respect
    to a dummy scale w = 1 on the logits.
    """
    _check_pair(logits, y01, name_y="y01")
    grad = jax.grad(lambda w: binary_cross_entropy(logits * w, y01))(jnp.ones((), logits.dtype))
    return grad**2


def vrex_penalty(risks: Float[Array, " e"]) -> Array:
    """V-REx penalty: the variance of the per-environment risks (Krueger et al. 2021).

    For two environments this is (R₁ − R₂)²/4; the V-REx loss of the Colored MNIST protocol uses β·(R₁ − R₂)², i.e.
    ``4 * vrex_penalty`` — callers pass the coefficient explicitly.
    """
    risks = jnp.asarray(risks)
    if risks.ndim != 1 or risks.shape[0] < 2:
        raise ValueError(
            f"risks: expected a 1-D array of >= 2 environment risks, got shape {risks.shape}"
        )
    return jnp.var(risks)
