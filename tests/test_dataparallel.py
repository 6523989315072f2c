"""Training objectives (hand computations), the data-parallel step (1 vs 4 devices) and atomic checkpoints."""

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

from ntkdyn.losses import group_dro_init
from ntkdyn.train.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    restore_checkpoint,
    save_checkpoint,
)
from ntkdyn.train.dataparallel import ERM, ClassConditionalSD, GroupDRO, make_train_step

LOGITS = np.array([2.0, -1.0, 0.5, 3.0, -2.0, 0.1])
Y = np.array([1, 0, 1, 1, 0, 0])
G = np.array([3, 1, 2, 2, 0, 0])


def softplus(x):
    return np.log1p(np.exp(x))


def test_erm_and_sd_against_hand_computation():
    ys = 2 * Y - 1
    nll = np.mean(softplus(-ys * LOGITS))
    dro = group_dro_init(4)
    loss, _ = ERM().loss(jnp.asarray(LOGITS), jnp.asarray(Y), jnp.asarray(G), dro)
    np.testing.assert_allclose(loss, nll, rtol=1e-12)
    # paper's CelebA SD: 0.1·mean_{y=1}(ŷ − 2.5)² + 0.1·mean_{y=0}(ŷ − 0.44)²
    pos, neg = LOGITS[Y == 1], LOGITS[Y == 0]
    sd = nll + 0.1 * np.mean((pos - 2.5) ** 2) + 0.1 * np.mean((neg - 0.44) ** 2)
    loss, _ = ClassConditionalSD().loss(jnp.asarray(LOGITS), jnp.asarray(Y), jnp.asarray(G), dro)
    np.testing.assert_allclose(loss, sd, rtol=1e-12)
    custom = nll + 0.3 * np.mean((pos - 1.0) ** 2) + 0.2 * np.mean((neg + 1.0) ** 2)
    loss, _ = ClassConditionalSD(lam=(0.2, 0.3), gamma=(-1.0, 1.0)).loss(
        jnp.asarray(LOGITS), jnp.asarray(Y), jnp.asarray(G), dro
    )
    np.testing.assert_allclose(loss, custom, rtol=1e-12)


def test_group_dro_against_hand_computation():
    per = softplus(-(2 * Y - 1) * LOGITS)
    group_loss = np.array([per[G == g].mean() for g in range(4)])
    counts = np.array([100, 80, 30, 2])
    q = np.full(4, 0.25)
    state = group_dro_init(4, jnp.float64)
    for _ in range(3):  # three online updates with the generalisation adjustment C/√n_g
        q_new = q * np.exp(0.5 * (group_loss + 2.0 / np.sqrt(counts)))
        q_new /= q_new.sum()
        expected = np.sum(q_new * group_loss)
        loss, state = GroupDRO(step_size=0.5, adjustment=2.0, group_counts=tuple(counts)).loss(
            jnp.asarray(LOGITS), jnp.asarray(Y), jnp.asarray(G), state
        )
        np.testing.assert_allclose(state.q, q_new, rtol=1e-6)
        np.testing.assert_allclose(loss, expected, rtol=1e-6)
        q = q_new
    # a group absent from the batch keeps its weight (up to renormalisation) and adds no loss
    keep = G != 3
    loss, st = GroupDRO(step_size=0.5).loss(
        jnp.asarray(LOGITS[keep]),
        jnp.asarray(Y[keep]),
        jnp.asarray(G[keep]),
        group_dro_init(4, jnp.float64),
    )
    w = 0.25 * np.exp(0.5 * group_loss[:3])
    np.testing.assert_allclose(st.q, np.append(w, 0.25) / (w.sum() + 0.25), rtol=1e-6)


def test_group_dro_gradient_holds_weights_constant():
    def f(logits):
        return GroupDRO(step_size=1.0).loss(
            logits, jnp.asarray(Y), jnp.asarray(G), group_dro_init(4, jnp.float64)
        )[0]

    grad = jax.grad(f)(jnp.asarray(LOGITS))
    _, st = GroupDRO(step_size=1.0).loss(
        jnp.asarray(LOGITS), jnp.asarray(Y), jnp.asarray(G), group_dro_init(4, jnp.float64)
    )
    q = np.asarray(st.q)
    ys = 2 * Y - 1
    d_per = -ys / (1 + np.exp(ys * LOGITS))  # d softplus(−y f) / d f
    expected = np.array([q[g] * d_per[i] / np.sum(G == g) for i, g in enumerate(G)])
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_make_train_step_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        make_train_step(lambda *a, **k: None, optax.adam(1e-3), "erm")


SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from ntkdyn.models.resnet import ResNet, init_resnet
    from ntkdyn.train.dataparallel import (ERM, ClassConditionalSD, GroupDRO, data_mesh, gather, init_train_state,
                                           make_eval_step, make_train_step, replicate, shard_batch)
    assert len(jax.devices()) == 4
    model = ResNet((1,), width=4)
    variables = init_resnet(model, jax.random.PRNGKey(0), 16)
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(8, 16, 16, 3)).astype(np.float32), "y": rng.integers(0, 2, 8).astype(np.int32),
                "group": rng.integers(0, 4, 8).astype(np.int32)} for _ in range(2)]
    opt = optax.adam(1e-2)
    out = {}
    # SD and Group DRO: both reduce over the (sharded) batch per class / per group; ERM is their logistic term
    for name, method in (("sd", ClassConditionalSD()), ("dro", GroupDRO(0.1, 1.0, (10, 20, 30, 4)))):
        for ndev in (1, 4):
            mesh = data_mesh(jax.devices()[:ndev])
            state = replicate(init_train_state(variables, opt), mesh)
            step = make_train_step(model.apply, opt, method)
            losses = []
            for b in batches:
                sb = shard_batch(b, mesh)
                if ndev == 4:
                    assert len(sb["image"].sharding.device_set) == 4 and sb["image"].addressable_shards[0].data.shape[0] == 2
                state, m = step(state, sb)
                losses.append([float(m["loss"]), float(m["acc"])] + [float(v) for v in m["q"]])
            if ndev == 4:
                assert state.params["fc"]["kernel"].sharding.is_fully_replicated
            logits = gather(make_eval_step(model.apply)(state, shard_batch({"x": batches[0]["image"]}, mesh)["x"]))
            leaves = [np.asarray(x).ravel() for x in jax.tree.leaves((state.params, state.batch_stats))]
            out[f"{name}/{ndev}"] = {"metrics": losses, "logits": logits.tolist(), "params": np.concatenate(leaves).tolist()}
    print("RESULT" + json.dumps(out))
    """
)


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
