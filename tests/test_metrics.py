"""Classifier metrics against closed forms: accuracy, cross-entropy and predictive entropy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.metrics import binary_entropy, binary_metrics


def test_binary_metrics_by_hand():
    f = np.array([2.0, -1.0, 0.5, -3.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    out = binary_metrics(jnp.asarray(f), jnp.asarray(y), prefix="train_")
    assert set(out) == {"train_acc", "train_nll"}
    assert float(out["train_acc"]) == pytest.approx(0.5)
    assert float(out["train_nll"]) == pytest.approx(np.mean(np.log1p(np.exp(f)) - y * f), rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        binary_metrics(jnp.zeros((3, 1)), jnp.zeros(3))


def test_binary_entropy_closed_form_and_limits():
    f = np.array([0.0, 1.0, -2.0])
    p = 1 / (1 + np.exp(-f))
    want = np.mean(-p * np.log(p) - (1 - p) * np.log(1 - p))
    assert float(binary_entropy(jnp.asarray(f))) == pytest.approx(want, rel=1e-6)
    assert float(binary_entropy(jnp.zeros(5))) == pytest.approx(np.log(2), rel=1e-6)
    big = binary_entropy(jnp.asarray([80.0, -80.0]))
    assert np.isfinite(float(big)) and float(big) < 1e-30
    assert jax.vmap(binary_entropy)(jnp.zeros((3, 4))).shape == (3,)
