import json
import os

import numpy as np
import pytest

from ntkdyn.runs import RunDir, atomic_write_text, to_jsonable


def test_to_jsonable_handles_arrays_and_nonfinite():
    out = to_jsonable({"a": np.arange(3), "b": np.float32(1.5), "c": float("nan"), "d": (1, 2)})
    assert out == {"a": [0, 1, 2], "b": 1.5, "c": None, "d": [1, 2]}


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary left behind


def test_rundir_writes_are_deterministic(tmp_path):
    import matplotlib.pyplot as plt

    def write(d):
        run = RunDir(d)
        run.write_results({"z": np.array([1.0, 2.0]), "b": 1})
        run.write_metrics([{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.5}])
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        run.save_figure(fig, "fig")
        return run

    a, b = write(tmp_path / "a"), write(tmp_path / "b")
    for name in ["results.json", "metrics.jsonl", "fig.png", "fig.pdf"]:
        assert a.file(name).read_bytes() == b.file(name).read_bytes(), name
    assert json.loads(a.file("results.json").read_text()) == {"b": 1, "z": [1.0, 2.0]}
    assert len(a.file("metrics.jsonl").read_text().splitlines()) == 2


def test_written_files_get_the_usual_permissions(tmp_path):
    path = atomic_write_text(tmp_path / "r.json", "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_rundir_rejects_a_file(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(ValueError, match="out"):
        RunDir(f)


# ---------------------------------------------------------------------------------- reporting


def test_mean_std_and_pooling_match_the_union():
    from ntkdyn.runs import mean_std, pool_mean_std

    rng = np.random.default_rng(0)
    groups = [rng.normal(size=n) for n in (3, 1, 5)]
    union = np.concatenate(groups)
    assert mean_std(union) == pytest.approx((union.mean(), union.std()), rel=1e-12)
    assert mean_std([2.0, 4.0], ddof=1) == pytest.approx((3.0, np.sqrt(2.0)))
    assert mean_std([2.0], ddof=1) == (2.0, 0.0)
    pooled = pool_mean_std((len(g), g.mean(), g.std()) for g in groups)
    assert pooled == pytest.approx((union.mean(), union.std()), rel=1e-12)
    with pytest.raises(ValueError, match="values"):
        mean_std([])
    with pytest.raises(ValueError, match="parts"):
        pool_mean_std([(0, 1.0, 0.0)])


def test_format_and_markdown_table():
    from ntkdyn.runs import format_mean_std, markdown_table

    assert format_mean_std(0.7012, 0.0061) == "70.1 ± 0.6"
    assert format_mean_std(0.7012) == "70.1"
    assert format_mean_std(None) == "—" and format_mean_std(float("nan"), 0.1) == "—"
    assert format_mean_std(1.23456, 0.5, scale=1, digits=2) == "1.23 ± 0.50"
    lines = markdown_table(["a", "b"], [[1, "x"], ["y", 2.5]])
    assert lines == ["| a | b |", "| --- | --- |", "| 1 | x |", "| y | 2.5 |"]
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        markdown_table(["a", "b"], [[1]])


def test_step_progress_prints_whole_lines():
    import io

    from ntkdyn.runs import StepProgress

    stream = io.StringIO()
    bar = StepProgress("job", 10, unit="steps", stream=stream, enabled=True, every=0.0)
    for _ in range(4):
        bar.advance(2)
    bar.close("done")
    lines = stream.getvalue().splitlines()
    assert stream.getvalue().endswith("\n") and "\r" not in stream.getvalue()
    assert lines[0].startswith("job: 2/10 steps (20 %)")
    assert lines[-1].startswith("job: 10/10 steps (100 %)") and lines[-1].endswith("; done")
    quiet = io.StringIO()
    StepProgress("job", 3, stream=quiet, enabled=False).close()
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError, match="total"):
        StepProgress("job", 0)


def _fake_run(path, first, values, probe, *, seed=0):
    run = RunDir(path)
    run.write_config({"seed": seed, "first_restart": first, "restarts": len(values)})
    acc = np.asarray(values)
    run.write_results(
        {
            "data": {"n": 10},
            "methods": {
                "a": {
                    "acc": list(acc),
                    "acc_mean": acc.mean(),
                    "acc_std": acc.std(),
                    "probe": {"p": probe[0], "p_std": probe[1]},
                    "label": "A",
                }
            },
        }
    )
    run.write_metrics([{"method": "a", "step": s, "loss": float(acc.mean() + s)} for s in (0, 10)])
    (run.path / "figure.png").write_bytes(b"png")
    return run.path


def test_merge_runs_concatenates_pools_and_weights(tmp_path):
    from ntkdyn.runs import merge_runs

    b = _fake_run(tmp_path / "b", 2, [0.5], (0.4, 0.0))
    a = _fake_run(tmp_path / "a", 0, [0.1, 0.3], (0.2, 0.1))
    merged = merge_runs(
        [b, a],
        tmp_path / "m",
        concat=("acc",),
        match=("seed",),
        record_keys=("method", "step"),
        copy=("figure.png",),
    )
    m = json.loads((tmp_path / "m" / "results.json").read_text())["methods"]["a"]
    assert m["acc"] == [0.1, 0.3, 0.5] and m["label"] == "A"
    assert (m["acc_mean"], m["acc_std"]) == pytest.approx((0.3, np.std([0.1, 0.3, 0.5])))
    # probe: two restarts at 0.2 ± 0.1 ({0.1, 0.3}) and one at 0.4 → {0.1, 0.3, 0.4}
    assert (m["probe"]["p"], m["probe"]["p_std"]) == pytest.approx(
        (np.mean([0.1, 0.3, 0.4]), np.std([0.1, 0.3, 0.4]))
    )
    records = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["method"], r["step"]) for r in records] == [("a", 0), ("a", 10)]
    assert records[0]["loss"] == pytest.approx((2 * 0.2 + 1 * 0.5) / 3)
    assert merged.config["restarts"] == 3 and merged.config["first_restart"] == 0
    assert [p["first_restart"] for p in merged.config["merged_from"]] == [0, 2]
    assert (tmp_path / "m" / "figure.png").read_bytes() == b"png"


def test_merge_runs_refuses_before_writing(tmp_path):
    from ntkdyn.runs import merge_runs

    a = _fake_run(tmp_path / "a", 0, [0.1, 0.3], (0.2, 0.1))
    gap = _fake_run(tmp_path / "gap", 3, [0.5], (0.4, 0.0))
    over = _fake_run(tmp_path / "over", 1, [0.5], (0.4, 0.0))
    other = _fake_run(tmp_path / "other", 2, [0.5], (0.4, 0.0), seed=1)
    (tmp_path / "empty").mkdir()
    cases = [
        ([a], "two or more"),
        ([a, gap], "leave restarts 2–2 out"),
        ([a, over], "overlap"),
        ([a, other], "differ in seed"),
        ([a, tmp_path / "empty"], "missing config.json"),
    ]
    for dirs, match in cases:
        with pytest.raises(ValueError, match=match):
            merge_runs(dirs, tmp_path / "out", concat=("acc",), match=("seed",))
        assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--out"):
        merge_runs([a, gap], a, concat=("acc",))


def test_restart_summary_versus_published_and_restarts_label():
    from ntkdyn.runs import restart_summary, restarts_label, versus_published_table

    ev = {
        "train_acc": np.array([0.5, 0.7]),
        "val_acc": np.array([0.2, 0.4]),
        "probe": {"gray": {"acc": np.array([0.1, 0.3]), "entropy": np.array([0.6, 0.6])}},
    }
    out = restart_summary(ev, keep=("train_acc",))
    assert out["train_acc"] == [0.5, 0.7] and "val_acc" not in out
    assert out["train_acc_mean"] == pytest.approx(0.6) and out["train_acc_std"] == pytest.approx(
        0.1
    )
    assert out["val_acc_mean"] == pytest.approx(0.3)
    assert out["probe"]["gray"] == pytest.approx(
        {"acc": 0.2, "acc_std": 0.1, "entropy": 0.6, "entropy_std": 0.0}
    )
    ours = {"a": {"train_acc_mean": 0.6, "train_acc_std": 0.1}, "b": {}}
    lines = versus_published_table(
        ours,
        {"a": {"train": (0.7, 0.01)}},
        [("train_acc", "train", "train acc")],
        labels={"a": "A"},
    )
    assert lines[0] == "| method | train acc (ours) | train acc (published) |"
    assert lines[2:] == ["| A | 60.0 ± 10.0 | 70.0 ± 1.0 |", "| b | — | — |"]
    assert restarts_label(0, 10) == "10" and restarts_label(5, 5) == "5 (restarts 5–9)"


def test_sweep_selection_and_svd_report():
    from ntkdyn.linalg import TruncatedSVD
    from ntkdyn.runs import svd_report, sweep_selection

    grid = [{"l2": 0.1}, {"l2": 1.0}, {"l2": 10.0}]
    points = [
        {**g, "val_acc_mean": v, "test_acc_mean": t, "train_acc_mean": 0.9}
        for g, v, t in zip(grid, (0.5, 0.7, 0.7), (0.6, 0.2, 0.8), strict=True)
    ]
    out = sweep_selection(points, grid)
    assert out["selected"] == {"l2": 1.0} and out["val_acc_mean"] == 0.7 and "l2" not in out
    assert out["test_domain_choice"] == {"l2": 10.0, "train_acc_mean": 0.9, "test_acc_mean": 0.8}
    assert out["sweep"] == points
    with pytest.raises(ValueError, match="points"):
        sweep_selection(points[:2], grid)
    rep = TruncatedSVD(
        np.eye(4)[:, :2], np.array([3.0, 1.0]), None, np.array([1e-7, 2e-6]), 5, True, 90
    )
    rec = svd_report(rep, seconds=1.5)
    assert (rec["n"], rec["k"], rec["converged"], rec["matvecs"], rec["seconds"]) == (
        4,
        2,
        True,
        90,
        1.5,
    )
    assert list(rec["s"]) == [3.0, 1.0] and list(rec["residuals"]) == [1e-7, 2e-6]


def test_seed_records_are_the_mean_and_std_over_seeds():
    from ntkdyn.runs import seed_records

    loss = np.array([[1.0, 0.5, 0.25], [3.0, 1.5, 0.75]], np.float32)
    outputs = np.zeros((2, 3, 4))  # recorded outputs: not a per-record scalar, left out
    recs = seed_records(
        {"loss": loss, "outputs": outputs}, [10, 20, 30], step_key="epoch", config="sd"
    )
    assert [r["epoch"] for r in recs] == [10, 20, 30] and all(r["config"] == "sd" for r in recs)
    assert recs[1]["loss"] == 1.0 and recs[1]["loss_std"] == 0.5 and "outputs" not in recs[0]
    with pytest.raises(ValueError, match="history"):
        seed_records({"loss": loss}, [10, 20])


def test_check_same_config_names_the_changed_fields(tmp_path):
    from ntkdyn.runs import check_same_config

    check_same_config(tmp_path / "config.json", {"lr": 0.1})  # nothing to compare yet
    RunDir(tmp_path).write_config({"lr": 0.1, "seed": 0, "workers": 8})
    check_same_config(
        tmp_path / "config.json", {"lr": 0.1, "seed": 0, "workers": 2}, ignore=["workers"]
    )
    with pytest.raises(ValueError, match=r"--resume: settings differ .* \(lr, seed\)"):
        check_same_config(tmp_path / "config.json", {"lr": 0.2, "seed": 1, "workers": 8})


def test_call_counter_advances_once_every_calls():
    import io

    from ntkdyn.runs import CallCounter, StepProgress

    bar = StepProgress("x", 6, stream=io.StringIO(), enabled=False)
    counter = CallCounter(bar, 3, 2)
    for _ in range(7):
        counter(None)
    assert bar.done == 4 and counter.count == 7
    with pytest.raises(ValueError, match="calls"):
        CallCounter(bar, 0, 1)


def test_check_writable_creates_and_probes_the_folder(tmp_path):
    from ntkdyn.errors import InputError
    from ntkdyn.runs.files import check_writable

    target = tmp_path / "a" / "b"
    assert check_writable(target) == target
    assert target.is_dir() and list(target.iterdir()) == []  # the probe file is gone
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(InputError, match=r"^--out: .* is a file, not a folder; choose"):
        check_writable(afile)
    with pytest.raises(InputError, match=r"^--dir: cannot write to /proc/forbidden \(.+\); choose"):
        check_writable("/proc/forbidden", flag="--dir")
    with pytest.raises(InputError, match="cannot write to"):
        check_writable(afile / "below")  # a file in the way of the parents
