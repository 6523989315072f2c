"""The model registry: registered names, a user's module:factory in every accepted form, the errors."""

import textwrap

import jax
import numpy as np
import pytest

from ntkdyn.errors import InputError
from ntkdyn.models import registry
from ntkdyn.models.mlp import DenseApply, init_mlp, xavier_uniform
from ntkdyn.models.registry import (
    MODELS,
    Model,
    as_model,
    build_model,
    check_logits,
    load_factory,
    register_model,
)

KEY = jax.random.PRNGKey(3)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_names():
    assert {"mlp", "cnn", "resnet10", "resnet18", "resnet50"} <= set(MODELS)


def test_mlp_is_the_spectrum_commands_network():
    x = _x(5, 2)
    m = build_model("mlp", KEY, x, dataset="moons")
    ref_fn, ref = init_mlp(KEY, 2, [500])
    assert isinstance(m.apply_fn, DenseApply) and m.apply_fn == ref_fn and not m.frozen_batch_stats
    for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    assert m.apply_fn(m.params, x).shape == (5, 1)
    assert m.description == "mlp 2 → 500 → 1 (ReLU, LeCun-normal weights, zero biases)"
    # cmnist: Xavier-uniform weights, 392 → 300 → 300 → 1 (the Colored MNIST experiments)
    xc = _x(3, 392)
    c = build_model("mlp", KEY, xc, dataset="cmnist")
    _, ref = init_mlp(KEY, 392, [300, 300], kernel_init=xavier_uniform)
    for a, b in zip(jax.tree.leaves(c.params), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)
    # images are flattened; mnist defaults to 784 → 300 → 300 → 1
    mn = build_model("mlp", KEY, _x(2, 28, 28), dataset="mnist", hidden=[7])
    assert [w.shape for w in jax.tree.leaves(mn.params) if w.ndim == 2] == [(784, 7), (7, 1)]
    assert (
        "Xavier" in build_model("mlp", KEY, x, kernel_init="xavier_uniform", hidden=[3]).description
    )


def test_cnn_gives_one_logit():
    x = _x(4, 28, 28)
    c = build_model("cnn", KEY, x, hidden=[4, 8])
    assert c.apply_fn(c.params, x).shape == (4, 1) and c.description == "cnn (channels 4, 8)"


def test_resnet10_gives_one_logit_per_example():
    imgs = _x(6, 32, 32, 3)
    r = build_model("resnet10", KEY, imgs[:2], width=4, stats_x=imgs)
    out = r.apply_fn(r.params, imgs)
    assert out.shape == (6,) and r.frozen_batch_stats and set(r.params) >= {"conv1", "fc"}
    assert (
        r.description
        == "resnet10 (width 4), batch norm frozen at θ₀ statistics of 6 training images"
    )
    # per example: the logits of the first three do not depend on the rest of the batch
    mixed = np.concatenate([imgs[:3], _x(3, 32, 32, 3, seed=9)])
    np.testing.assert_allclose(r.apply_fn(r.params, mixed)[:3], out[:3], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_larger_resnets(arch):
    imgs = _x(3, 32, 32, 3)
    r = build_model(arch, KEY, imgs, width=4)
    assert r.apply_fn(r.params, imgs).shape == (3,) and r.frozen_batch_stats


def test_registry_errors():
    with pytest.raises(
        InputError,
        match=r"--model: unknown model 'vit'; registered: .*mlp.*package\.module:factory",
    ):
        build_model("vit", KEY, _x(2, 2))
    with pytest.raises(InputError, match=r"--width: --model mlp does not take width"):
        build_model("mlp", KEY, _x(2, 2), width=3)
    with pytest.raises(InputError, match=r"--model: resnet10 needs RGB images"):
        build_model("resnet10", KEY, _x(2, 2))
    with pytest.raises(InputError, match=r"--model: cnn needs images"):
        build_model("cnn", KEY, _x(2, 2))
    with pytest.raises(InputError, match=r"--hidden: widths must be >= 1"):
        build_model("mlp", KEY, _x(2, 2), hidden=[0])


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", dict(MODELS))

    def linear(key, x, **opts):
        w = jax.random.normal(key, (x.shape[1],))
        return (lambda p, xb: xb @ p), w

    register_model("linear", linear)
    m = build_model("linear", KEY, _x(3, 4))
    assert m.apply_fn(m.params, _x(3, 4)).shape == (3,)
    with pytest.raises(ValueError, match="already registered"):
        register_model("linear", lambda k, x: None)
    with pytest.raises(ValueError, match="name"):
        register_model("a:b", linear)


USER_MODULE = textwrap.dedent(
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ntkdyn.models.mlp import MLP


    def pair(key, x):
        w = jax.random.normal(key, (x.shape[1], 1))
        return (lambda p, xb: xb @ p), w            # (n, 1): wrapped to (n,)


    def flat(key, x):
        w = jax.random.normal(key, (x.shape[1],))
        return (lambda p, xb: xb @ p), w


    def nnx_module(key, x):
        return MLP(x.shape[1], [5], 1, rngs=nnx.Rngs(key))


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return nn.Dense(1)(nn.relu(nn.Dense(4)(x)))


    class BNNet(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Dense(4)(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            return nn.Dense(1)(nn.relu(x))


    def linen(key, x):
        m = Net()
        return m, m.init(key, x)


    def linen_bn(key, x):
        m = BNNet()
        return m, m.init(key, x)


    def whole_variables(key, x):
        m = BNNet()
        v = m.init(key, x)
        return (lambda p, xb: m.apply(p, xb)[:, 0]), v


    def train_mode(key, x):
        m = BNNet()
        v = m.init(key, x)
        stats = v["batch_stats"]
        return (lambda p, xb: m.apply({"params": p, "batch_stats": stats}, xb, train=True)), v["params"]


    def three(key, x):
        w = jax.random.normal(key, (x.shape[1], 3))
        return (lambda p, xb: xb @ p), w


    def text(key, x):
        return "a network"


    def linen_alone(key, x):
        return Net(), None


    NOT_CALLABLE = 3
    """
)


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(USER_MODULE)
    (tmp_path / "broken_nets.py").write_text("import no_such_package_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("factory", ["pair", "flat", "nnx_module", "linen", "linen_bn"])
def test_user_factory_forms(user, factory):
    x = _x(7, 3)
    m = build_model(f"my_nets:{factory}", KEY, x)
    assert isinstance(m, Model)
    out = m.apply_fn(m.params, x)
    assert out.shape == (7,) or (factory == "nnx_module" and out.shape == (7, 1))
    assert m.frozen_batch_stats == (factory == "linen_bn")
    assert m.description.startswith(f"my_nets:{factory}")
    if factory == "linen_bn":
        assert "batch_stats" not in m.params and "frozen at θ₀ statistics of 7" in m.description
        np.testing.assert_allclose(m.apply_fn(m.params, x[:1]), out[:1], rtol=1e-5, atol=1e-6)


def test_user_factory_uses_stats_x(user):
    x, big = _x(2, 3), _x(50, 3, seed=1) + 4.0
    a = build_model("my_nets:linen_bn", KEY, x)
    b = build_model("my_nets:linen_bn", KEY, x, stats_x=big)
    assert "statistics of 50" in b.description
    assert not np.allclose(a.apply_fn(a.params, x), b.apply_fn(b.params, x))


@pytest.mark.parametrize(
    "spec, exc, match",
    [
        ("my_nets:three", InputError, r"--model: my_nets:three returns 3 outputs per example.*one logit per example \(binary\)"),
        ("my_nets:text", InputError, r"--model: my_nets:text returned str; a factory must return \(apply_fn, params\), a Flax NNX module, or \(linen_module, variables\)"),
        ("my_nets:linen_alone", InputError, r"returned a Linen Net with NoneType instead of its variables"),
        ("my_nets:whole_variables", InputError, r"'batch_stats' collection.*variables\['params'\]"),
        ("my_nets:train_mode", InputError, r"train mode.*freeze_batch_stats"),
        ("my_nets:nothing", InputError, r"module 'my_nets' has no attribute 'nothing'"),
        ("my_nets:NOT_CALLABLE", InputError, r"my_nets:NOT_CALLABLE is a int, not a callable"),
        ("broken_nets:f", InputError, r"cannot import module 'broken_nets' \(ModuleNotFoundError: .*no_such_package_xyz.*is it on PYTHONPATH\?"),
        ("absent_module_xyz:f", InputError, r"cannot import module 'absent_module_xyz'.*PYTHONPATH"),
    ],
)  # fmt: skip
def test_user_factory_errors(user, spec, exc, match):
    with pytest.raises(exc, match=match):
        build_model(spec, KEY, _x(4, 3))


def test_load_factory_form_and_options(user):
    with pytest.raises(InputError, match=r"'package\.module:factory', got 'my_nets'"):
        load_factory("my_nets")
    with pytest.raises(InputError, match=r"got 'a:b:c'"):
        load_factory("a:b:c")
    assert callable(load_factory("my_nets:pair"))
    with pytest.raises(
        InputError, match=r"--hidden: a user's factory my_nets:pair .* takes no options"
    ):
        build_model("my_nets:pair", KEY, _x(2, 3), hidden=[3])


def test_check_logits_shapes():
    x = _x(5, 2)
    f = check_logits(lambda p, xb: xb @ p, np.ones((2, 1), np.float32), x)
    assert f(np.ones((2, 1), np.float32), x).shape == (5,)
    same = check_logits(lambda p, xb: xb @ p, np.ones(2, np.float32), x)
    assert same(np.ones(2, np.float32), x).shape == (5,)
    with pytest.raises(InputError, match=r"returned output of shape \(\) for 5 inputs"):
        check_logits(lambda p, xb: (xb @ p).sum(), np.ones(2, np.float32), x)
    with pytest.raises(InputError, match="returned str"):
        as_model("x", KEY, x, name="n")
