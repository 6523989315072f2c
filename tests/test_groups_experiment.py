"""``ntkdyn groups`` end to end on a metadata-format fixture: per-group accuracies, resume, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ntkdyn import cli
from ntkdyn.data.metadata import write_metadata_fixture

ENTRY = ("ntkdyn.experiments.groups:main", "Group robustness on an image folder.")
# The command line, with `groups` in its table (a no-op once the table lists it).
SHIM = "import sys; from ntkdyn import cli; cli.COMMANDS.setdefault('groups', {!r}); sys.exit(cli.main())"
SMALL = [
    "--quick", "--arch", "resnet10", "--width", "4", "--image-size", "16", "--batch-size", "16",
    "--eval-batch-size", "32", "--workers", "1", "--log-every", "2",
]  # fmt: skip


@pytest.fixture(autouse=True)
def groups_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "groups", cli.COMMANDS.get("groups", ENTRY))


def main(*args):
    return cli.main(["groups", *map(str, args)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_metadata_fixture(
        tmp_path_factory.mktemp("data") / "fx", seed=3, sizes=(96, 48, 48), image_size=16
    )


def read_metadata(folder):
    with open(folder / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def write_metadata(folder, rows):
    with open(folder / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def erm_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "erm"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.COMMANDS, "groups", cli.COMMANDS.get("groups", ENTRY))
        code = main(*SMALL, "--data-dir", folder, "--method", "erm", "--epochs", "1", "--out", out)
    assert code == 0
    return out


def test_group_accuracies_match_a_recomputation_from_the_saved_model(erm_run, folder):
    """The reported test accuracies equal those of the final checkpoint's predictions."""
    import jax
    from ntkdyn.experiments.groups import Config, initial_variables

    from ntkdyn.data.images import iterate_batches
    from ntkdyn.data.metadata import load_metadata_folder
    from ntkdyn.models.resnet import RESNET_ARCHS
    from ntkdyn.train.checkpoint import latest_checkpoint, restore_checkpoint
    from ntkdyn.train.dataparallel import init_train_state, make_eval_step

    res = json.loads((erm_run / "results.json").read_text())
    erm = res["methods"]["erm"]
    assert erm["selection"]["epochs"] == [1]  # one epoch: the final checkpoint is the selected one
    cfg = Config(**{k: v for k, v in json.loads((erm_run / "config.json").read_text()).items()
                    if k not in ("devices", "processes")} | {"methods": ("erm",)})  # fmt: skip
    model = RESNET_ARCHS[cfg.arch](width=cfg.width)
    data = load_metadata_folder(folder)
    template = init_train_state(
        initial_variables(cfg, model, 0),
        cfg.recipe("erm").make_optimizer(),
        cfg.objective("erm", data.splits["train"].group_counts()),
    )
    state, _ = restore_checkpoint(
        latest_checkpoint(erm_run / "checkpoints" / "erm" / "seed0"), template
    )
    test = data.splits["test"]
    batches = iterate_batches(test, np.arange(len(test)), batch_size=32, image_size=16, workers=1)
    evaluate = make_eval_step(model.apply)
    logits = np.concatenate(
        [np.asarray(evaluate(jax.device_put(state), b["image"])) for b in batches]
    )
    pred = (logits > 0).astype(int)
    # the reference: plain numpy over metadata.csv's test rows
    rows = [r for r in read_metadata(folder) if r["split"] == "2"]
    y = np.array([int(r["y"]) for r in rows])
    g = np.array([2 * int(r["y"]) + int(r["a"]) for r in rows])
    names = res["group_names"]
    assert names == ["y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"]
    expected = {names[k]: float(np.mean(pred[g == k] == y[g == k])) for k in range(4)}
    assert erm["group_acc"] == pytest.approx(expected, abs=1e-12)
    assert erm["avg_acc"] == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert erm["worst_group_acc"] == pytest.approx(min(expected.values()), abs=1e-12)
    counts = erm["per_seed"][0]["test"]["group_count"]
    assert counts == {names[k]: int(np.sum(g == k)) for k in range(4)}


def test_outputs_of_a_run(erm_run):
    for name in ("config.json", "results.json", "metrics.jsonl", "summary.md"):
        assert (erm_run / name).stat().st_size > 0
    for stem in ("groups_group_accuracy", "groups_validation"):
        assert (erm_run / f"{stem}.png").is_file() and (erm_run / f"{stem}.pdf").is_file()
    summary = (erm_run / "summary.md").read_text()
    assert "Epoch selected by val_avg" in summary and "Epoch selected by val_worst" in summary
    assert "published" not in summary  # no published numbers for a folder of one's own
    records = [json.loads(x) for x in (erm_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]  # every --log-every steps and the epoch's end
    assert all(r["images_per_s"] > 0 and np.isfinite(r["loss"]) for r in train)


def test_bad_input_is_one_line_naming_the_flag_and_writes_nothing(folder, tmp_path, capsys):
    rows = read_metadata(folder)

    def variant(name, edit):
        d = tmp_path / name
        d.mkdir()
        (d / "images").symlink_to(folder / "images")
        write_metadata(d, edit([dict(r) for r in rows]))
        return d

    empty = tmp_path / "empty"
    empty.mkdir()
    no_column = variant(
        "no_column", lambda rs: [{k: v for k, v in r.items() if k != "a"} for r in rs]
    )
    bad_split = variant("bad_split", lambda rs: rs[:5] + [{**rs[5], "split": "3"}] + rs[6:])
    missing = variant("missing", lambda rs: rs + [{**rs[0], "filename": "images/none.jpg"}])

    def no_rare_group(rs):
        return [
            {**r, "split": "1"} if r["split"] == "0" and (r["y"], r["a"]) == ("1", "1") else r
            for r in rs
        ]

    cases = [
        (empty, "--data-dir: ", "has no metadata.csv"),
        (no_column, "--data-dir: ", "lacks the column(s) a"),
        (bad_split, "--data-dir: ", "column split is '3'"),
        (missing, "--data-dir: ", "none.jpg"),
        (variant("rare", no_rare_group), "--data-dir: ", "no example of group(s) y=1,a=1"),
    ]
    for i, (data, flag, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        assert main(*SMALL, "--data-dir", data, "--out", out) == 2, message
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"error: {flag}" in err and message in err, err
        assert not out.exists()


def test_resume_refuses_a_run_of_other_settings(erm_run, folder, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in erm_run.rglob("*")}
    # another dataset: the same images under another folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "images").symlink_to(folder / "images")
    (other / "metadata.csv").write_text((folder / "metadata.csv").read_text())
    args = [*SMALL, "--method", "erm", "--epochs", "1", "--resume", "--out", erm_run]
    assert main(*args, "--data-dir", other) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume: settings differ" in err and "data_dir" in err
    # the same dataset, another protocol
    args = [*SMALL, "--data-dir", folder, "--method", "erm", "--epochs", "3", "--resume"]
    assert main(*args, "--out", erm_run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume: settings differ" in err and "epochs" in err
    # the run's own settings without --resume: its checkpoints are not overwritten
    same = [*SMALL, "--data-dir", folder, "--method", "erm", "--epochs", "1", "--out", erm_run]
    assert main(*same) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out: " in err and "pass --resume" in err
    assert {p: p.stat().st_mtime_ns for p in erm_run.rglob("*")} == before


def _env(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "jax_cache")
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    for k in ("JAX_ENABLE_X64", "XLA_FLAGS"):
        env.pop(k, None)
    return env


@pytest.mark.e2e
@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_results(folder, tmp_path):
    """Three runs of ~15 s each: uninterrupted, killed after its first checkpoint, resumed."""
    cmd = [sys.executable, "-c", SHIM.format(ENTRY), "groups", *SMALL, "--data-dir", str(folder)]
    cmd += ["--epochs", "2", "--dro.epochs", "2", "--method", "erm", "--method", "groupdro"]
    cmd += ["--checkpoint-every", "3"]
    env = _env(tmp_path)
    ref = tmp_path / "ref"
    done = subprocess.run(cmd + ["--out", str(ref)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--out", str(out)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any((out / "checkpoints").glob("*/seed0/ckpt_*.npz")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    resumed = subprocess.run(
        cmd + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from ckpt_" in resumed.stderr
    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, out))
    assert a["methods"] == b["methods"]

    def strip(d):
        lines = (d / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "images_per_s"} for x in lines]

    assert strip(ref) == strip(out)


@pytest.mark.e2e
@pytest.mark.slow
def test_ctrl_c_checkpoints_prints_the_resume_line_and_resumes_to_the_same_results(
    folder, tmp_path
):
    """Ctrl-C mid-epoch: a checkpoint at once, exit 130 with the command that continues the run."""
    cmd = [sys.executable, "-c", SHIM.format(ENTRY), "groups", *SMALL, "--data-dir", str(folder)]
    cmd += ["--epochs", "2", "--method", "erm", "--checkpoint-every", "1000"]
    env = _env(tmp_path)
    ref = tmp_path / "ref"
    done = subprocess.run(cmd + ["--out", str(ref)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "stopped"
    proc = subprocess.Popen(cmd + ["--out", str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "config.json").exists():
        time.sleep(0.02)
    time.sleep(2.0)  # into the first epoch's steps
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 130, err[-3000:]
    assert f"to resume: ntkdyn groups {' '.join(cmd[4:])} --out {out} --resume" in err
    assert list((out / "checkpoints").rglob("ckpt_*.npz"))  # what --resume continues from
    resumed = subprocess.run(
        cmd + ["--out", str(out), "--resume"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (ref, out))
    assert a["methods"] == b["methods"]
