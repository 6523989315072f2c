"""Models: NNX MLP/CNN, the pure (apply_fn, params) view, seed batching, train/eval modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ntkdyn.models.cnn import CNN, init_cnn
from ntkdyn.models.mlp import (
    MLP,
    DenseApply,
    ModuleApply,
    init_mlp,
    pure,
    shallow_relu,
    xavier_uniform,
)


def _manual_mlp(params, x, act=jax.nn.relu):
    h = x.reshape(x.shape[0], -1)
    layers = params["linears"]
    n = len(layers)
    for i in range(n):
        h = h @ np.asarray(layers[i]["kernel"][...]) + np.asarray(layers[i]["bias"][...])
        if i < n - 1:
            h = act(h)
    return h


def test_mlp_forward_matches_manual_and_pure(key):
    model = MLP(6, [5, 4], 1, rngs=nnx.Rngs(key))
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 2, 3))
    out = model(x)
    assert out.shape == (7, 1)
    _, params = pure(model)
    np.testing.assert_allclose(out, _manual_mlp(params, x), rtol=1e-5, atol=1e-6)
    apply_fn, params = pure(model)
    assert isinstance(apply_fn, DenseApply)
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x), out, rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda p: apply_fn(p, x).sum())(params)
    assert jax.tree.structure(g) == jax.tree.structure(params)


def test_mlp_xavier_and_zero_bias(key):
    model = MLP(392, [300, 300], 1, rngs=nnx.Rngs(key), kernel_init=xavier_uniform)
    W = np.asarray(model.linears[0].kernel[...])
    bound = np.sqrt(6 / (392 + 300))
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.9 * bound
    assert np.all(np.asarray(model.linears[0].bias[...]) == 0)


def test_dropout_and_batchnorm_follow_modes(key):
    model = MLP(3, [64], 1, rngs=nnx.Rngs(key), dropout_rate=0.5, batch_norm=True)
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 3), jnp.float32)
    model.train()
    a, b = model(x), model(x)
    assert not np.allclose(a, b)  # dropout masks differ between calls
    model.eval()
    c, d = model(x), model(x)
    np.testing.assert_array_equal(c, d)
    apply_fn, params = pure(model)
    assert isinstance(apply_fn, ModuleApply)  # batch norm: generic view
    np.testing.assert_allclose(apply_fn(params, x), c, rtol=1e-6, atol=1e-6)


def test_pure_leaves_module_mode_alone(key):
    model = MLP(3, [8], 1, rngs=nnx.Rngs(key), dropout_rate=0.5)
    model.train()
    apply_fn, params = pure(model)
    x = jnp.ones((4, 3))
    np.testing.assert_array_equal(apply_fn(params, x), apply_fn(params, x))  # eval mode
    assert model.dropout.deterministic is False


def test_init_mlp_vmaps_over_seeds(key):
    keys = jax.random.split(key, 3)
    apply_fn, _ = init_mlp(keys[0], 2, [16])
    params = jax.vmap(lambda k: init_mlp(k, 2, [16])[1])(keys)
    x = jax.random.normal(key, (5, 2))
    out = jax.vmap(apply_fn, in_axes=(0, None))(params, x)
    assert out.shape == (3, 5, 1)
    for i in range(3):
        _, p_i = init_mlp(keys[i], 2, [16])
        np.testing.assert_allclose(out[i], apply_fn(p_i, x), rtol=1e-6, atol=1e-6)
    assert not np.allclose(out[0], out[1])


def test_dense_apply_accepts_plain_layers(key):
    k1, k2 = jax.random.split(key)
    W1, W2 = jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (4, 1))
    x = jnp.arange(6.0).reshape(2, 3)
    f = DenseApply(jnp.tanh)
    expected = jnp.tanh(x @ W1) @ W2
    np.testing.assert_allclose(f([(W1, None), (W2, None)], x), expected, rtol=1e-12)
    np.testing.assert_allclose(
        f([{"kernel": W1}, {"kernel": W2, "bias": jnp.zeros(1)}], x), expected, rtol=1e-12
    )


def test_cnn_shapes_and_pure(key):
    model = CNN(1, (4, 8), 1, rngs=nnx.Rngs(key))
    x = jax.random.normal(key, (3, 12, 12))
    out = model(x)
    assert out.shape == (3, 1)
    apply_fn, params = init_cnn(key, 1, (4, 8))
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x), out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MLP(0, [3], rngs=nnx.Rngs(0)), "in_features"),
        (lambda: MLP(2, [0], rngs=nnx.Rngs(0)), "hidden"),
        (lambda: MLP(2, [3], rngs=nnx.Rngs(0), dropout_rate=1.0), "dropout_rate"),
        (lambda: MLP(2, [3], rngs=nnx.Rngs(0))(jnp.ones((4, 3))), "x:"),
        (lambda: MLP(2, [3], rngs=nnx.Rngs(0))(jnp.ones(2)), "x:"),
        (lambda: CNN(1, (), rngs=nnx.Rngs(0)), "channels"),
        (lambda: CNN(3, (4,), rngs=nnx.Rngs(0))(jnp.ones((2, 5, 5, 1))), "x:"),
        (lambda: pure(lambda x: x), "module"),
        (lambda: DenseApply()([jnp.ones((2, 3)), jnp.ones((4, 1))], jnp.ones((1, 2))), "params"),
    ],
)
def test_bad_input_names_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------------------------------------------
# shallow_relu: the activation-pattern gradient against autodiff of the plain network


def _shallow_params(key, d, H):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return (
        jax.random.normal(k1, (d, H)),
        jax.random.normal(k2, (H,)),
        jax.random.normal(k3, (H, 1)) / np.sqrt(H),
        jax.random.normal(k4, (1,)),
    )


@pytest.mark.parametrize(
    "d", [2, 7]
)  # broadcast multiply-adds (d <= 4) and the matrix-multiply path
def test_shallow_relu_value_and_gradients_equal_autodiff_of_dense_apply(d):
    W1, b1, w2, b2 = _shallow_params(jax.random.key(d), d, 40)
    x = jax.random.normal(jax.random.key(10 + d), (25, d))
    y = jnp.sign(jax.random.normal(jax.random.key(20 + d), (25,)))

    def loss(fn):
        return lambda *a: jnp.mean(jax.nn.softplus(-y * fn(*a))) + 0.3 * jnp.mean(fn(*a) ** 2)

    def dense(W1, b1, w2, b2, x):
        return DenseApply()([(W1, b1), (w2, b2)], x)[:, 0]

    np.testing.assert_allclose(
        shallow_relu(W1, b1, w2, b2, x), dense(W1, b1, w2, b2, x), rtol=1e-5, atol=1e-5
    )
    ours = jax.grad(loss(shallow_relu), argnums=(0, 1, 2, 3, 4))(W1, b1, w2, b2, x)
    ref = jax.grad(loss(dense), argnums=(0, 1, 2, 3, 4))(W1, b1, w2, b2, x)
    for name, a, b in zip(("kernel1", "bias1", "kernel2", "bias2", "x"), ours, ref, strict=True):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_shallow_relu_under_vmap_and_relu_derivative_at_zero():
    W1, b1, w2, b2 = _shallow_params(jax.random.key(0), 2, 16)
    b1 = b1.at[:4].set(0.0)
    x = jnp.concatenate(
        [jnp.zeros((3, 2)), jax.random.normal(jax.random.key(1), (5, 2))]
    )  # pre-activation 0
    stacked = [jnp.stack([a, 2 * a]) for a in (W1, b1, w2, b2)]
    xs = jnp.stack([x, -x])

    def grads(fn):
        return jax.vmap(
            jax.grad(
                lambda W1, b1, w2, b2, x: jnp.sum(jnp.sin(fn(W1, b1, w2, b2, x))),
                argnums=(0, 1, 2, 3),
            )
        )(*stacked, xs)

    ref = grads(lambda W1, b1, w2, b2, x: DenseApply()([(W1, b1), (w2, b2)], x)[:, 0])
    for a, b in zip(grads(shallow_relu), ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (dict(x=jnp.zeros((3, 2, 1))), "x"),
        (dict(W1=jnp.zeros((3, 8))), "kernel1"),
        (dict(b1=jnp.zeros((7,))), "bias1"),
        (dict(w2=jnp.zeros((8, 2))), "kernel2"),
        (dict(b2=jnp.zeros(())), "bias2"),
    ],
)
def test_shallow_relu_names_the_argument_of_a_wrong_shape(change, name):
    args = (
        dict(
            W1=jnp.zeros((2, 8)),
            b1=jnp.zeros((8,)),
            w2=jnp.zeros((8, 1)),
            b2=jnp.zeros((1,)),
            x=jnp.zeros((3, 2)),
        )
        | change
    )
    with pytest.raises(ValueError, match=name):
        shallow_relu(args["W1"], args["b1"], args["w2"], args["b2"], args["x"])
