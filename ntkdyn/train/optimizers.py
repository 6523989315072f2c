"""Optimizers with PyTorch's semantics, for protocols published as ``torch.optim`` settings.

The reference code of the paper's experiments (mpezeshki/Gradient_Starvation, kohpangwei/group_DRO)
builds ``torch.optim.SGD(params, lr, momentum, weight_decay)`` and ``torch.optim.Adam(...)``, whose
``weight_decay`` is *coupled*: it is added to the gradient before the optimizer sees it,
g ← ∇L + wd·θ, so Adam then rescales it with the gradient. ``torch.optim.AdamW`` decouples it:
θ ← θ − lr·(Adam's step + wd·θ) (Loshchilov & Hutter 2019). :func:`pytorch_optimizer` returns the
optax transformation of each, so an experiment states its recipe once, in PyTorch's words.
"""

from __future__ import annotations

import math

import optax

__all__ = ["PYTORCH_OPTIMIZERS", "pytorch_optimizer"]

#: The names :func:`pytorch_optimizer` accepts, as ``torch.optim`` classes, lower case.
PYTORCH_OPTIMIZERS = ("sgd", "adam", "adamw")


def pytorch_optimizer(
    name: str, lr: float, *, momentum: float = 0.0, weight_decay: float = 0.0
) -> optax.GradientTransformation:
    """The optax transformation of ``torch.optim.{SGD, Adam, AdamW}(params, lr, ...)``.

    * ``"sgd"``: g ← ∇L + wd·θ, b ← μ·b + g, θ ← θ − lr·b (``torch.optim.SGD(params, lr,
      momentum=μ, weight_decay=wd)``, dampening 0, no Nesterov).
    * ``"adam"``: g ← ∇L + wd·θ, then Adam (β = (0.9, 0.999), ε = 1e-8) on g
      (``torch.optim.Adam(params, lr, weight_decay=wd)``: coupled).
    * ``"adamw"``: θ ← θ − lr·(m̂/(√v̂ + ε) + wd·θ) (``torch.optim.AdamW(params, lr,
      weight_decay=wd)``: decoupled, :func:`optax.adamw`).

    Without weight decay the result is the plain :func:`optax.sgd` / :func:`optax.adam` (no extra
    chain link, so its state matches checkpoints of that optimizer); SGD without momentum keeps no
    momentum buffer. ``momentum`` is SGD's only; the Adam variants ignore it.

    Args:
        name: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: learning rate, > 0.
        momentum: SGD momentum μ in [0, 1).
        weight_decay: wd ≥ 0.

    Returns:
        An :class:`optax.GradientTransformation`.

    Raises:
        ValueError: naming ``name``, ``lr``, ``momentum`` or ``weight_decay`` when out of range.
    """
    if name not in PYTORCH_OPTIMIZERS:
        raise ValueError(f"name: expected one of {', '.join(PYTORCH_OPTIMIZERS)}, got {name!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr: expected a finite learning rate > 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay: expected a finite value >= 0, got {weight_decay!r}")
    if name == "adamw" and weight_decay:
        return optax.adamw(lr, weight_decay=weight_decay)
    if name == "sgd":
        base = optax.sgd(lr, momentum=momentum or None)
    else:
        base = optax.adam(lr)
    if name == "adamw" or not weight_decay:
        return base
    return optax.chain(optax.add_decayed_weights(weight_decay), base)
