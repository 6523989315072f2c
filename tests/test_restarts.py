"""train_restarts: restarts × a coefficient grid in one call equal the runs trained one at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkdyn.models.mlp import init_mlp_stacked, xavier_uniform
from ntkdyn.tangent import feature_responses
from ntkdyn.train.fullbatch import train_fullbatch
from ntkdyn.train.restarts import grid_values, tile_grid, train_restarts

R, N, D = 3, 24, 4


def _problem():
    keys = jax.random.split(jax.random.key(0), R)
    apply_fn, params0 = init_mlp_stacked(keys, D, [6], xavier_uniform)
    x = jax.random.normal(jax.random.key(1), (R, N, D))
    y = (x[..., 0] + 0.3 * x[..., 1] > 0).astype(jnp.float32)

    def loss_fn(params, state, batch, step, key):
        f = apply_fn(params, batch["x"])[:, 0]
        nll = jnp.mean(optax.sigmoid_binary_cross_entropy(f, batch["y"]))
        l2 = batch["hp"]["l2"] if "hp" in batch else 0.0
        penalty = l2 * sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))
        return nll + penalty, (state, {"nll": nll})

    def evaluate(params, batch):
        f = apply_fn(params, batch["x"])[:, 0]
        return {"acc": jnp.mean((f > 0) == (batch["y"] > 0.5))}

    return keys, apply_fn, params0, {"x": x, "y": y}, loss_fn, evaluate


def _one(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i : i + 1], tree)


def test_grid_runs_equal_runs_trained_one_at_a_time():
    keys, _, params0, batch, loss_fn, evaluate = _problem()
    grid = [{"l2": 0.0}, {"l2": 0.05}]
    out = train_restarts(
        loss_fn,
        optax.adam(1e-2),
        params0,
        batch,
        keys=keys,
        num_steps=12,
        grid=grid,
        log_every=4,
        evaluate=evaluate,
        evaluate_args=(batch,),
    )
    assert out.values["acc"].shape == (len(grid) * R,) and out.values["acc"].dtype == np.float64
    assert out.result.history["nll"].shape == (len(grid) * R, 3) and out.seconds > 0
    for g, r in ((0, 1), (1, 2)):  # two of the six runs, each against its own training
        point = grid[g]
        alone = train_fullbatch(
            loss_fn,
            optax.adam(1e-2),
            _one(params0, r),
            {**_one(batch, r), "hp": {"l2": jnp.full((1,), point["l2"])}},
            keys=keys[r : r + 1],
            num_steps=12,
            log_every=4,
            batch_axis=0,
        )
        run = g * R + r  # grid point g, restart r
        for a, b in zip(
            jax.tree_util.tree_leaves(alone.state.params),
            jax.tree_util.tree_leaves(_one(out.result.state.params, run)),
            strict=True,
        ):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            alone.history["nll"][0], out.result.history["nll"][run], rtol=1e-5
        )
        one = jax.tree_util.tree_map(lambda a: a[0], alone.state.params)
        acc = evaluate(one, jax.tree_util.tree_map(lambda a, r=r: a[r], batch))["acc"]
        assert out.values["acc"][run] == pytest.approx(float(acc), abs=1e-6)
    # a larger penalty keeps the weights smaller, restart by restart
    norm = [
        sum(float(jnp.sum(p[i] ** 2)) for p in jax.tree_util.tree_leaves(out.result.state.params))
        for i in range(2 * R)
    ]
    assert all(norm[R + r] < norm[r] for r in range(R))


def test_responses_and_curves_of_the_first_run():
    keys, apply_fn, params0, batch, loss_fn, _ = _problem()

    def f(p, x):
        return apply_fn(p, x)[:, 0]

    x0, y0 = batch["x"][0], batch["y"][0]
    U = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (N, 3)))[0]
    out = train_restarts(
        loss_fn,
        optax.sgd(0.1),
        params0,
        batch,
        keys=keys,
        num_steps=10,
        log_every=5,
        responses=(f, x0, y0, U),
        eval_fn=lambda p, _, b: {
            "nll_eval": jnp.mean(optax.sigmoid_binary_cross_entropy(f(p, b["x"]), b["y"]))
        },
    )
    p0 = jax.tree_util.tree_map(lambda a: a[0], params0)
    pT = jax.tree_util.tree_map(lambda a: a[0], out.result.state.params)
    curves = out.curves({"nll_eval": 0.75}, {"loss": "nll_eval"})
    np.testing.assert_array_equal(curves["steps"], [0, 5, 10])
    assert np.all(curves["z"][0] == 0)
    np.testing.assert_allclose(
        curves["z"][-1], feature_responses(f, p0, pT, x0, y0, U), rtol=1e-4, atol=1e-6
    )
    assert 0.0 < float(curves["captured"]) <= 1.0 + 1e-6
    assert curves["loss"][0] == 0.75
    np.testing.assert_array_equal(curves["loss"][1:], out.result.history["nll_eval"][0])


def test_curves_align_when_the_last_step_is_not_a_record_step():
    """11 steps logged every 5: the history has steps 5 and 10, the recorder also 11."""
    keys, apply_fn, params0, batch, loss_fn, _ = _problem()

    def f(p, x):
        return apply_fn(p, x)[:, 0]

    U = jnp.linalg.qr(jax.random.normal(jax.random.key(2), (N, 3)))[0]
    out = train_restarts(
        loss_fn, optax.sgd(0.1), params0, batch, keys=keys, num_steps=11, log_every=5,
        responses=(f, batch["x"][0], batch["y"][0], U),
        eval_fn=lambda p, _, b: {"nll": jnp.mean(optax.sigmoid_binary_cross_entropy(f(p, b["x"]), b["y"]))},
    )  # fmt: skip
    assert list(out.responses.steps) == [5, 10, 11]
    curves = out.curves({"nll": 0.7}, {"loss": "nll"})
    np.testing.assert_array_equal(curves["steps"], [0, 5, 10])
    assert curves["z"].shape[0] == curves["loss"].shape[0] == 3


def test_progress_lines_and_no_change_to_the_numbers(capsys):
    keys, _, params0, batch, loss_fn, _ = _problem()
    kw = dict(keys=keys, num_steps=8, log_every=4)
    quiet = train_restarts(loss_fn, optax.adam(1e-2), params0, batch, **kw)
    assert capsys.readouterr().err == ""
    loud = train_restarts(
        loss_fn, optax.adam(1e-2), params0, batch, desc="demo", progress_seconds=0.0, **kw
    )
    lines = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(",")[0] for ln in lines] == ["demo: step 4/8", "demo: step 8/8"]
    np.testing.assert_array_equal(quiet.result.history["loss"], loud.result.history["loss"])


def test_grid_layout_helpers():
    tree = {"a": jnp.arange(3), "b": jnp.ones((3, 2))}
    tiled = tile_grid(tree, 2)
    np.testing.assert_array_equal(tiled["a"], [0, 1, 2, 0, 1, 2])
    assert tiled["b"].shape == (6, 2) and tile_grid(tree, 1) is tree
    values = grid_values([{"c": 1.0}, {"c": 2.0}], 3, jnp.float32)
    np.testing.assert_array_equal(values["c"], [1, 1, 1, 2, 2, 2])


def test_bad_grids_are_refused():
    keys, _, params0, batch, loss_fn, _ = _problem()
    kw = dict(keys=keys, num_steps=2, log_every=1)
    with pytest.raises(ValueError, match="grid"):
        train_restarts(loss_fn, optax.sgd(0.1), params0, batch, grid=[], **kw)
    with pytest.raises(ValueError, match="grid"):
        train_restarts(loss_fn, optax.sgd(0.1), params0, batch, grid=[{"a": 1}, {"b": 1}], **kw)
    pair = (batch["x"], batch["y"])
    with pytest.raises(ValueError, match="batch"):
        train_restarts(loss_fn, optax.sgd(0.1), params0, pair, grid=[{"l2": 0.1}], **kw)
