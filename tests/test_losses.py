import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn import losses


def test_logistic_loss_matches_hand_computation():
    f = jnp.array([0.5, -1.0, 2.0])
    y = jnp.array([1.0, 1.0, -1.0])
    expected = np.mean(np.log1p(np.exp(-np.array([0.5, -1.0, -2.0]))))
    np.testing.assert_allclose(losses.logistic_loss(f, y), expected, rtol=1e-12)
    np.testing.assert_allclose(
        losses.logistic_loss(f, y, reduction="sum"), 3 * expected, rtol=1e-12
    )


def test_bce_on_01_labels_equals_logistic_on_signed_labels():
    f = jnp.linspace(-3, 3, 7)
    y01 = jnp.array([0, 1, 1, 0, 1, 0, 1.0])
    np.testing.assert_allclose(
        losses.binary_cross_entropy(f, y01),
        losses.logistic_loss(f, losses.to_signed(y01)),
        rtol=1e-12,
    )


def test_binary_accuracy_hand_computation():
    f = jnp.array([-2.0, -0.5, 0.0, 0.5, 3.0])  # predictions 0, 0, 0 (f = 0 is class 0), 1, 1
    y01 = jnp.array([0, 1, 0, 1, 0.0])  # right, wrong, right, right, wrong
    assert float(losses.binary_accuracy(f, y01)) == pytest.approx(3 / 5)
    assert losses.binary_accuracy(f, y01.astype(jnp.int32)).dtype == jnp.float32
    with pytest.raises(ValueError, match="logits, y01"):
        losses.binary_accuracy(f[:, None], y01)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="logits, y"):
        losses.logistic_loss(jnp.zeros((4, 1)), jnp.zeros(4))
    with pytest.raises(ValueError, match="reduction"):
        losses.logistic_loss(jnp.zeros(4), jnp.ones(4), reduction="max")


def test_irm_penalty_closed_form():
    # d/dw mean(softplus(w f) - y w f) at w=1 = mean((sigmoid(f) - y) f)
    f = jnp.array([0.3, -1.2, 2.0, 0.7])
    y = jnp.array([1.0, 0.0, 1.0, 0.0])
    g = np.mean((1 / (1 + np.exp(-np.asarray(f))) - np.asarray(y)) * np.asarray(f))
    np.testing.assert_allclose(losses.irm_penalty(f, y), g**2, rtol=1e-10)


def test_vrex_penalty_is_variance():
    r = jnp.array([0.2, 0.6])
    np.testing.assert_allclose(losses.vrex_penalty(r), (0.6 - 0.2) ** 2 / 4, rtol=1e-12)
    with pytest.raises(ValueError, match="risks"):
        losses.vrex_penalty(jnp.array([0.1]))
