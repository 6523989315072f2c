"""``ntkdyn celeba`` end to end on the synthetic fixture: results contract, kill-and-resume, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ntkdyn.experiments.celeba import group_metrics

from ntkdyn.cli import main

ARGS = [
    "celeba",
    "--quick",
    "--arch",
    "resnet10",
    "--epochs",
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


def test_group_metrics_hand_computed():
    pred = np.array([1, 0, 1, 1, 0, 0, 1])
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    g = np.array([3, 0, 1, 2, 0, 3, 3])
    m = group_metrics(pred, y, g, ["a", "b", "c", "d"])
    assert m["avg_acc"] == pytest.approx(5 / 7)
    assert m["group_acc"] == {"a": 1.0, "b": 0.0, "c": 1.0, "d": pytest.approx(2 / 3)}
    assert m["worst_group_acc"] == 0.0 and m["group_count"] == {"a": 2, "b": 1, "c": 1, "d": 3}


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
        assert m["selection"]["rule"] == "val_avg" and m["selection"]["epochs"][0] in (1, 2)
        assert m["by_val_worst"]["selection"]["rule"] == "val_worst"
    for name, m in res["methods"].items():  # the selected epoch has the best validation average
        epochs = json.loads((out / "checkpoints" / name / "seed0" / "done.json").read_text())[
            "epochs"
        ]
        assert m["per_seed"][0]["val"]["avg_acc"] == max(e["val"]["avg_acc"] for e in epochs)
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
