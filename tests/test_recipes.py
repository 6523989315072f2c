"""Method recipes on environments: coefficients, scaling, the record, the loss and the sweep grid."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.models.mlp import init_mlp_stacked, xavier_uniform
from ntkdyn.objectives import IRMv1, SpectralDecoupling
from ntkdyn.settings import ConfigError
from ntkdyn.train.recipes import (
    IRMRecipe,
    Recipe,
    SDRecipe,
    VRExRecipe,
    environment_evaluation,
    environment_loss,
    sweep_grid,
)


def test_coefficients_scaling_and_record():
    irm = IRMRecipe(390, 5e-4, 501, 190, l2=1e-3, penalty_weight=9e4)
    assert list(irm.coefficients()) == ["penalty_weight", "l2"]  # the swept one first
    assert SDRecipe(coef=2e-5, l2=0.3).coefficients() == {"coef": 2e-5}  # SD sweeps coef alone
    quick = irm.scaled(20)
    assert (quick.steps, quick.anneal_steps, quick.hidden) == (25, 9, 390)
    assert Recipe(steps=30).scaled(20).steps == 5 and irm.scaled(1) is irm
    rec = SDRecipe(300, 1e-4, 100, 22, coef=2e-5).record("sd")
    assert rec == {
        "name": "sd",
        "hidden": 300,
        "lr": 1e-4,
        "steps": 100,
        "anneal_steps": 22,
        "grayscale": False,
        "l2": 0.0,
        "penalty": 2e-5,
        "coef": 2e-5,
    }
    with pytest.raises(ConfigError, match="penalty_weight"):
        VRExRecipe(penalty_weight=-1.0)
    with pytest.raises(ConfigError, match="lr"):
        Recipe(lr=0.0)


def test_environment_loss_is_the_objective_on_the_two_environments():
    keys = jax.random.split(jax.random.key(0), 1)
    apply_fn, params = init_mlp_stacked(keys, 5, [4], xavier_uniform)
    params = jax.tree_util.tree_map(lambda a: a[0], params)
    xs = jax.random.normal(jax.random.key(1), (2, 8, 5))
    ys = (jax.random.uniform(jax.random.key(2), (2, 8)) > 0.5).astype(jnp.float32)
    batch = {"x1": xs[0], "x2": xs[1], "y1": ys[0], "y2": ys[1]}
    irm = IRMRecipe(anneal_steps=3, penalty_weight=100.0, l2=0.01)
    hp = {k: jnp.asarray(v) for k, v in irm.coefficients().items()}
    loss = environment_loss(irm, apply_fn)
    for step, weight in ((0, 1.0), (5, 100.0)):  # weight 1 before the annealing step
        value, (state, _) = loss(params, None, {**batch, "hp": hp}, jnp.int32(step), None)
        logits = (apply_fn(params, xs[0])[:, 0], apply_fn(params, xs[1])[:, 0])
        ref = IRMv1(penalty_weight=weight, l2=0.01).loss(
            logits, (ys[0], ys[1]), step=step, params=params
        )[0]
        np.testing.assert_allclose(value, ref, rtol=1e-6)
        assert state is None
    sd = SDRecipe(anneal_steps=2, coef=0.5)
    value = environment_loss(sd, apply_fn)(
        params, None, {**batch, "hp": {"coef": jnp.asarray(0.5)}}, jnp.int32(0), None
    )[0]
    logits = (apply_fn(params, xs[0])[:, 0], apply_fn(params, xs[1])[:, 0])
    ref = SpectralDecoupling.annealed(0.5, 2).loss(logits, (ys[0], ys[1]), step=0, params=params)
    np.testing.assert_allclose(value, ref[0], rtol=1e-6)


def test_environment_evaluation_keeps_accuracies_and_the_probe():
    keys = jax.random.split(jax.random.key(0), 1)
    apply_fn, params = init_mlp_stacked(keys, 3, [4], xavier_uniform)
    params = jax.tree_util.tree_map(lambda a: a[0], params)
    x = jax.random.normal(jax.random.key(1), (6, 3))
    y = jnp.asarray([0, 1, 0, 1, 1, 0], jnp.float32)
    batch = {"x1": x, "y1": y, "x2": x, "y2": y, "xt": x, "yt": y}
    probe = {"digit_gray": x, "blank_gray": x}
    eval_fn, evaluate = environment_evaluation(apply_fn)
    history = eval_fn(params, None, batch)
    out = evaluate(params, batch, probe)
    assert set(out) == {k for k in history if k.endswith("_acc")} | {"probe"}
    expected = float(jnp.mean((apply_fn(params, x)[:, 0] > 0) == (y > 0.5)))
    assert float(out["test_acc"]) == pytest.approx(expected)
    assert set(out["probe"]) == set(probe)


def test_sweep_grid():
    hp = {"penalty_weight": 10.0, "l2": 0.1}
    grid = sweep_grid(hp, (0.1, 1.0, 10.0))
    assert grid == [
        {"penalty_weight": 1.0, "l2": 0.1},
        {"penalty_weight": 10.0, "l2": 0.1},
        {"penalty_weight": 100.0, "l2": 0.1},
    ]
    assert [g["l2"] for g in sweep_grid({"l2": 0.0}, (1.0,), values=(0.0, 1e-3))] == [0.0, 1e-3]
