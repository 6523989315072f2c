"""Metrics of a binary classifier's logits: accuracy, logistic loss and predictive entropy.

Pure functions of (n,) logits f and (n,) labels in {0, 1}, so they jit and vmap over seeds:

* :func:`binary_accuracy` — mean 1[(f > 0) = y] (from :mod:`ntkdyn.losses`);
* :func:`binary_metrics` — accuracy and mean binary cross-entropy mean(softplus(f) − y·f), the
  pair every experiment records over training;
* :func:`binary_entropy` — mean entropy H(σ(f)) of the predicted Bernoulli distribution, the
  confidence measure of the Colored MNIST probe (Pezeshki et al. 2021, Fig. 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ntkdyn.losses import binary_accuracy, binary_cross_entropy

__all__ = ["binary_accuracy", "binary_entropy", "binary_metrics"]


def binary_entropy(logits: Float[Array, " n"]) -> Array:
    """Mean binary entropy (nats) of the predictions σ(f): mean_i H(σ(f_i)).

    H(p) = −p log p − (1 − p) log(1 − p), computed as p·softplus(−f) + (1 − p)·softplus(f) with
    p = σ(f), which stays finite for large |f|. log 2 for a coin flip, 0 for a certain prediction.

    Args:
        logits: (n,) logits (any shape works; the mean is over all entries).

    Returns:
        The scalar mean entropy.
    """
    p = jax.nn.sigmoid(logits)
    return jnp.mean(p * jax.nn.softplus(-logits) + (1.0 - p) * jax.nn.softplus(logits))


def binary_metrics(
    logits: Float[Array, " n"], y01: Float[Array, " n"], *, prefix: str = ""
) -> dict[str, Array]:
    """Accuracy and mean binary cross-entropy of logits against {0, 1} labels.

    acc = mean_i 1[(f_i > 0) = y_i]; nll = mean_i softplus(f_i) − y_i·f_i.

    Args:
        logits: (n,) logits.
        y01: (n,) labels in {0, 1}.
        prefix: put in front of the keys (``"train_"`` gives ``train_acc``, ``train_nll``).

    Returns:
        ``{prefix + "acc", prefix + "nll"}`` scalars.

    Raises:
        ValueError: if ``logits`` and ``y01`` are not 1-D arrays of one length.
    """
    return {
        f"{prefix}acc": binary_accuracy(logits, y01),
        f"{prefix}nll": binary_cross_entropy(logits, y01),
    }
