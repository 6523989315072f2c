"""Flax ResNet: torchvision's parameter counts and shapes, batch norm in train vs eval mode, the pure logit view."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.models.resnet import ResNet, init_resnet, resnet10, resnet18, resnet50, resnet_logit_fn


def n_params(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("factory,expected", [(resnet18, 11_689_512), (resnet50, 25_557_032)])
def test_parameter_count_and_forward_shape_match_torchvision(factory, expected):
    """len(params) of torchvision.models.resnet18/50 with the 1000-class head; the 224-px forward shape."""
    model = factory(num_outputs=1000)
    shapes = jax.eval_shape(lambda: init_resnet(model, jax.random.PRNGKey(0), 224))
    assert n_params(shapes["params"]) == expected
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), train=False), shapes)
    assert out.shape == (2, 1000) and out.dtype == jnp.float32
    one = factory()
    logit_shapes = jax.eval_shape(lambda: init_resnet(one, jax.random.PRNGKey(0), 224))
    fc_in = logit_shapes["params"]["fc"]["kernel"].shape[0]
    assert n_params(logit_shapes["params"]) == expected - 1000 * (fc_in + 1) + fc_in + 1


@pytest.fixture(scope="module")
def tiny():
    model = ResNet((1, 1), width=4)
    return model, init_resnet(model, jax.random.PRNGKey(1), 16)


def test_batch_norm_train_and_eval(tiny):
    model, variables = tiny
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 16, 16, 3), jnp.float32)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    # eval: running statistics, per-example (no dependence on the rest of the batch), nothing to update
    out = apply(variables, x, train=False)
    np.testing.assert_allclose(apply(variables, x[:2], train=False), out[:2], rtol=1e-5, atol=1e-6)
    # train: batch statistics (the output of an example depends on its batch-mates) and updated averages
    out_t, upd = apply(variables, x, train=True, mutable=("batch_stats",))
    out_t2, _ = apply(variables, x[:3], train=True, mutable=("batch_stats",))
    assert not np.allclose(out_t[:3], out_t2, atol=1e-4)
    # running mean of the stem's BN = 0.9·0 + 0.1·batch mean of the stem convolution (a reference conv)
    k = variables["params"]["conv1"]["kernel"]
    h = jax.lax.conv_general_dilated(
        x, k, (2, 2), ((3, 3), (3, 3)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(
        upd["batch_stats"]["bn1"]["mean"], 0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        upd["batch_stats"]["bn1"]["var"], 0.9 + 0.1 * h.var((0, 1, 2)), rtol=1e-4, atol=1e-6
    )


def test_logit_view_and_bf16(tiny):
    model, variables = tiny
    x = jax.random.normal(jax.random.PRNGKey(3), (4, 16, 16, 3), jnp.float32)
    f = resnet_logit_fn(model, variables["batch_stats"])
    logits = jax.jit(f)(variables["params"], x)
    assert logits.shape == (4,)
    np.testing.assert_allclose(logits, model.apply(variables, x, train=False)[:, 0], rtol=1e-6)
    bf = ResNet((1, 1), width=4, dtype=jnp.bfloat16)
    out = jax.jit(lambda v, x: bf.apply(v, x, train=False))(variables, x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out[:, 0], logits, rtol=0.1, atol=0.05)
    with pytest.raises(ValueError, match="num_outputs"):
        resnet_logit_fn(ResNet((1,), num_outputs=3), {})
    with pytest.raises(ValueError, match="NHWC"):
        model.apply(variables, jnp.zeros((2, 3, 16, 16)))


def test_bf16_training_keeps_float32_params_and_tracks_float32(tiny):
    """Mixed precision: bfloat16 compute, float32 parameters and optimizer state, the same descent."""
    import optax

    from ntkdyn.objectives import ERM
    from ntkdyn.train.dataparallel import init_train_state, make_train_step

    model, variables = tiny
    batch = {
        "image": jax.random.normal(jax.random.PRNGKey(4), (8, 16, 16, 3), jnp.float32),
        "y": jnp.array([0, 1] * 4),
        "group": jnp.array([0, 1, 2, 3] * 2),
    }
    runs = {}
    for name, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        m = ResNet((1, 1), width=4, dtype=dtype)
        step = make_train_step(m.apply, optax.adam(1e-2), ERM(), donate=False)
        state, losses = init_train_state(variables, optax.adam(1e-2)), []
        for _ in range(6):
            state, metrics = step(state, batch)
            losses.append(float(metrics["loss"]))
        runs[name] = (state, np.asarray(losses))
    state, losses = runs["bf16"]
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state.params)} == {
        jnp.dtype(jnp.float32)
    }
    assert {
        leaf.dtype for leaf in jax.tree_util.tree_leaves(state.opt_state) if jnp.ndim(leaf)
    } == {jnp.dtype(jnp.float32)}
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    np.testing.assert_allclose(losses, runs["f32"][1], rtol=0.05, atol=0.02)


def test_resnet10_is_basic_one_block_per_stage():
    shapes = jax.eval_shape(lambda: init_resnet(resnet10(width=8), jax.random.PRNGKey(0), 32))
    assert sorted(k for k in shapes["params"] if k.startswith("layer")) == [
        "layer1_0",
        "layer2_0",
        "layer3_0",
        "layer4_0",
    ]
    assert shapes["params"]["layer4_0"]["conv2"]["kernel"].shape == (3, 3, 64, 64)
