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


def test_environment_probe_metrics_and_signed_projection():
    from ntkdyn.metrics import environment_metrics, probe_metrics, signed_projection

    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=3))

    def logits_of(x):
        return x @ w

    b = {k: jnp.asarray(rng.normal(size=(n, 3))) for k, n in (("x1", 4), ("x2", 5), ("xt", 6))}
    b.update(
        {f"y{k}": jnp.asarray((rng.random(n) < 0.5) * 1.0) for k, n in ((1, 4), (2, 5), ("t", 6))}
    )
    out = environment_metrics(logits_of, b)
    f = np.concatenate([b["x1"] @ w, b["x2"] @ w])
    y = np.concatenate([b["y1"], b["y2"]])
    assert float(out["train_acc"]) == pytest.approx(np.mean((f > 0) == y))
    assert set(out) == {"train_acc", "train_nll", "test_acc", "test_nll"}
    assert "val_acc" in environment_metrics(logits_of, {**b, "xv": b["xt"], "yv": b["yt"]})
    p = probe_metrics(logits_of, {"a": b["xt"], "b": -b["xt"]}, b["yt"])
    acc_a, acc_b = float(p["a"]["acc"]), float(p["b"]["acc"])
    assert acc_a == pytest.approx(1.0 - acc_b) and float(p["a"]["entropy"]) <= np.log(2)
    U = jnp.asarray(rng.normal(size=(9, 2)))
    np.testing.assert_allclose(
        signed_projection(logits_of, b, U), np.asarray(U).T @ ((2 * y - 1) * f), rtol=1e-6
    )
