"""PyTorch-semantics optimizers against the update rules of torch.optim, written out in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkdyn.train.optimizers import pytorch_optimizer

THETA0 = np.array([1.0, -2.0, 0.5])
GRADS = [np.array([0.5, 0.1, -0.2]), np.array([-0.3, 0.2, 0.0]), np.array([0.0, 1.0, 0.4])]


def _run(opt):
    theta = jnp.asarray(THETA0)
    state = opt.init(theta)
    for g in GRADS:
        updates, state = opt.update(jnp.asarray(g), state, theta)
        theta = optax.apply_updates(theta, updates)
    return np.asarray(theta)


def _adam_reference(lr, wd, *, decoupled, b1=0.9, b2=0.999, eps=1e-8):
    theta, m, v = THETA0.copy(), np.zeros(3), np.zeros(3)
    for t, g in enumerate(GRADS, start=1):
        g = g if decoupled else g + wd * theta
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta = theta - lr * (step + (wd * theta if decoupled else 0.0))
    return theta


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_sgd_is_torch_sgd_with_coupled_weight_decay(momentum, wd):
    """torch.optim.SGD: g = ∇ + wd·θ, b = μ·b + g (b = g at the first step), θ -= lr·b."""
    theta, buf = THETA0.copy(), np.zeros(3)
    for g in GRADS:
        buf = momentum * buf + g + wd * theta
        theta = theta - 0.1 * buf
    got = _run(pytorch_optimizer("sgd", 0.1, momentum=momentum, weight_decay=wd))
    np.testing.assert_allclose(got, theta, rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_couples_and_adamw_decouples_weight_decay(name, wd):
    want = _adam_reference(1e-2, wd, decoupled=name == "adamw")
    np.testing.assert_allclose(
        _run(pytorch_optimizer(name, 1e-2, weight_decay=wd)), want, rtol=1e-5
    )


def test_without_decay_the_state_is_the_plain_optimizer():
    theta = jnp.zeros(3)
    for name in ("adam", "adamw"):
        opt = pytorch_optimizer(name, 1e-3, momentum=0.9)  # momentum is SGD's: ignored
        assert jax.tree.structure(opt.init(theta)) == jax.tree.structure(
            optax.adam(1e-3).init(theta)
        )
    sgd = pytorch_optimizer("sgd", 1e-2, momentum=0.9)
    assert jax.tree.structure(sgd.init(theta)) == jax.tree.structure(
        optax.sgd(1e-2, momentum=0.9).init(theta)
    )
    plain = pytorch_optimizer("sgd", 1e-2)
    assert jax.tree.structure(plain.init(theta)) == jax.tree.structure(optax.sgd(1e-2).init(theta))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="rmsprop", lr=0.1), "name"),
        (dict(name="sgd", lr=0.0), "lr"),
        (dict(name="sgd", lr=float("nan")), "lr"),
        (dict(name="sgd", lr=0.1, momentum=1.0), "momentum"),
        (dict(name="adam", lr=0.1, weight_decay=-1e-4), "weight_decay"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pytorch_optimizer(**kwargs)
