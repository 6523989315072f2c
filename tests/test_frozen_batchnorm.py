"""Frozen batch norm: population statistics at θ₀ layer by layer, a per-example function, the traps."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.errors import InputError
from ntkdyn.models.frozen import check_params, freeze_batch_stats
from ntkdyn.models.registry import check_logits

EPS = 1e-5


class DenseBN(nn.Module):
    """x → Dense → BN → ReLU → Dense → BN → ReLU → Dense(1)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for width in (6, 5):
            x = nn.Dense(width)(x)
            x = nn.BatchNorm(use_running_average=not train, epsilon=EPS)(x)
            x = nn.relu(x)
        return nn.Dense(1)(x)


class ConvBN(nn.Module):
    """Conv → BN → ReLU → Conv → BN → mean pool → Dense(1): statistics over (n, H, W) per channel."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, epsilon=EPS)(x))
        x = nn.Conv(3, (3, 3), strides=2)(x)
        x = nn.BatchNorm(use_running_average=not train, epsilon=EPS)(x)
        return nn.Dense(1)(x.mean(axis=(1, 2)))


def _bn(h, mean, var, p):
    return (h - mean) / np.sqrt(var + EPS) * np.asarray(p["scale"]) + np.asarray(p["bias"])


@pytest.fixture(scope="module")
def dense():
    module = DenseBN()
    x = np.random.default_rng(0).normal(1.5, 2.0, (37, 3)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(0), x[:2])
    return module, variables, x


def test_dense_stats_equal_a_hand_computed_reference(dense):
    module, variables, x = dense
    apply_fn, params, stats = freeze_batch_stats(module, variables, x, batch_size=10)
    p = jax.tree.map(np.asarray, params)
    x64 = x.astype(np.float64)
    h = x64 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    m0, v0 = h.mean(0), h.var(0)  # population (biased) variance over all 37 examples
    a = np.maximum(_bn(h, m0, v0, p["BatchNorm_0"]), 0)
    h = a @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]
    m1, v1 = h.mean(0), h.var(0)
    a = np.maximum(_bn(h, m1, v1, p["BatchNorm_1"]), 0)
    out = a @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]
    for name, m, v in (("BatchNorm_0", m0, v0), ("BatchNorm_1", m1, v1)):
        np.testing.assert_allclose(stats[name]["mean"], m, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats[name]["var"], v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(apply_fn(params, x), out, rtol=1e-4, atol=1e-5)
    # params is only the "params" collection; the statistics are closed over
    assert set(params) == set(variables["params"]) and "batch_stats" not in params


def test_conv_stats_reduce_over_examples_and_positions():
    module = ConvBN()
    x = np.random.default_rng(1).normal(0.5, 1.0, (9, 8, 8, 2)).astype(np.float32)
    variables = module.init(jax.random.PRNGKey(1), x[:1])
    _, params, stats = freeze_batch_stats(module, variables, x, batch_size=3)
    p = params
    h = nn.Conv(4, (3, 3)).apply({"params": p["Conv_0"]}, x).astype(np.float64)
    m0, v0 = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    a = np.maximum(_bn(h, m0, v0, p["BatchNorm_0"]), 0).astype(np.float32)
    h = nn.Conv(3, (3, 3), strides=2).apply({"params": p["Conv_1"]}, a).astype(np.float64)
    m1, v1 = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    np.testing.assert_allclose(stats["BatchNorm_0"]["mean"], m0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_0"]["var"], v0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_1"]["mean"], m1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["BatchNorm_1"]["var"], v1, rtol=1e-4, atol=1e-5)


def test_per_example_and_not_the_init_statistics(dense):
    module, variables, x = dense
    apply_fn, params, stats = freeze_batch_stats(module, variables, x)
    full = np.asarray(apply_fn(params, x))
    for i in (0, 17, 36):
        np.testing.assert_allclose(apply_fn(params, x[i : i + 1])[0], full[i], rtol=1e-5, atol=1e-6)
    other = np.random.default_rng(5).normal(size=(12, 3)).astype(np.float32)
    mixed = np.concatenate([x[:3], other])
    np.testing.assert_allclose(apply_fn(params, mixed)[:3], full[:3], rtol=1e-5, atol=1e-6)
    # train mode is not per-example: a logit moves with the rest of the batch
    train = lambda xb: module.apply(variables, xb, train=True, mutable=["batch_stats"])[0]  # noqa: E731
    assert not np.allclose(train(mixed)[:3], train(x)[:3], atol=1e-3)
    # the initial statistics (zeros, ones) give another function: the data here is not centred
    init = module.apply(variables, x, train=False)
    assert np.abs(np.asarray(init) - full).max() > 1e-2
    assert not np.allclose(stats["BatchNorm_0"]["mean"], 0.0, atol=1e-2)
    # the result does not depend on the batch size of the measurement
    _, _, again = freeze_batch_stats(module, variables, x, batch_size=256)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(again), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_tangent_features_differentiate_only_params(dense):
    module, variables, x = dense
    apply_fn, params, _ = freeze_batch_stats(module, variables, x)
    jac = jax.jit(jax.jacobian(lambda p: apply_fn(p, x[:4])[:, 0]))(params)
    assert set(jac) == set(params)
    # row i of Φ depends on example i alone
    one = jax.jit(jax.jacobian(lambda p: apply_fn(p, x[2:3])[0, 0]))(params)
    for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(a[2], b, rtol=1e-5, atol=1e-6)


def test_trap_whole_variables_as_params(dense):
    module, variables, x = dense
    with pytest.raises(InputError, match=r"'batch_stats' collection.*frozen\.freeze_batch_stats"):
        check_params(variables)

    def apply_fn(v, xb):
        return module.apply(v, xb, train=False)

    with pytest.raises(InputError, match=r"--model: .*variables\['params'\]"):
        check_logits(apply_fn, variables, x)


def test_trap_train_mode(dense):
    module, variables, x = dense
    params = variables["params"]
    stats = variables["batch_stats"]

    def apply_fn(p, xb):
        return module.apply({"params": p, "batch_stats": stats}, xb, train=True)

    with pytest.raises(
        InputError,
        match=r"--model: mine:f runs batch norm in train mode.*mutable.*freeze_batch_stats",
    ):
        check_logits(apply_fn, params, x, name="mine:f")


def test_bad_arguments(dense):
    module, variables, x = dense
    with pytest.raises(ValueError, match="variables: expected a Linen variables dict"):
        freeze_batch_stats(module, {"batch_stats": variables["batch_stats"]}, x)
    with pytest.raises(ValueError, match="batch_size"):
        freeze_batch_stats(module, variables, x, batch_size=0)
    with pytest.raises(ValueError, match="at least one example"):
        freeze_batch_stats(module, variables, x[:0])
    # a net without batch norm comes back unchanged, with empty statistics
    plain = nn.Dense(1)
    v = plain.init(jax.random.PRNGKey(0), x[:1])

    class Plain(nn.Module):
        @nn.compact
        def __call__(self, xb, train: bool = False):
            return nn.Dense(1)(xb)

    v = Plain().init(jax.random.PRNGKey(0), x[:1])
    f, p, s = freeze_batch_stats(Plain(), v, x)
    assert s == {}
    np.testing.assert_allclose(f(p, x), Plain().apply(v, x), rtol=1e-6)
    assert jnp.shape(f(p, x)) == (37, 1)
