"""The data-parallel step (objectives of ntkdyn.objectives; 1 vs 4 devices), prediction and atomic checkpoints."""

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

from ntkdyn.models.resnet import ResNet, init_resnet
from ntkdyn.objectives import ERM, ClassConditionalSD, GroupDRO
from ntkdyn.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from ntkdyn.train.dataparallel import (
    data_mesh,
    init_train_state,
    make_eval_step,
    make_train_step,
    predict_logits,
)


def test_make_train_step_rejects_a_string_objective():
    with pytest.raises(ValueError, match="objective: expected an ntkdyn.objectives object"):
        make_train_step(lambda *a, **k: None, optax.adam(1e-3), "erm")


@pytest.fixture(scope="module")
def tiny():
    model = ResNet((1,), width=4)
    return model, init_resnet(model, jax.random.PRNGKey(0), 16)


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(n, 16, 16, 3)).astype(np.float32)),
        "y": jnp.asarray(rng.integers(0, 2, n).astype(np.int32)),
        "group": jnp.asarray(np.arange(n, dtype=np.int32) % 4),
    }


def test_step_descends_the_objective_and_carries_its_state(tiny):
    """One SGD step = θ − lr·∇L of the objective's loss; Group DRO's weights travel in the state."""
    model, variables = tiny
    batch = _batch()
    lr = 0.1
    dro = GroupDRO(step_size=0.5)
    for objective in (ERM(), ClassConditionalSD(), dro):
        state = init_train_state(variables, optax.sgd(lr), objective)
        step = make_train_step(model.apply, optax.sgd(lr), objective, donate=False)
        new, metrics = step(state, batch)

        def loss(params, objective=objective, state=state):
            logits, _ = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
            )
            return objective.loss(
                logits[:, 0], batch["y"], state=state.objective_state, groups=batch["group"]
            )[0]

        grads = jax.grad(loss)(state.params)
        expected = jax.tree.map(lambda p, g: p - lr * g, state.params, grads)
        for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["loss"], loss(state.params), rtol=1e-6)
        assert int(new.step) == 1 and 0 <= float(metrics["acc"]) <= 1 and "nll" in metrics
    assert state.objective_state.q.shape == (4,)
    np.testing.assert_allclose(new.objective_state.q, metrics["q"])
    assert not np.allclose(metrics["q"], 0.25)
    assert init_train_state(variables, optax.sgd(lr)).objective_state == ()


def test_predict_drops_the_padding(tiny):
    model, variables = tiny
    state = init_train_state(variables, optax.sgd(0.1))
    mesh = data_mesh(jax.devices()[:1])
    images = np.asarray(_batch(n=6)["image"])
    batches = [
        {"image": images[:4], "index": np.array([5, 1, 2, 0]), "mask": np.ones(4, np.float32)},
        {
            "image": np.concatenate([images[4:], images[4:5]]),
            "index": np.array([3, 4, 3]),
            "mask": np.array([1, 1, 0], np.float32),
        },
    ]
    index, logits = predict_logits(make_eval_step(model.apply), state, batches, mesh)
    np.testing.assert_array_equal(index, [5, 1, 2, 0, 3, 4])
    direct = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )[:, 0]
    np.testing.assert_allclose(logits, direct, rtol=1e-5, atol=1e-6)


SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from ntkdyn.models.resnet import ResNet, init_resnet
    from ntkdyn.objectives import ClassConditionalSD, GroupDRO
    from ntkdyn.train.dataparallel import (data_mesh, gather, init_train_state, make_eval_step,
                                           make_train_step, replicate, shard_batch)
    assert len(jax.devices()) == 4
    model = ResNet((1,), width=4)
    variables = init_resnet(model, jax.random.PRNGKey(0), 16)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "y": rng.integers(0, 2, 8).astype(np.int32),
                "group": rng.integers(0, 4, 8).astype(np.int32)} for _ in range(2)]
    opt = optax.adam(1e-2)
    out = {}
    # SD and Group DRO: both reduce over the (sharded) batch per class / per group; ERM is their logistic term
    dro = GroupDRO(step_size=0.1, adjustment=1.0, group_counts=(10, 20, 30, 4))
    for name, method in (("sd", ClassConditionalSD()), ("dro", dro)):
        for ndev in (1, 4):
            mesh = data_mesh(jax.devices()[:ndev])
            state = replicate(init_train_state(variables, opt, method), mesh)
            step = make_train_step(model.apply, opt, method)
            losses = []
            for b in batches:
                sb = shard_batch(b, mesh)
                if ndev == 4:
                    assert len(sb["image"].sharding.device_set) == 4 and sb["image"].addressable_shards[0].data.shape[0] == 2
                state, m = step(state, sb)
                losses.append([float(m["loss"]), float(m["acc"])] + [float(v) for v in m.get("q", [])])
            if ndev == 4:
                assert state.params["fc"]["kernel"].sharding.is_fully_replicated
            logits = gather(make_eval_step(model.apply)(state, shard_batch({"x": batches[0]["image"]}, mesh)["x"]))
            leaves = [np.asarray(x).ravel() for x in jax.tree.leaves((state.params, state.batch_stats))]
            out[f"{name}/{ndev}"] = {"metrics": losses, "logits": logits.tolist(), "params": np.concatenate(leaves).tolist()}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.mark.e2e
def test_four_devices_match_one_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for name in ("sd", "dro"):
        one, four = out[f"{name}/1"], out[f"{name}/4"]
        np.testing.assert_allclose(four["metrics"], one["metrics"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(four["logits"], one["logits"], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(four["params"], one["params"], rtol=1e-3, atol=1e-5)
        assert one["metrics"][0][0] != one["metrics"][-1][0]  # it trained
    assert out["dro/1"]["metrics"][-1][2:] != [0.25] * 4  # the group weights moved


def test_checkpoint_roundtrip_pruning_and_mismatch(tmp_path):
    tree = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "opt": (np.int32(4), [np.ones(2, np.float64)]),
    }
    for step in (5, 10, 15):
        save_checkpoint(
            tmp_path,
            step,
            jax.tree.map(lambda x, k=step: x * k, tree),
            {"epoch": step // 5, "hist": [0.5, None]},
            keep=2,
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_0000000010.npz",
        "ckpt_0000000015.npz",
    ]
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    restored, meta = restore_checkpoint(latest_checkpoint(tmp_path), tree)
    assert meta == {"epoch": 3, "hist": [0.5, None]}
    np.testing.assert_array_equal(restored["w"], tree["w"] * 15)
    assert restored["opt"][0] == 60 and restored["opt"][1][0].dtype == np.float64
    with pytest.raises(ValueError, match="structure"):
        restore_checkpoint(latest_checkpoint(tmp_path), {"w": tree["w"]})
    with pytest.raises(ValueError, match=r"\['w'\]"):
        restore_checkpoint(latest_checkpoint(tmp_path), {**tree, "w": np.zeros((3, 2), np.float32)})
    (tmp_path / "ckpt_0000000020.npz").write_bytes(b"torn")
    with pytest.raises(ValueError, match="unreadable"):
        restore_checkpoint(latest_checkpoint(tmp_path), tree)
    assert latest_checkpoint(tmp_path / "none") is None
