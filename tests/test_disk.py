"""Disk faults: a full disk, a file-size limit, a read-only or forbidden output folder end in one
line naming the file and the cause (exit status 2), and never leave a torn file: the previous
``config.json``, ``results.json``, metrics, arrays, figures and checkpoints stay whole, no temporary
file is left, and the previous checkpoint still resumes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ntkdyn.errors import OutputError
from ntkdyn.runs import RunDir, release_run_locks

FAULTS = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EFBIG: "File too large",
    errno.EROFS: "Read-only file system",
}
POINTS = ["write", "fsync", "replace"]


@pytest.fixture(autouse=True)
def _no_lock_left():
    yield
    release_run_locks()


def _inject(monkeypatch, point: str, code: int) -> None:
    """Make the next atomic write fail at ``point`` with ``code`` (half the bytes written first)."""
    error = OSError(code, os.strerror(code))
    if point == "write":
        real = os.fdopen

        class Torn:
            def __init__(self, fh):
                self.fh = fh

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.fh.close()

            def write(self, data):
                self.fh.write(data[: len(data) // 2])
                self.fh.flush()
                raise error

        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Torn(real(fd, *a, **k)))
    else:

        def fail(*args, **kwargs):
            raise error

        monkeypatch.setattr(os, point, fail)


def _figure(run, version):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, version])
    run.save_figure(fig, "fig", formats=("png",))


def _checkpoint(run, version):
    from ntkdyn.train.checkpoint import save_checkpoint

    save_checkpoint(run.file("checkpoints"), version, {"w": np.full(3, float(version))}, keep=2)


#: file name → how a run writes its version ``v`` (the checkpoint's name carries the step).
WRITES = {
    "config.json": lambda run, v: run.write_config({"version": v, "lr": 0.1}),
    "results.json": lambda run, v: run.write_results({"version": v, "acc": [0.5, 0.75]}),
    "metrics.jsonl": lambda run, v: run.write_metrics([{"step": s, "v": v} for s in range(3)]),
    "arrays.npz": lambda run, v: run.write_npz("arrays.npz", z=np.full(4, v)),
    "fig.png": _figure,
    "ckpt_0000000002.npz": _checkpoint,
}


def _snapshot(root) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("code", sorted(FAULTS), ids=[errno.errorcode[c] for c in sorted(FAULTS)])
@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("name", sorted(WRITES))
def test_a_failed_write_names_the_file_and_keeps_the_previous_one(
    tmp_path, monkeypatch, name, point, code
):
    """Every kind of file × where the write fails × why: one fault each, nothing lost."""
    run = RunDir(tmp_path / "run")
    WRITES[name](run, 1)
    before = _snapshot(run.path)
    with monkeypatch.context() as m:
        _inject(m, point, code)
        with pytest.raises(OutputError) as info:
            WRITES[name](run, 2)
    text = str(info.value)
    assert name in text and f"cannot write ({FAULTS[code]})" in text and "\n" not in text
    assert _snapshot(run.path) == before  # the previous file whole, no temporary file left
    WRITES[name](run, 2)  # the fault gone, the same write succeeds
    assert _snapshot(run.path) != before


def test_the_previous_checkpoint_still_resumes_after_a_failed_save(tmp_path, monkeypatch):
    from ntkdyn.train.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint

    folder = tmp_path / "checkpoints"
    state = {"w": np.arange(5.0), "step": np.int32(10)}
    save_checkpoint(folder, 10, state, {"epoch": 1})
    with monkeypatch.context() as m:
        _inject(m, "write", errno.ENOSPC)
        with pytest.raises(OutputError, match=r"ckpt_0000000020\.npz: cannot write \(No space"):
            save_checkpoint(folder, 20, {"w": np.arange(5.0) + 1, "step": np.int32(20)})
    assert [p.name for p in folder.iterdir()] == ["ckpt_0000000010.npz"]
    tree, meta = restore_checkpoint(latest_checkpoint(folder), state)
    np.testing.assert_array_equal(tree["w"], state["w"])
    assert int(tree["step"]) == 10 and meta["epoch"] == 1


@pytest.mark.e2e
def test_a_file_size_limit_is_a_clear_error_in_a_real_process(tmp_path):
    """RLIMIT_FSIZE makes write() fail with EFBIG (SIGXFSZ ignored): the real system call fails."""
    target = tmp_path / "results.json"
    target.write_text('{"previous": true}\n')
    code = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        from ntkdyn.runs import atomic_write_bytes
        from ntkdyn.errors import OutputError
        try:
            atomic_write_bytes({str(target)!r}, b"x" * 1_000_000)
        except OutputError as exc:
            print(exc, file=sys.stderr)
            sys.exit(2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{target}: cannot write (File too large);" in proc.stderr
    assert target.read_text() == '{"previous": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.e2e
def test_a_full_disk_ends_a_command_in_one_line_and_keeps_the_previous_results(
    tmp_path, monkeypatch, capsys
):
    from ntkdyn.cli import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"previous": true}\n')
    real_replace = os.replace

    def full(src, dst, *args, **kwargs):
        if str(dst).endswith("results.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full)
    argv = ["simulate", "--s", "6", "2", "--delta", "0.5", "--quick", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"ntkdyn simulate: error: {out / 'results.json'}: cannot write (No space")
    assert "free space on that disk or choose another --out" in err
    assert (out / "results.json").read_text() == '{"previous": true}\n'
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.e2e
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_a_read_only_out_is_refused_before_computing(tmp_path, monkeypatch, capsys, code):
    import tempfile

    from ntkdyn.cli import main

    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    out = tmp_path / "run"
    argv = ["simulate", "--s", "6", "2", "--delta", "0.5", "--quick", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"ntkdyn simulate: error: --out: cannot write to {out} ({os.strerror(code)}); "
        "choose a writable folder\n"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind root")
def test_a_folder_without_write_permission_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(
            OutputError, match=r"--out: cannot write to .*run \(Permission denied\)"
        ):
            RunDir(out)
    finally:
        out.chmod(0o755)
