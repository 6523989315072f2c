"""Losses and penalties, one definition shared by the theory and by every training loop.

All functions take logits ``f`` shaped (n,) and labels ``y`` shaped (n,) — never (n, 1): a
(n,) against (n, 1) broadcast silently builds an n × n matrix, the classic logistic-loss bug, so
shapes are checked. Labels are ±1 (``signed``) or {0, 1} (``binary``) as documented per function.

References: Pezeshki et al. 2021 (Gradient Starvation / Spectral Decoupling); Arjovsky et al. 2019
(IRMv1); Krueger et al. 2021 (V-REx); Sagawa et al. 2020 (Group DRO).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

__all__ = [
    "logistic_loss",
    "binary_cross_entropy",
    "binary_accuracy",
    "sd_penalty",
    "class_conditional_sd_penalty",
    "irm_penalty",
    "vrex_penalty",
    "GroupDROState",
    "group_dro_init",
    "group_dro_update",
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


def class_conditional_sd_penalty(
    logits: Float[Array, " n"],
    y01: Float[Array, " n"],
    *,
    lam: tuple[float, float] = (0.1, 0.1),
    gamma: tuple[float, float] = (0.44, 2.5),
) -> Array:
    """Class-conditional SD (the paper's CelebA variant): Σ_c λ_c · mean_{y=c}(ŷ − γ_c)².

    Defaults are the paper's CelebA values: 0.1·mean_{y=1}(ŷ − 2.5)² + 0.1·mean_{y=0}(ŷ − 0.44)².
    A class absent from the batch contributes 0.

    Args:
        logits: (n,) outputs.
        y01: (n,) labels in {0, 1}.
        lam: (λ₀, λ₁), per-class coefficients.
        gamma: (γ₀, γ₁), per-class logit targets.
    """
    _check_pair(logits, y01, name_y="y01")
    total = jnp.zeros((), logits.dtype)
    for c in (0, 1):
        mask = (y01 == c).astype(logits.dtype)
        count = jnp.sum(mask)
        mean_sq = jnp.sum(mask * (logits - gamma[c]) ** 2) / jnp.maximum(count, 1.0)
        total = total + lam[c] * mean_sq
    return total


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


class GroupDROState(NamedTuple):
    """Online group weights q (sum to 1) of Group DRO."""

    q: Float[Array, " g"]


def group_dro_init(num_groups: int, dtype=jnp.float32) -> GroupDROState:
    """Uniform initial Group DRO weights q_g = 1/g.

    Args:
        num_groups: number of groups g ≥ 1.
        dtype: floating dtype of q.

    Returns:
        The initial :class:`GroupDROState`.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups: must be >= 1, got {num_groups}")
    return GroupDROState(jnp.full((num_groups,), 1.0 / num_groups, dtype))


def group_dro_update(
    state: GroupDROState,
    per_example_loss: Float[Array, " n"],
    groups: Array,
    *,
    step_size: float = 0.01,
    adjustment: Float[ArrayLike, " g"] | None = None,
    group_counts: Float[ArrayLike, " g"] | None = None,
) -> tuple[Array, GroupDROState]:
    """One online Group DRO step (Sagawa et al. 2020, Algorithm 1, with generalisation adjustment).

    Per-group mean losses L_g (adjusted: L_g + C/√n_g), weights q_g ← q_g · exp(η L_g), renormalised;
    the robust loss is Σ_g q_g L_g with the *unadjusted* group losses and q held constant.
    Groups absent from the batch keep their weight and contribute 0.

    Args:
        state: current weights.
        per_example_loss: (n,) losses.
        groups: (n,) integer group ids in [0, g).
        step_size: η_q.
        adjustment: C (scalar or per group) of the generalisation adjustment; needs ``group_counts``.
        group_counts: training-set size n_g of each group.

    Returns:
        (robust loss, new state).
    """
    g = state.q.shape[0]
    onehot = jax.nn.one_hot(groups, g, dtype=per_example_loss.dtype)
    counts = onehot.sum(0)
    group_loss = (onehot * per_example_loss[:, None]).sum(0) / jnp.maximum(counts, 1.0)
    adjusted = group_loss
    if adjustment is not None:
        if group_counts is None:
            raise ValueError(
                "group_counts: required when adjustment is given (the C/sqrt(n_g) term)"
            )
        adjusted = group_loss + jnp.asarray(adjustment) / jnp.sqrt(
            jnp.asarray(group_counts, group_loss.dtype)
        )
    present = counts > 0
    q = state.q * jnp.where(present, jnp.exp(step_size * jax.lax.stop_gradient(adjusted)), 1.0)
    q = q / q.sum()
    q = jax.lax.stop_gradient(q)
    return jnp.sum(q * group_loss), GroupDROState(q)
