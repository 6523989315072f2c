"""Record hooks: the full-batch and linearized loops call them between compiled chunks."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkdyn.linearized import linearize, train_gd
from ntkdyn.tangent import feature_responses
from ntkdyn.train.fullbatch import train_fullbatch
from ntkdyn.train.hooks import (
    MetricsCollector,
    Progress,
    Record,
    ResponseRecorder,
    SeedResponses,
    check_hooks,
    chunk_steps,
    every,
)
from ntkdyn.train.layout import SeedAxis, SeedLayout

N, D, H, S = 16, 3, 8, 3


def _apply(p, x):
    return jnp.tanh(x @ p["w"]) @ p["v"]


def _init(key):
    k1, k2 = jax.random.split(key)
    return {"w": jax.random.normal(k1, (D, H)), "v": jax.random.normal(k2, (H,)) / np.sqrt(H)}


@pytest.fixture(scope="module")
def data():
    x = jax.random.normal(jax.random.PRNGKey(1), (N, D))
    y = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(2), S)
    return x, y, keys, jax.vmap(_init)(keys)


def _loss_fn(params, model_state, batch, step, key):
    x, y = batch
    f = _apply(params, x)
    nll = jnp.mean(jax.nn.softplus(-(2 * y - 1) * f))
    pen = jnp.where(step >= 5, 0.1, 0.0) * jnp.mean(f**2)  # annealed with the step
    return nll + pen, (model_state, {"nll": nll})


def _train(data, **kw):
    x, y, keys, params = data
    return train_fullbatch(
        _loss_fn,
        optax.adam(0.05),
        params,
        (x, y),
        keys=keys,
        num_steps=14,
        eval_fn=lambda p, _, b: {"mean_f": jnp.mean(_apply(p, b[0]))},
        **kw,
    )


def test_chunk_steps_is_the_gcd():
    hooks = [every(6, print), every(4, print)]
    assert chunk_steps(hooks) == 2 and chunk_steps(hooks, 3) == 1 and chunk_steps([], 5) == 5
    assert chunk_steps([], None) == 1


@pytest.mark.parametrize("layout", [None, SeedLayout(SeedAxis.MAP)])
def test_fullbatch_with_hooks_equals_without(data, layout):
    """Hooks see every due step once (the last flagged final); the run itself does not change."""
    plain = _train(data, log_every=4, layout=layout)
    calls = []
    seen = MetricsCollector(2, seed_axis=True)
    hook = every(3, lambda r: calls.append((r.step, r.final, r.metrics["loss"].shape)))
    hooked = _train(data, log_every=4, layout=layout, hooks=[hook, seen])
    assert calls == [(3, False, (S,)), (6, False, (S,)), (9, False, (S,)), (12, False, (S,))] + [
        (14, True, (S,))
    ]
    np.testing.assert_array_equal(hooked.steps, plain.steps)
    assert set(hooked.history) == set(plain.history) == {"loss", "nll", "mean_f"}
    for k in plain.history:
        np.testing.assert_allclose(hooked.history[k], plain.history[k], rtol=1e-6, atol=1e-7)
    for a, b in zip(
        jax.tree_util.tree_leaves(hooked.state), jax.tree_util.tree_leaves(plain.state), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # the collector's loss at the record steps is the history's (the metrics of the last step)
    assert list(seen.steps) == [2, 4, 6, 8, 10, 12, 14]
    np.testing.assert_allclose(seen.history["loss"][:, 1::2][:, :3], plain.history["loss"])


def test_record_holds_the_stacked_state(data):
    got = []
    _train(data, log_every=None, hooks=[every(7, got.append)])
    assert [r.step for r in got] == [7, 14] and got[-1].final
    r = got[-1]
    assert r.params["w"].shape == (S, D, H) and np.asarray(r.state.step).tolist() == [14] * S


def test_hooks_are_checked(data):
    with pytest.raises(ValueError, match=r"hooks\[0\]"):
        _train(data, hooks=[print])
    with pytest.raises(ValueError, match="every"):
        every(0, print)
    with pytest.raises(ValueError, match="every"):
        MetricsCollector(-1)
    assert check_hooks(None) == ()


def test_progress_is_throttled_and_always_writes_the_end():
    stream = io.StringIO()
    bar = Progress(1, total=5, desc="fit", interval=1e9, stream=stream)
    for step in range(1, 6):
        bar(Record(step=step, params=None, metrics={"loss": np.array([1.0, 3.0])}, final=step == 5))
    lines = stream.getvalue().splitlines()
    assert bar.lines == 2 and lines[0].startswith("fit: step 1/5, loss 2") and "5/5" in lines[1]
    assert lines[1].endswith("steps/s")
    with pytest.raises(ValueError, match="interval"):
        Progress(1, interval=-1)


@pytest.mark.parametrize("linearized", [False, True])
def test_linearized_loop_hooks_and_the_response_recorder(data, linearized):
    """train_gd with hooks gives the same trace; the z(t) hook equals the trace's responses."""
    x, y, _, params = data
    p0 = jax.tree_util.tree_map(lambda a: a[0], params)
    U = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(5), (N, 4)))[0]
    kw = dict(eta=0.05, num_steps=12, save_every=4, linearized=linearized)
    plain = train_gd(_apply, p0, x, y, **kw)
    model = linearize(_apply, p0) if linearized else _apply  # the model that is trained
    rec = ResponseRecorder(4, model, p0, x, y, U)
    losses = MetricsCollector(3)
    hooked = train_gd(_apply, p0, x, y, hooks=[rec, losses], **kw)
    np.testing.assert_allclose(hooked.outputs, plain.outputs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(hooked.steps, plain.steps)
    assert list(rec.steps) == [4, 8, 12] and list(losses.steps) == [3, 6, 9, 12]
    np.testing.assert_allclose(rec.z, plain.responses(y, U)[1:], rtol=1e-4, atol=1e-5)
    if not linearized:  # the network's z(t) is the library's measure of the final parameters
        z = feature_responses(_apply, p0, plain.params, x, y, U)
        np.testing.assert_allclose(rec.z[-1], z, rtol=1e-4, atol=1e-5)
        # the share of Δf that U holds: 1 for a full basis, less for 4 of 16 directions
        assert 0.0 < rec.captured(plain.params) < 1.0
        full = ResponseRecorder(1, _apply, p0, x, y, jnp.eye(N))
        assert full.captured(plain.params) == pytest.approx(1.0, rel=1e-5)


def test_response_recorder_picks_one_seed_of_stacked_params(data):
    x, y, _, params = data
    p1 = jax.tree_util.tree_map(lambda a: a[1], params)
    U = jnp.eye(N)[:, :3]
    rec = ResponseRecorder(1, _apply, p1, x, y, U, seed=1)
    moved = jax.tree_util.tree_map(lambda a: a * 1.1, params)
    rec(Record(step=5, params=moved))
    want = feature_responses(_apply, p1, jax.tree_util.tree_map(lambda a: a[1], moved), x, y, U)
    np.testing.assert_allclose(rec.z[0], want, rtol=1e-6)
    assert list(rec.steps) == [5]
    p1_moved = jax.tree_util.tree_map(lambda a: a[1], moved)
    curve = rec.curve(p1_moved)
    assert list(curve["steps"]) == [0, 5] and curve["z"].dtype == np.float64
    np.testing.assert_array_equal(curve["z"][0], 0.0)
    np.testing.assert_allclose(curve["z"][1], want, rtol=1e-6)
    assert 0.0 < float(curve["captured"]) <= 1.0 + 1e-9


def test_seed_responses_measure_each_seed_against_its_own_spectrum(data):
    from ntkdyn.tangent import feature_spectrum

    x, y, _, params = data
    xs = jnp.stack([x, -x, 2 * x])  # each seed its own data
    ys = jnp.stack([y, y, 1 - y])
    hook = SeedResponses(5, _apply, params, xs, ys, top=2)
    moved = [jax.tree_util.tree_map(lambda a, c=c: a * c, params) for c in (1.05, 1.2)]
    for step, p in zip((5, 10), moved, strict=True):
        hook(Record(step=step, params=p))
    steps, z = hook.mean_curve()
    np.testing.assert_array_equal(steps, [0, 5, 10])
    assert z.shape == (3, 2) and np.all(z[0] == 0)
    want = []
    for s in range(S):
        p0 = jax.tree_util.tree_map(lambda a, s=s: a[s], params)
        U = feature_spectrum(_apply, p0, xs[s], ys[s]).U[:, :2]
        pT = jax.tree_util.tree_map(lambda a, s=s: a[s], moved[-1])
        want.append(feature_responses(_apply, p0, pT, xs[s], ys[s], U))
    np.testing.assert_allclose(z[-1], np.mean(want, axis=0), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="top"):
        SeedResponses(5, _apply, params, xs, ys, top=0)
