"""Resuming long runs: the full-batch loop and block Krylov continue bit for bit, and the commands
killed at several points (SIGKILL, a crash half-way through a checkpoint write, Ctrl-C) and resumed
write the results.json of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkdyn.errors import InputError
from ntkdyn.linalg import BlockOperator, truncated_svd
from ntkdyn.linearized import train_gd
from ntkdyn.objectives import SpectralDecoupling
from ntkdyn.runs.resume import deferring, interruptible, resume_command, start_run, stop_requested
from ntkdyn.train.checkpoint import (
    CRASH_ENV,
    PAUSE_ENV,
    Checkpoints,
    KrylovCheckpoints,
    list_checkpoints,
)
from ntkdyn.train.fullbatch import train_fullbatch
from ntkdyn.train.hooks import MetricsCollector, ResponseRecorder, every


class Stop(Exception):
    """Stands for a kill: raised by a hook, after the loop's last checkpoint."""


def _problem():
    x = jnp.linspace(-1.0, 1.0, 16)[:, None] * jnp.ones((1, 3))
    y = jnp.sign(x[:, 0] + 0.1)
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda k: {"w": jax.random.normal(k, (3, 4)), "v": jnp.zeros(4)})(keys)

    def apply(p, x):
        return jnp.tanh(x @ p["w"]) @ p["v"] + 0.1 * jnp.sum(x @ p["w"], axis=1)

    def loss_fn(p, ms, batch, step, key):
        x, y = batch
        f = apply(p, x) + 0.01 * jax.random.normal(key, y.shape)
        return jnp.mean(jax.nn.softplus(-y * f)), (ms, {"f2": jnp.mean(f**2)})

    return apply, loss_fn, params, (x, y), keys


def _train(tmp_path, *, stop_at=None, checkpoints=None):
    apply, loss_fn, params, batch, keys = _problem()
    p0 = jax.tree.map(lambda a: a[0], params)
    U = jnp.eye(16)[:, :2]
    hooks = [ResponseRecorder(3, apply, p0, batch[0], batch[1], U, seed=0), MetricsCollector(3)]
    if stop_at is not None:

        def stop(record):
            if record.step >= stop_at:
                raise Stop()

        hooks.append(every(3, stop))
    out = train_fullbatch(loss_fn, optax.adam(0.05), params, batch, keys=keys, num_steps=20,
                          log_every=3, hooks=hooks, checkpoints=checkpoints)  # fmt: skip
    return out, hooks


def test_fullbatch_resumed_equals_uninterrupted(tmp_path):
    whole, hooks = _train(tmp_path)
    ckpt = Checkpoints(tmp_path / "c", every=4)  # rounded up to 6, a multiple of the chunk of 3
    with pytest.raises(Stop):
        _train(tmp_path, stop_at=15, checkpoints=ckpt)
    assert [p.name for p in list_checkpoints(ckpt.directory)] == ["ckpt_0000000006.npz",
                                                                   "ckpt_0000000012.npz"]  # fmt: skip
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _train(tmp_path, checkpoints=ckpt)
    resumed, rhooks = _train(tmp_path, checkpoints=Checkpoints(ckpt.directory, 4, resume=True))
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(hooks[0].z, rhooks[0].z)
    np.testing.assert_array_equal(hooks[0].steps, rhooks[0].steps)
    for k in hooks[1].history:
        np.testing.assert_array_equal(hooks[1].history[k], rhooks[1].history[k])
    again, _ = _train(tmp_path, checkpoints=Checkpoints(ckpt.directory, 4, resume=True))  # done
    np.testing.assert_array_equal(again.history["loss"], whole.history["loss"])


def test_checkpoints_do_not_change_the_numbers(tmp_path):
    plain, _ = _train(tmp_path)
    saved, _ = _train(tmp_path, checkpoints=Checkpoints(tmp_path / "c", every=1))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigint_checkpoints_then_stops_with_the_resume_line(tmp_path, capsys):
    ckpt = Checkpoints(tmp_path / "c", every=1000)
    apply, loss_fn, params, batch, keys = _problem()
    ping = every(3, lambda r: os.kill(os.getpid(), signal.SIGINT) if r.step == 9 else None)
    with pytest.raises(KeyboardInterrupt), interruptible("moons", ["moons", "--out", "x"]):
        train_fullbatch(loss_fn, optax.sgd(0.1), params, batch, keys=keys, num_steps=20,
                        log_every=3, hooks=[ping], checkpoints=ckpt)  # fmt: skip
    assert [p.name for p in list_checkpoints(ckpt.directory)] == ["ckpt_0000000009.npz"]
    err = capsys.readouterr().err
    assert "stopping after the next checkpoint" in err
    assert "to resume: ntkdyn moons --out x --resume" in err
    assert resume_command("cmnist", ["cmnist", "--resume"]) == "ntkdyn cmnist --resume"


def test_an_interrupt_outside_a_loop_acts_at_once_and_one_in_the_last_chunk_on_the_way_out():
    with pytest.raises(KeyboardInterrupt), interruptible("moons", []):
        os.kill(os.getpid(), signal.SIGINT)  # no loop: at once
        time.sleep(5)
        raise AssertionError("not interrupted")
    with pytest.raises(KeyboardInterrupt), interruptible("moons", []):
        with deferring():
            os.kill(os.getpid(), signal.SIGINT)  # noted: the loop ends first
            time.sleep(0.05)
            assert stop_requested()
        raise AssertionError("not interrupted")
    assert not stop_requested()


class _Interrupting(KrylovCheckpoints):
    def __init__(self, checkpoints, at):
        super().__init__(checkpoints)
        self.at = at

    def save(self, state, final):
        super().save(state, final)
        if state.iterations == self.at and not final:
            raise Stop()


def test_block_krylov_resumed_equals_uninterrupted(tmp_path):
    a = np.random.default_rng(0).normal(size=(60, 40)) * np.linspace(3, 0.1, 40)
    op = BlockOperator.from_dense(a)
    kw = dict(key=jax.random.PRNGKey(1), tol=1e-8, max_iters=40, block_size=3, depth=3)
    whole = truncated_svd(op, 5, **kw)
    ckpt = Checkpoints(tmp_path / "k", every=2)
    with pytest.raises(Stop):
        truncated_svd(op, 5, checkpoint=_Interrupting(ckpt, 5), **kw)
    resumed = truncated_svd(
        op, 5, checkpoint=KrylovCheckpoints(Checkpoints(ckpt.directory, 2, resume=True)), **kw
    )
    assert whole.iterations > 5
    for x, y in zip(whole, resumed, strict=True):
        np.testing.assert_array_equal(np.asarray(x if x is not None else 0),
                                      np.asarray(y if y is not None else 0))  # fmt: skip


def _gd(checkpoints=None, stop_at=None, linearized=False):
    apply, _, params, (x, y), _ = _problem()
    p0 = jax.tree.map(lambda a: a[0], params)
    hooks = [MetricsCollector(2)]
    if stop_at is not None:

        def stop(record):
            if record.step >= stop_at:
                raise Stop()

        hooks.append(every(2, stop))
    return train_gd(apply, p0, x, y, eta=0.05, num_steps=24, save_every=4, hooks=hooks,
                    objective=SpectralDecoupling(coef=0.1),
                    linearized=linearized, checkpoints=checkpoints), hooks[0]  # fmt: skip


@pytest.mark.parametrize("linearized", [False, True])
def test_train_gd_resumed_equals_uninterrupted(tmp_path, linearized):
    whole, rec = _gd(Checkpoints(tmp_path / "w", every=4), linearized=linearized)
    ckpt = Checkpoints(tmp_path / "c", every=3)  # rounded up to 4, a multiple of the chunk of 2
    with pytest.raises(Stop):
        _gd(ckpt, stop_at=18, linearized=linearized)
    assert [p.name for p in list_checkpoints(ckpt.directory)] == ["ckpt_0000000012.npz",
                                                                   "ckpt_0000000016.npz"]  # fmt: skip
    resumed, rrec = _gd(Checkpoints(ckpt.directory, 5, resume=True), linearized=linearized)
    for a, b in zip(whole, resumed, strict=True):
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert whole.outputs.shape == (7, 16)
    for k in rec.history:  # the hook's records before the stop came back from the checkpoint
        np.testing.assert_array_equal(rec.history[k], rrec.history[k])
    # a finished run resumed returns its trace without a step; another run's folder is refused
    again, _ = _gd(Checkpoints(ckpt.directory, 5, resume=True), linearized=linearized)
    np.testing.assert_array_equal(again.outputs, whole.outputs)
    apply, _, params, (x, y), _ = _problem()
    with pytest.raises(ValueError, match="a run with num_steps = 24, this one 20; use a fresh"):
        train_gd(apply, jax.tree.map(lambda a: a[0], params), x, y, eta=0.05, num_steps=20,
                 save_every=4, checkpoints=Checkpoints(ckpt.directory, 4, resume=True))  # fmt: skip


def test_train_gd_checkpoint_interval_does_not_change_the_numbers(tmp_path):
    a, _ = _gd(Checkpoints(tmp_path / "a", every=1))
    b, _ = _gd(Checkpoints(tmp_path / "b", every=24))
    plain, _ = _gd()  # the same chunks with no checkpoints at all
    for u, v, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))


def test_start_run_refuses_what_cannot_continue(tmp_path):
    out = tmp_path / "run"
    start_run(out, "ntkdyn cmnist", {"seeds": 2, "n": 100}, resume=False)
    start_run(out, "ntkdyn cmnist", {"seeds": 2, "n": 100}, resume=False)  # no checkpoints yet
    (out / "checkpoints" / "erm").mkdir()
    (out / "checkpoints" / "erm" / "ckpt_0000000005.npz").write_bytes(b"")
    with pytest.raises(InputError, match="--out: .* holds a run's checkpoints; pass --resume"):
        start_run(out, "ntkdyn cmnist", {"seeds": 2, "n": 100}, resume=False)
    with pytest.raises(InputError, match="holds a run of ntkdyn cmnist, not of ntkdyn moons"):
        start_run(out, "ntkdyn moons", {"seeds": 2, "n": 100}, resume=True)
    with pytest.raises(InputError, match=r"--resume: --n differs .* \(100 there, 120 here\)"):
        start_run(out, "ntkdyn cmnist", {"seeds": 3, "n": 120}, resume=True, ignore=["seeds"])
    start_run(out, "ntkdyn cmnist", {"seeds": 3, "n": 100}, resume=True, ignore=["seeds"])
    groups = tmp_path / "groups"  # a run folder of a command that keeps its own config.json
    groups.mkdir()
    (groups / "config.json").write_text(json.dumps({"loader": "celeba"}))
    with pytest.raises(InputError, match="holds no run of ntkdyn spectrum; pass a fresh --out"):
        start_run(groups, "ntkdyn spectrum", {"n": 40}, resume=True)
    settings = {"protocol": {"sd": {"coef": 1e-4, "lr": 0.1}}, "seeds": 2}
    start_run(tmp_path / "nested", "ntkdyn cmnist", settings, resume=False)
    settings["protocol"]["sd"]["coef"] = 2e-4
    with pytest.raises(InputError, match=r"--sd.coef differs .* \(0.0001 there, 0.0002 here\)"):
        start_run(tmp_path / "nested", "ntkdyn cmnist", settings, resume=True, nested=["protocol"])


# --- the commands, killed and resumed --------------------------------------------------------


def _env(tmp_path, **extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg", HOME=str(tmp_path), **extra)
    for name in ("JAX_ENABLE_X64", "XLA_FLAGS", "NTKDYN_DATA_DIR"):
        env.pop(name, None)
    return env


NTKDYN = [sys.executable, "-c", "import sys; from ntkdyn.cli import main; sys.exit(main())"]


def _ntkdyn(args, tmp_path, **env):
    cmd = [*NTKDYN, *map(str, args)]
    return subprocess.run(cmd, env=_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def _kill_after_checkpoints(args, tmp_path, out, count):
    """Start the command, SIGKILL it once it has written ``count`` new checkpoints (each write
    pauses a moment first, so the kill lands before the run ends)."""
    before = {str(p) for p in Path(out).rglob("ckpt_*.npz")}
    cmd = [*NTKDYN, *map(str, args)]
    proc = subprocess.Popen(cmd, env=_env(tmp_path, **{PAUSE_ENV: "0.3"}),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    seen = set()
    while proc.poll() is None:
        seen |= {str(p) for p in Path(out).rglob("ckpt_*.npz")} - before
        if len(seen) >= count:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    return proc.wait(timeout=600)


def _numbers(path):
    """results.json without its wall-clock times."""

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if not k.startswith("seconds")}
        return [strip(v) for v in d] if isinstance(d, list) else d

    return strip(json.loads(Path(path, "results.json").read_text()))


def _kill_and_resume(tmp_path, capsys, args, every, rng):
    """One uninterrupted run, then: a crash half-way through a checkpoint write, a SIGKILL at a
    random checkpoint, resumed to the end. Returns (baseline, resumed) numbers."""
    from ntkdyn.cli import main

    base, out = tmp_path / "base", tmp_path / "out"
    assert _ntkdyn([*args, "--out", base], tmp_path).returncode == 0
    run = [*args, "--out", out, "--checkpoint-every", every]
    crash = _ntkdyn(run, tmp_path, **{CRASH_ENV: str(rng.choice([2, 3, 4]))})
    assert crash.returncode == 137, crash.stderr[-2000:]
    assert list(out.rglob(".ckpt_*.crash.tmp"))  # the torn temporary file is there, ignored
    assert main(list(map(str, run))) == 2  # in this process: refused before any work
    assert "pass --resume to continue it or a fresh --out" in capsys.readouterr().err
    assert _kill_after_checkpoints([*run, "--resume"], tmp_path, out, rng.choice([1, 2])) != 0
    done = _ntkdyn([*run, "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return _numbers(base), _numbers(out)


@pytest.mark.e2e
def test_spectrum_killed_and_resumed_writes_the_same_results(tmp_path, capsys):
    from ntkdyn.cli import main

    args = ["spectrum", "--quick", "--top", "20", "--solver", "krylov"]
    base, resumed = _kill_and_resume(tmp_path, capsys, args, 1, random.Random(20))
    assert base == resumed and base["converged"] and base["iterations"] >= 4
    out = str(tmp_path / "out")
    assert main([*args[:3], "19", *args[4:], "--out", out, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("--top differs from the run in " + out + " (20 there, 19 here); use the "
                        "same arguments or a fresh --out") and len(err.splitlines()) == 1  # fmt: skip
    assert main(["moons", "--quick", "--out", out, "--resume"]) == 2
    assert "holds a run of ntkdyn spectrum, not of ntkdyn moons" in capsys.readouterr().err


@pytest.mark.e2e
def test_spectrum_train_steps_killed_and_resumed_writes_the_same_results(tmp_path, capsys):
    args = ["spectrum", "--quick", "--train-steps", "60", "--save-every", "5", "--eta", "1e-3",
            "--train-checkpoint-every", "5"]  # fmt: skip
    base, resumed = _kill_and_resume(tmp_path, capsys, args, 1, random.Random(3))
    assert base == resumed and base["method"] == "dense" and base["train"]["steps"] == 60
    z = [np.load(tmp_path / d / "responses.npz") for d in ("base", "out")]
    for k in ("z_network", "z_linearized", "z_theory"):
        np.testing.assert_array_equal(z[0][k], z[1][k])
    assert {p.name for p in (tmp_path / "out" / "checkpoints").iterdir()} >= {
        "network",
        "linearized",
    }


CMNIST = ["cmnist", "--quick", "--methods", "erm", "sd", "--n", "100", "--top", "2",
          "--step-divisor", "100"]  # fmt: skip


@pytest.mark.e2e
def test_cmnist_killed_and_resumed_writes_the_same_results(tmp_path, capsys):
    base, resumed = _kill_and_resume(tmp_path, capsys, CMNIST, 5, random.Random(1))
    assert base == resumed and set(base["methods"]) == {"erm", "sd"}


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_prints_the_resume_line_and_exits_130(tmp_path):
    out = tmp_path / "out"
    run = [*CMNIST, "--methods", "erm", "--out", out, "--checkpoint-every", "5"]
    cmd = [*NTKDYN, *map(str, run)]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    while proc.poll() is None and not list(out.rglob("ckpt_*.npz")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=600)[1]
    assert proc.returncode == 130, err[-2000:]
    assert f"to resume: ntkdyn {' '.join(map(str, run))} --resume" in err
    done = _ntkdyn([*run, "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_moons_killed_and_resumed_writes_the_same_results(tmp_path, capsys):
    args = ["moons", "--quick", "--config", "erm,sd,dropout", "--epochs", "60"]
    base, resumed = _kill_and_resume(tmp_path, capsys, args, 10, random.Random(2))
    assert base == resumed
