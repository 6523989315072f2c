"""``ntkdyn celeba`` end to end on the synthetic fixture: results contract, kill-and-resume, errors, settings."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ntkdyn.experiments.celeba import Config, Recipe, make_optimizer

from ntkdyn.cli import main

ARGS = [
    "celeba",
    "--quick",
    "--arch",
    "resnet10",
    "--epochs",
    "2",
    "--dro.epochs",
    "2",
    "--method",
    "erm",
    "--method",
    "groupdro",
    "--checkpoint-every",
    "4",
    "--workers",
    "2",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    e.pop("JAX_ENABLE_X64", None)
    e.pop("XLA_FLAGS", None)
    return e


def cli(args, env, **kw):
    return [
        sys.executable,
        "-c",
        "import sys; from ntkdyn.cli import main; sys.exit(main())",
        *args,
    ]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("run") / "a"
    proc = subprocess.run(
        cli(ARGS + ["--out", str(out)], env), env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.e2e
def test_results_contract(uninterrupted):
    out, proc = uninterrupted
    assert "Blond_Hair=1,Male=1" in proc.stderr  # group counts printed per split
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"erm", "groupdro"}
    groups = [
        "Blond_Hair=0,Male=0",
        "Blond_Hair=0,Male=1",
        "Blond_Hair=1,Male=0",
        "Blond_Hair=1,Male=1",
    ]
    for m in res["methods"].values():
        assert 0 <= m["worst_group_acc"] <= m["avg_acc"] <= 1
        assert (
            list(m["group_acc"]) == groups and min(m["group_acc"].values()) == m["worst_group_acc"]
        )
        assert m["selection"]["epochs"][0] in (1, 2)
        assert m["by_val_avg"]["selection"]["rule"] == "val_avg"
        assert m["by_val_worst"]["selection"]["rule"] == "val_worst"
    # ERM's headline epoch by validation average (the paper), Group DRO's by worst group (its authors)
    assert res["methods"]["erm"]["selection"]["rule"] == "val_avg"
    assert res["methods"]["groupdro"]["selection"]["rule"] == "val_worst"
    erm, dro = res["methods"]["erm"]["training"], res["methods"]["groupdro"]["training"]
    assert erm["optimizer"] == "adam" and not erm["balanced"]
    assert dro["optimizer"] == "sgd" and dro["momentum"] == 0.9 and dro["balanced"]
    for name, m in res["methods"].items():  # each rule's epoch has the best validation metric
        epochs = json.loads((out / "checkpoints" / name / "seed0" / "done.json").read_text())[
            "epochs"
        ]
        assert m["by_val_avg"]["per_seed"][0]["val"]["avg_acc"] == max(
            e["val"]["avg_acc"] for e in epochs
        )
        assert m["by_val_worst"]["per_seed"][0]["val"]["worst_group_acc"] == max(
            e["val"]["worst_group_acc"] for e in epochs
        )
    summary = (out / "summary.md").read_text()
    assert "not reproducible" in summary and "94.61" in summary and "87.78" in summary
    for stem in ("celeba_group_accuracy", "celeba_validation"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 4 and {r["method"] for r in evals} == {"erm", "groupdro"}
    dro_q = [r["q"] for r in records if r["kind"] == "train" and r["method"] == "groupdro"]
    assert dro_q[-1] != [0.25] * 4 and abs(sum(dro_q[-1]) - 1) < 1e-5
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "resnet10" and config["fixture"] and config["lr"] == 1e-3


@pytest.mark.e2e
def test_killed_run_resumes_to_the_same_results(uninterrupted, tmp_path, env):
    ref, _ = uninterrupted
    out = tmp_path / "b"
    proc = subprocess.Popen(
        cli(ARGS + ["--out", str(out)], env),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ckpts = out / "checkpoints"
    deadline = time.time() + 500
    while (
        time.time() < deadline and proc.poll() is None and not any(ckpts.glob("*/seed0/ckpt_*.npz"))
    ):
        time.sleep(0.02)
    assert proc.poll() is None, (
        "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "results.json").exists()
    # without --resume the existing checkpoints are not silently overwritten
    again = subprocess.run(
        cli(ARGS + ["--out", str(out)], env), env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = subprocess.run(
        cli(ARGS + ["--out", str(out), "--resume"], env),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from ckpt_" in resumed.stderr
    a = json.loads((ref / "results.json").read_text())
    b = json.loads((out / "results.json").read_text())
    assert a["methods"] == b["methods"]
    assert (ref / "metrics.jsonl").read_text().count("\n") == (
        out / "metrics.jsonl"
    ).read_text().count("\n")

    def strip(text):
        return [
            {k: v for k, v in json.loads(x).items() if k != "images_per_s"}
            for x in text.splitlines()
        ]

    assert strip((ref / "metrics.jsonl").read_text()) == strip((out / "metrics.jsonl").read_text())


@pytest.mark.e2e
def test_cli_errors_and_fixture_writer(tmp_path, capsys):
    assert (
        main(["celeba", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert main(["celeba", "--out", str(tmp_path / "o")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert (
        main(["celeba", "--make-fixture", str(tmp_path / "fx"), "--fixture-size", "8", "4", "4"])
        == 0
    )
    assert (tmp_path / "fx" / "list_attr_celeba.txt").read_text().startswith("16\n")
    assert (
        main(
            [
                "celeba",
                "--data-dir",
                str(tmp_path / "fx"),
                "--target",
                "Blond",
                "--out",
                str(tmp_path / "o2"),
            ]
        )
        == 2
    )
    assert "Blond" in capsys.readouterr().err
    assert (
        main(
            [
                "celeba",
                "--data-dir",
                str(tmp_path / "fx"),
                "--pretrained",
                str(tmp_path / "w.pth"),
                "--out",
                str(tmp_path / "o3"),
            ]
        )
        == 2
    )
    assert "w.pth" in capsys.readouterr().err


@pytest.mark.e2e
def test_every_argument_is_checked_before_anything_is_written(tmp_path, capsys):
    fx = tmp_path / "fx"
    assert main(["celeba", "--make-fixture", str(fx), "--fixture-size", "8", "4", "4"]) == 0
    capsys.readouterr()
    cases = [
        (["--quick", "--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        (["--quick", "--dro.epochs", "-1"], "--dro.epochs: expected an integer >= 1"),
        (["--quick", "--lr", "0"], "--lr: expected a finite number > 0"),
        (["--quick", "--dro.momentum", "1.5"], "--dro.momentum: expected a number in [0, 1)"),
        (
            ["--quick", "--sd.coef", "-1", "0.1"],
            "--sd.coef: expected two values, each a finite number >= 0",
        ),
        (["--quick", "--batch-size", "1000"], "--batch-size: 1000 exceeds the 600 training"),
        (["--quick", "--fixture-size", "2", "4", "4"], "--fixture-size"),
        (
            ["--make-fixture", str(tmp_path / "fx2"), "--fixture-size", "8", "3", "4"],
            "--fixture-size",
        ),
        (["--quick", "--preset", "real-10k"], "--quick: conflicts with --preset real-10k"),
        (["--quick", "--target", "Blond"], "--target"),
        (
            ["--data-dir", str(fx), "--crop", "300", "--batch-size", "4"],
            "--crop: 300 px is larger than the 178x218",
        ),
        (["--data-dir", str(fx), "--batch-size", "16"], "--batch-size: 16 exceeds the 8"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"o{i}"
        assert main(["celeba", *args, "--out", str(out)]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
        assert not out.exists(), args  # nothing written, no empty folder left behind


@pytest.mark.e2e
def test_a_run_failing_before_its_first_checkpoint_leaves_no_folder(tmp_path, capsys):
    fx = tmp_path / "fx"
    assert main(["celeba", "--make-fixture", str(fx), "--fixture-size", "8", "4", "4"]) == 0
    (fx / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")  # a training image
    out = tmp_path / "out"
    args = ["celeba", "--quick", "--data-dir", str(fx), "--batch-size", "4", "--workers", "1"]
    assert main([*args, "--method", "erm", "--out", str(out)]) == 2
    assert "000003.jpg: cannot be decoded" in capsys.readouterr().err
    assert not out.exists()


def test_settings_presets_and_flags():
    import argparse

    from ntkdyn.experiments.celeba import configure, resolve

    paper = Config()
    erm, dro = paper.recipe("erm"), paper.recipe("groupdro")
    assert (erm.optimizer, erm.lr, erm.weight_decay, erm.epochs) == ("adam", 1e-5, 0.0, 3)
    assert (erm.balanced, erm.selection) == (False, "val_avg")
    assert (dro.optimizer, dro.lr, dro.momentum, dro.weight_decay, dro.epochs) == (
        "sgd",
        1e-5,
        0.9,
        0.1,
        50,
    )
    assert (dro.balanced, dro.selection) == (True, "val_worst")
    assert (paper.batch_size, paper.dro.step_size, paper.dro.adjustment) == (128, 0.01, 0.0)
    real = Config.real_10k()
    assert (real.arch, real.recipe("sd").optimizer, real.recipe("sd").lr) == (
        "resnet10",
        "sgd",
        0.01,
    )
    assert real.recipe("erm").weight_decay == 1e-4 and not real.recipe("sd").balanced
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.lr = 1.0
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(
        ["--quick", "--sd.coef", "0.2", "0.3", "--no-balanced", "--crop", "auto", "--method", "sd"]
    )
    cfg = resolve(args)
    assert cfg.sd.coef == (0.2, 0.3) and cfg.methods == ("sd",) and cfg.crop is None
    assert not cfg.recipe("groupdro").balanced and cfg.fixture and cfg.image_size == 32
    cfg = resolve(parser.parse_args(["--quick", "--balanced", "--selection", "val_worst"]))
    assert cfg.recipe("erm").balanced and cfg.recipe("erm").selection == "val_worst"
    real = resolve(parser.parse_args(["--preset", "real-10k", "--data-dir", ".", "--epochs", "2"]))
    assert real.epochs == 2 and real.dro.epochs == 20 and not real.fixture


def test_sgd_matches_pytorch_coupled_weight_decay():
    """torch.optim.SGD(lr, momentum, weight_decay): g = ∇ + wd·θ, b = μ·b + g, θ -= lr·b."""
    recipe = Recipe("sgd", 0.1, 0.9, 0.01, 1, True, "val_worst")
    opt = make_optimizer(recipe)
    theta = jnp.array([1.0, -2.0])
    grads = [jnp.array([0.5, 0.1]), jnp.array([-0.3, 0.2]), jnp.array([0.0, 1.0])]
    state = opt.init(theta)
    ref, buf = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        updates, state = opt.update(g, state, theta)
        theta = theta + updates
        d = np.asarray(g) + 0.01 * ref
        buf = 0.9 * buf + d
        ref = ref - 0.1 * buf
    np.testing.assert_allclose(theta, ref, rtol=1e-6)
    adam = make_optimizer(Recipe("adam", 1e-3, 0.9, 0.0, 1, False, "val_avg"))
    assert jax.tree.structure(adam.init(theta)) == jax.tree.structure(optax.adam(1e-3).init(theta))


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_default_groupdro_beats_erm_on_worst_group(tmp_path, env):
    """The documented smoke run: all three methods; Group DRO's worst-group accuracy above ERM's."""
    out = tmp_path / "q"
    proc = subprocess.run(
        cli(["celeba", "--quick", "--out", str(out)], env),
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())["methods"]
    assert set(res) == {"erm", "sd", "groupdro"}
    assert res["groupdro"]["worst_group_acc"] > res["erm"]["worst_group_acc"]


@pytest.mark.e2e
def test_paper_preset_follows_the_authors_table_2_scripts(capsys):
    """Table_2/table_2.sh: only SD passes --adam; cross-entropy takes train.py's SGD branch."""
    from ntkdyn.experiments.celeba import PRESETS
    from ntkdyn.experiments.groups import Config as GroupsConfig

    cfg = GroupsConfig(**PRESETS["paper"])
    erm, sd, dro = (cfg.recipe(m) for m in ("erm", "sd", "groupdro"))
    assert (erm.optimizer, erm.lr, erm.momentum, erm.weight_decay, erm.epochs) == (
        "sgd", 1e-5, 0.9, 0.0, 3,
    )  # fmt: skip
    assert (sd.optimizer, sd.lr, sd.weight_decay, sd.epochs) == ("adam", 1e-5, 0.0, 3)
    assert dro.optimizer == "sgd" and dro.weight_decay == 0.1
    assert Config.quick().recipe("sd").optimizer == Config.quick().optimizer  # no override
    assert main(["celeba", "--quick", "--sd.optimizer", "rmsprop", "--out", "/nonexistent/x"]) == 2
    assert "--sd.optimizer" in capsys.readouterr().err


@pytest.mark.e2e
def test_former_flag_spellings_still_work_with_a_note(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["celeba", "--quick", "--sd-coef", "0.1", "0.1", "--dro-epochs", "0",
                 "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "--sd-coef is deprecated; use --sd.coef" in err
    assert "--dro-epochs: expected an integer >= 1, got 0" in err and not out.exists()
