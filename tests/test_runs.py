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
