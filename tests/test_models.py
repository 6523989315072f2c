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
    init_mlp_seeds,
    init_mlp_stacked,
    init_mlp_uniform,
    mlp_apply,
    mlp_logits,
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


# --------------------------------------------------------------------------------------------------
# mlp_apply / init_mlp_uniform: the MLP as a pure function with explicit batch-norm state


def test_init_mlp_uniform_is_pytorch_default_in_the_mlp_layout(key):
    params, stats = init_mlp_uniform(key, 2, [16, 8])
    assert stats is None and sorted(params["linears"]) == [0, 1, 2]
    for i, fan_in in enumerate((2, 16, 8)):
        W, b = params["linears"][i]["kernel"], params["linears"][i]["bias"]
        bound = 1 / np.sqrt(fan_in)
        assert float(jnp.abs(W).max()) <= bound and float(jnp.abs(b).max()) <= bound
    assert float(jnp.abs(params["linears"][0]["kernel"]).max()) > 0.8 / np.sqrt(2)
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 2))
    out, same = mlp_apply(params, x, train=True)
    assert same is None
    np.testing.assert_allclose(out, DenseApply()(params, x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out, _manual_mlp(params, x), rtol=1e-5, atol=1e-6)
    params_bn, stats_bn = init_mlp_uniform(key, 2, [16, 8], batch_norm=True)
    np.testing.assert_array_equal(params_bn["linears"][0]["kernel"], params["linears"][0]["kernel"])
    assert stats_bn["norms"][1]["var"].shape == (8,)


def test_mlp_apply_equals_the_nnx_mlp_in_train_and_eval_mode(key):
    model = MLP(3, [12, 6], 1, rngs=nnx.Rngs(key), batch_norm=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    # the model's dtype: flax's BatchNorm would scatter float64 statistics into float32 ones
    x = jax.random.normal(jax.random.PRNGKey(2), (16, 3), jnp.float32)
    model.train()
    out, new_stats = mlp_apply(params, x, batch_stats=stats, train=True)
    np.testing.assert_allclose(out, model(x), rtol=1e-5, atol=1e-5)
    want = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))  # updated by the call
    for a, b in zip(jax.tree.leaves(new_stats), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model.eval()
    out_eval, kept = mlp_apply(params, x, batch_stats=new_stats)
    np.testing.assert_allclose(out_eval, model(x), rtol=1e-5, atol=1e-5)
    assert kept is new_stats


def test_mlp_apply_pytorch_running_variance(key):
    params, stats = init_mlp_uniform(key, 2, [4], batch_norm=True)
    x = jax.random.normal(jax.random.PRNGKey(3), (10, 2))
    _, new = mlp_apply(
        params, x, batch_stats=stats, train=True, momentum=0.9, unbiased_running_var=True
    )
    pre = x @ params["linears"][0]["kernel"] + params["linears"][0]["bias"]
    np.testing.assert_allclose(new["norms"][0]["mean"], 0.1 * pre.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        new["norms"][0]["var"], 0.9 + 0.1 * np.var(pre, axis=0, ddof=1), rtol=1e-5
    )


def test_mlp_apply_dropout_masks_come_from_the_key(key):
    params, _ = init_mlp_uniform(key, 2, [256])
    x = jax.random.normal(jax.random.PRNGKey(4), (8, 2))
    k = jax.random.PRNGKey(5)
    a, _ = mlp_apply(params, x, train=True, key=k, dropout_rate=0.7)
    b, _ = mlp_apply(params, x, train=True, key=k, dropout_rate=0.7)
    c, _ = mlp_apply(params, x, train=True, key=jax.random.PRNGKey(6), dropout_rate=0.7)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    # Eval mode ignores dropout; the mask keeps about 30 % of the units, scaled by 1/0.3.
    np.testing.assert_array_equal(
        mlp_apply(params, x, dropout_rate=0.7)[0], mlp_apply(params, x)[0]
    )
    W, b1 = params["linears"][0]["kernel"], params["linears"][0]["bias"]
    h = jax.nn.relu(x @ W + b1)
    keep = jax.random.bernoulli(jax.random.fold_in(k, 0), 0.3, h.shape)
    expected = jnp.where(keep, h / 0.3, 0.0) @ params["linears"][1]["kernel"]
    np.testing.assert_allclose(a, expected + params["linears"][1]["bias"], rtol=1e-5, atol=1e-5)
    assert 0.2 < float(keep.mean()) < 0.4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train": True, "dropout_rate": 0.5}, "key"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"batch_norm": True}, "batch_stats"),
    ],
)
def test_mlp_apply_names_the_missing_argument(key, kwargs, match):
    params, _ = init_mlp_uniform(key, 2, [4], batch_norm=kwargs.pop("batch_norm", False))
    with pytest.raises(ValueError, match=match):
        mlp_apply(params, jnp.ones((3, 2)), **kwargs)


def test_init_mlp_seeds_does_not_depend_on_the_number_of_seeds(key):
    keys3, p3, s3 = init_mlp_seeds(key, 3, 2, [5, 5], batch_norm=True)
    keys1, p1, _ = init_mlp_seeds(key, 1, 2, [5, 5], batch_norm=True)
    for a, b in zip(jax.tree_util.tree_leaves(p3), jax.tree_util.tree_leaves(p1), strict=True):
        np.testing.assert_array_equal(a[:1], b)
    np.testing.assert_array_equal(jax.random.key_data(keys3[:1]), jax.random.key_data(keys1))
    k0 = jax.random.fold_in(jax.random.fold_in(key, 2), 0)  # seed 2's initialisation key
    ref, _ = init_mlp_uniform(k0, 2, [5, 5], batch_norm=True)
    np.testing.assert_array_equal(p3["linears"][1]["kernel"][2], ref["linears"][1]["kernel"])
    assert s3["norms"][0]["var"].shape == (3, 5)
    assert init_mlp_seeds(key, 2, 2, [4])[2] is None  # no batch norm: no statistics
    with pytest.raises(ValueError, match="seeds"):
        init_mlp_seeds(key, 0, 2, [4])


def test_init_mlp_stacked_equals_one_init_per_key(key):
    keys = jax.random.split(key, 3)
    apply_fn, params = init_mlp_stacked(keys, 4, [6, 6], xavier_uniform)
    x = jax.random.normal(key, (5, 4))
    for i in range(3):
        fn, ref = init_mlp(keys[i], 4, [6, 6], 1, kernel_init=xavier_uniform)
        one = jax.tree_util.tree_map(lambda a, i=i: a[i], params)
        np.testing.assert_allclose(apply_fn(one, x), fn(ref, x), rtol=1e-6)


def test_mlp_logits_fast_path_equals_mlp_apply(key):
    params, _ = init_mlp_uniform(key, 2, [7])
    x = jax.random.normal(jax.random.key(3), (9, 2))
    fast, stats = mlp_logits(params, x, train=True)
    assert fast.shape == (9,) and stats is None
    np.testing.assert_allclose(fast, mlp_apply(params, x, train=True)[0][:, 0], rtol=1e-6)
    g_fast = jax.grad(lambda p: jnp.sum(mlp_logits(p, x, train=True)[0] ** 2))(params)
    g_ref = jax.grad(lambda p: jnp.sum(mlp_apply(p, x)[0] ** 2))(params)
    for a, b in zip(
        jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_ref), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    bn, bn_stats = init_mlp_uniform(key, 2, [7], batch_norm=True)
    out, new = mlp_logits(bn, x, batch_stats=bn_stats, train=True, momentum=0.9)
    ref, ref_new = mlp_apply(bn, x, batch_stats=bn_stats, train=True, momentum=0.9)
    np.testing.assert_allclose(out, ref[:, 0], rtol=1e-6)
    np.testing.assert_allclose(new["norms"][0]["mean"], ref_new["norms"][0]["mean"], rtol=1e-6)
