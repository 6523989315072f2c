"""Full-batch multi-seed trainer: vmapped, mapped, sharded and step-by-step runs agree."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tol

from ntkdyn.train.fullbatch import classifier_loss, train_fullbatch
from ntkdyn.train.layout import SeedAxis, SeedLayout, eigen_matmul_options

N, D, H, S = 24, 3, 16, 3


def _init(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (D, H)) / np.sqrt(D),
        "b1": jnp.zeros((H,)),
        "w2": jax.random.normal(k2, (H,)) / np.sqrt(H),
    }


def _loss_fn(params, model_state, batch, step, key):
    """Dropout (uses key), a running mean (uses model_state) and a penalty annealed with step."""
    x, y = batch
    h = x @ params["w1"] + params["b1"]
    mean = jnp.mean(h, axis=0)
    new_state = {"mean": 0.9 * model_state["mean"] + 0.1 * mean}
    h = jax.nn.relu(h - mean)
    keep = jax.random.bernoulli(key, 0.8, h.shape)
    h = jnp.where(keep, h / 0.8, 0.0)
    logits = h @ params["w2"]
    nll = jnp.mean(jax.nn.softplus(-y * logits))
    coef = jnp.where(step < 7, 0.0, 0.1)
    sd = jnp.mean(logits**2)
    return nll + coef * sd, (new_state, {"nll": nll, "acc": jnp.mean(jnp.sign(logits) == y)})


def _eval_fn(params, model_state, batch):
    x, _ = batch
    return {
        "out": jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"],
        "m0": model_state["mean"][0],
    }


@pytest.fixture
def problem():
    kx, ky, kp, kk = jax.random.split(jax.random.PRNGKey(3), 4)
    x = jax.random.normal(kx, (N, D))
    y = jnp.sign(jax.random.normal(ky, (N,)))
    keys = jax.random.split(kk, S)
    params = jax.vmap(_init)(jax.random.split(kp, S))
    mstate = {"mean": jnp.zeros((S, H))}
    return x, y, keys, params, mstate


def _opt():
    return optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.05, momentum=0.9))


def _run(problem, **kw):
    x, y, keys, params, mstate = problem
    return train_fullbatch(
        _loss_fn,
        _opt(),
        params,
        (x, y),
        keys=keys,
        model_state=mstate,
        num_steps=23,
        log_every=5,
        eval_fn=_eval_fn,
        **kw,
    )


def _reference(problem):
    """Slow reference: a Python loop over seeds and steps, one jitted step at a time."""
    x, y, keys, params, mstate = problem
    opt = _opt()
    finals, losses = [], []
    for s in range(S):
        p = jax.tree_util.tree_map(lambda a, s=s: a[s], params)
        m = jax.tree_util.tree_map(lambda a, s=s: a[s], mstate)
        o = opt.init(p)
        rec = []
        for t in range(23):
            (loss, (m, _)), g = jax.value_and_grad(_loss_fn, has_aux=True)(
                p, m, (x, y), jnp.int32(t), jax.random.fold_in(keys[s], t)
            )
            u, o = opt.update(g, o, p)
            p = optax.apply_updates(p, u)
            if (t + 1) % 5 == 0:
                rec.append(loss)
        finals.append(p)
        losses.append(rec)
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *finals), np.asarray(losses)


def test_vmapped_equals_one_seed_at_a_time(problem):
    res = _run(problem, layout=SeedLayout(SeedAxis.VMAP), unroll=3)
    ref_params, ref_loss = _reference(problem)
    t = tol(res.state.params["w1"].dtype)
    for a, b in zip(
        jax.tree_util.tree_leaves(res.state.params),
        jax.tree_util.tree_leaves(ref_params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, **t)
    np.testing.assert_allclose(res.history["loss"], ref_loss, **t)
    np.testing.assert_array_equal(res.steps, [5, 10, 15, 20])
    assert res.history["out"].shape == (S, 4, N)
    assert res.history["nll"].shape == (S, 4)
    np.testing.assert_array_equal(res.state.step, [23] * S)


def test_map_layout_equals_vmap(problem):
    a = _run(problem, layout=SeedLayout(SeedAxis.VMAP))
    b = _run(problem, layout=SeedLayout(SeedAxis.MAP), unroll=4)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, **tol(np.float64))


@pytest.mark.parametrize(
    "chunk", [1, 2]
)  # S = 3: chunks of one, and of two with a remainder of one
def test_chunked_vmap_equals_vmap(problem, chunk):
    a = _run(problem, layout=SeedLayout(SeedAxis.VMAP))
    b = _run(problem, layout=SeedLayout(SeedAxis.VMAP, chunk))
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(u, v, **tol(np.float64))


def test_per_seed_batch(problem):
    x, y, keys, params, mstate = problem
    xs = jnp.stack([x * (1 + 0.1 * s) for s in range(S)])
    ys = jnp.stack([y] * S)
    res = train_fullbatch(
        _loss_fn,
        _opt(),
        params,
        (xs, ys),
        keys=keys,
        model_state=mstate,
        num_steps=6,
        batch_axis=0,
        layout=SeedLayout(SeedAxis.MAP),
    )
    one = train_fullbatch(
        _loss_fn,
        _opt(),
        jax.tree_util.tree_map(lambda a: a[2:], params),
        (xs[2], ys[2]),
        keys=keys[2:],
        model_state={"mean": mstate["mean"][2:]},
        num_steps=6,
    )
    np.testing.assert_allclose(
        res.state.params["w1"][2], one.state.params["w1"][0], **tol(np.float64)
    )
    assert res.history == {}


def test_seed_key_matters_and_is_deterministic(problem):
    a = _run(problem)
    b = _run(problem)
    np.testing.assert_array_equal(a.state.params["w2"], b.state.params["w2"])
    # Different seeds (different keys and inits) give different runs.
    assert not np.allclose(a.state.params["w2"][0], a.state.params["w2"][1])


SHARD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, {tests!r})
    import test_fullbatch as T
    from ntkdyn.train.fullbatch import classifier_loss, train_fullbatch
    from ntkdyn.train.layout import SeedAxis, SeedLayout
    assert jax.local_device_count() == 4, jax.local_devices()
    assert SeedLayout.local().devices == tuple(jax.local_devices())
    assert SeedLayout.parse("vmap:2@1").devices is None
    out = {{}}
    for seeds in (6,):  # 6 seeds on 4 devices: padded to 8, two seeds per device
        kx, ky, kp, kk = jax.random.split(jax.random.PRNGKey(3), 4)
        x = jax.random.normal(kx, (T.N, T.D)); y = jnp.sign(jax.random.normal(ky, (T.N,)))
        keys = jax.random.split(kk, seeds)
        params = jax.vmap(T._init)(jax.random.split(kp, seeds))
        ms = {{"mean": jnp.zeros((seeds, T.H))}}
        for layout in SeedAxis:
            runs = [train_fullbatch(T._loss_fn, T._opt(), params, (x, y), keys=keys, model_state=ms,
                                    num_steps=12, log_every=4, eval_fn=T._eval_fn,
                                    layout=SeedLayout(layout, None, devs))
                    for devs in (None, jax.local_devices())]
            leaves = [jax.tree_util.tree_leaves(r) for r in runs]
            err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(*leaves))
            shapes = [np.shape(a) == np.shape(b) for a, b in zip(*leaves)]
            out[f"{{seeds}}-{{layout.value}}"] = [err, all(shapes), int(runs[1].state.params["w1"].shape[0])]
        # Typed keys, and the call traced inside an outer jit, on 4 devices against 1.
        def train(params, keys, devices):
            return train_fullbatch(T._loss_fn, T._opt(), params, (x, y), keys=keys, model_state=ms,
                                   num_steps=12, layout=SeedLayout(devices=devices)).state.params
        tkeys = jax.random.split(jax.random.key(5), seeds)
        for name, fn, k in (("typed", train, tkeys),
                            ("jitted", jax.jit(train, static_argnums=2), keys)):
            one, four = fn(params, k, None), fn(params, k, tuple(jax.local_devices()))
            pairs = list(zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(four)))
            err = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)
            out[f"{{seeds}}-{{name}}"] = [err, all(np.shape(a) == np.shape(b) for a, b in pairs),
                                          int(four["w1"].shape[0])]
    print(json.dumps(out))
    """
)


@pytest.mark.e2e
def test_sharded_on_four_devices_equals_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    script = SHARD_SCRIPT.format(tests=os.path.dirname(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (err, same_shapes, seeds) in out.items():
        assert same_shapes, name
        assert err < 1e-9, (name, err)
        assert seeds == int(name.split("-")[0])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=5, log_every=0), "log_every"),
        (dict(num_steps=5, unroll=0), "unroll"),
        (dict(num_steps=5, batch_axis=1), "batch_axis"),
        (dict(num_steps=5, layout="vmap"), "layout"),
        (dict(num_steps=5, compiler_options="eigen"), "compiler_options"),
        (dict(num_steps=5, compiler_options={1: ""}), "compiler_options"),
    ],
)
def test_bad_input(problem, kw, match):
    x, y, keys, params, mstate = problem
    with pytest.raises(ValueError, match=match):
        train_fullbatch(_loss_fn, _opt(), params, (x, y), keys=keys, model_state=mstate, **kw)


def test_seed_axis_mismatch(problem):
    x, y, keys, params, mstate = problem
    with pytest.raises(ValueError, match="params"):
        train_fullbatch(
            _loss_fn, _opt(), params, (x, y), keys=keys[:2], model_state=mstate, num_steps=2
        )
    with pytest.raises(ValueError, match="batch"):
        train_fullbatch(
            _loss_fn,
            _opt(),
            params,
            (x, y),
            keys=keys,
            model_state=mstate,
            num_steps=2,
            batch_axis=0,
        )


def test_eigen_matmul_options(problem):
    """The options take the products out of YNNPACK and change no result beyond float rounding."""
    assert eigen_matmul_options("gpu") == {} and eigen_matmul_options("tpu") == {}
    options = eigen_matmul_options()
    assert options in ({}, {"xla_cpu_experimental_ynn_fusion_type": ""})
    if options:  # this jaxlib knows the option: no product of the compiled program goes to YNNPACK
        x = jnp.ones((2, 64, 32))
        hlo = (
            jax.jit(lambda x: jnp.einsum("bni,bnj->bij", x, x), compiler_options=options)
            .lower(x)
            .compile()
            .as_text()
        )
        assert "dot(" in hlo and "ynn" not in hlo.lower()
    a, b = _run(problem), _run(problem, compiler_options=options)
    for u, v in zip(
        jax.tree_util.tree_leaves(a.state), jax.tree_util.tree_leaves(b.state), strict=True
    ):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.history["out"], b.history["out"], rtol=1e-5, atol=1e-6)


def test_classifier_loss_is_the_objective_plus_the_accuracy():
    from ntkdyn.objectives import ERM

    w = jnp.asarray([1.0, -2.0])
    x = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.5]])
    y01 = jnp.asarray([1.0, 0.0, 1.0, 1.0])  # f = 1, -2, -1, 1: the third is wrong
    seen = {}

    def forward(params, state, x, *, train, key):
        seen.update(train=train, key=key)
        return x @ params, state

    loss_fn = classifier_loss(forward, ERM(l2=0.5))
    value, (state, metrics) = loss_fn(w, "stats", (x, y01), jnp.int32(0), "k")
    f = x @ w
    nll = jnp.mean(jnp.logaddexp(0.0, -(2 * y01 - 1) * f))
    np.testing.assert_allclose(value, nll + 0.5 * jnp.sum(w**2), rtol=1e-6)
    assert state == "stats" and seen == {"train": True, "key": "k"}
    assert float(metrics["acc"]) == pytest.approx(0.75)
