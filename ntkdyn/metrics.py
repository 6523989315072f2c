"""Metrics of a binary classifier's logits: accuracy, logistic loss and predictive entropy.

Pure functions of (n,) logits f and (n,) labels in {0, 1}, so they jit and vmap over seeds:

* :func:`binary_accuracy` — mean 1[(f > 0) = y] (from :mod:`ntkdyn.losses`);
* :func:`binary_metrics` — accuracy and mean binary cross-entropy mean(softplus(f) − y·f), the
  pair every experiment records over training;
* :func:`binary_entropy` — mean entropy H(σ(f)) of the predicted Bernoulli distribution, the
  confidence measure of the Colored MNIST probe (Pezeshki et al. 2021, Fig. 4);
* :func:`environment_metrics` and :func:`probe_metrics` — the same on the pooled training
  environments, the test environment and the four probe inputs of a multi-environment task;
* :func:`signed_projection` — U_kᵀ Y f, the k-vector whose change over training is the measured
  feature responses z(t) (Sec. 2), recorded inside a compiled loop instead of the n outputs.

Functions of a network take ``logits_of``: inputs (n, d) → logits (n,).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ntkdyn.losses import binary_accuracy, binary_cross_entropy

__all__ = [
    "binary_accuracy",
    "binary_entropy",
    "binary_metrics",
    "environment_metrics",
    "probe_metrics",
    "signed_projection",
]

LogitsFn = Callable[[Array], Array]


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


def environment_metrics(logits_of: LogitsFn, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Accuracy and cross-entropy on the pooled training environments, the test one and validation.

    The batch layout of :func:`ntkdyn.data.colored_mnist.environment_batches` for one seed:
    training environments ``x1``/``y1`` and ``x2``/``y2`` (pooled: the training set), the test
    environment ``xt``/``yt`` and, when present, held-out ``xv``/``yv``.

    Args:
        logits_of: inputs → (n,) logits.
        batch: arrays of one seed, labels in {0, 1}.

    Returns:
        ``train_acc``, ``train_nll``, ``test_acc``, ``test_nll`` (and ``val_acc`` with ``xv``).
    """
    f = jnp.concatenate([logits_of(batch["x1"]), logits_of(batch["x2"])])
    y = jnp.concatenate([batch["y1"], batch["y2"]])
    out = {
        **binary_metrics(f, y, prefix="train_"),
        **binary_metrics(logits_of(batch["xt"]), batch["yt"], prefix="test_"),
    }
    if "xv" in batch:
        out["val_acc"] = binary_accuracy(logits_of(batch["xv"]), batch["yv"])
    return out


def probe_metrics(
    logits_of: LogitsFn, probe: Mapping[str, Array], y01: Float[Array, " n"]
) -> dict[str, dict[str, Array]]:
    """Accuracy and mean binary entropy on each probe input (Pezeshki et al. 2021, Fig. 4).

    Args:
        logits_of: inputs → (n,) logits.
        probe: probe name → (n, d) inputs, all with the labels ``y01``
            (:func:`ntkdyn.data.colored_mnist.probe_batches` for one seed).
        y01: (n,) labels in {0, 1}.

    Returns:
        probe name → ``{"acc", "entropy"}`` (:func:`binary_accuracy`, :func:`binary_entropy`).
    """
    out = {}
    for name, x in probe.items():
        f = logits_of(x)
        out[name] = {"acc": binary_accuracy(f, y01), "entropy": binary_entropy(f)}
    return out


def signed_projection(
    logits_of: LogitsFn, batch: Mapping[str, Array], U: Float[Array, "n k"]
) -> Float[Array, " k"]:
    """U_kᵀ Y f(X) on the pooled training environments, Y = diag(2y − 1) (Sec. 2).

    The measured feature responses are z(t) = U_kᵀ Y (f(X; θ_t) − f(X; θ₀)), the difference of
    two such projections; a training loop records this k-vector rather than the n outputs.

    Args:
        logits_of: inputs → (n,) logits.
        batch: ``x1``, ``y1``, ``x2``, ``y2`` of one seed (labels in {0, 1}), n examples in all.
        U: (n, k) directions, rows in the order of ``x1`` then ``x2``.

    Returns:
        (k,) projections.
    """
    f = jnp.concatenate([logits_of(batch["x1"]), logits_of(batch["x2"])])
    y = 2.0 * jnp.concatenate([batch["y1"], batch["y2"]]) - 1.0
    return U.T @ (y.astype(f.dtype) * f)
