"""One writer per run directory: a second process on the same ``--out`` is refused with the holder
named; a lock left by a killed process is taken over; a lock of another host is refused with how to
remove it; the lock is re-entrant within a process and released when the command ends."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from ntkdyn.errors import InputError, OutputError
from ntkdyn.runs import LOCK_NAME, RunDir, command_scope, release_run_locks
from ntkdyn.runs.files import check_writable

CMD = [sys.executable, "-c", "import sys; from ntkdyn.cli import main; sys.exit(main())"]
SIMULATE = ["simulate", "--s", "6", "2", "--delta", "0.5", "--quick"]


def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    env.pop("NTKDYN_DEBUG", None)
    return env


def _holder(out, *, ready):
    """A process that takes ``out``'s lock, says so through ``ready``, then waits to be killed."""
    code = textwrap.dedent(
        f"""
        import pathlib, time
        from ntkdyn.runs import RunDir
        RunDir({str(out)!r})
        pathlib.Path({str(ready)!r}).write_text("locked")
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=_env())
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture(autouse=True)
def _no_lock_left():
    yield
    release_run_locks()


def test_rundir_is_reentrant_and_released_on_close(tmp_path):
    a = RunDir(tmp_path / "run")
    b = RunDir(tmp_path / "run")  # a command may construct it more than once
    info = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
    a.close()
    assert (tmp_path / "run" / LOCK_NAME).exists()  # b still holds it
    b.close()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with RunDir(tmp_path / "run") as c:
        c.write_text("x.txt", "x")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["x.txt"]


def test_check_writable_locks_only_inside_a_command(tmp_path):
    check_writable(tmp_path / "a")
    assert not (tmp_path / "a" / LOCK_NAME).exists()  # a plain probe outside a command
    with command_scope():
        check_writable(tmp_path / "b")
        RunDir(tmp_path / "b")  # the same process: re-entrant
        assert (tmp_path / "b" / LOCK_NAME).exists()
    assert not (tmp_path / "b" / LOCK_NAME).exists()  # released when the command ends


@pytest.mark.e2e
def test_a_second_process_on_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _holder(out, ready=tmp_path / "ready")
    try:
        proc = subprocess.run(
            [*CMD, *SIMULATE, "--out", str(out)],
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip()
        assert line.count("\n") == 0, line
        assert line.startswith(f"ntkdyn simulate: error: --out: {out} is in use by process ")
        assert f"process {holder.pid} on {socket.gethostname()} (started " in line
        assert line.endswith("wait for it or choose another --out")
        assert not (out / "results.json").exists()  # refused before computing
        with pytest.raises(OutputError, match=f"in use by process {holder.pid}"):
            RunDir(out)  # the Python API is refused too
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock is stale and the next writer takes it over, with a note
    run = RunDir(out)
    assert f"taking over {out / LOCK_NAME}, left by process {holder.pid}" in capsys.readouterr().err
    run.close()


@pytest.mark.e2e
@pytest.mark.slow
def test_two_racing_runs_one_writes_one_is_refused(tmp_path):
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            [*CMD, *SIMULATE, "--out", str(out)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(rc for rc, _ in results)
    # either both finished one after the other, or one was refused while the other ran
    assert codes in ([0, 0], [0, 2]), results
    for rc, err in results:
        if rc == 2:
            assert "--out: " in err and "is in use by process" in err, err
    assert json.loads((out / "results.json").read_text())  # whole, never torn
    assert not (out / LOCK_NAME).exists()


def _write_lock(out, **info):
    out.mkdir(parents=True, exist_ok=True)
    (out / LOCK_NAME).write_text(json.dumps({"started": "2020-01-01 00:00:00", **info}))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(out, pid=dead, host=socket.gethostname(), time=time.time() - 60)
    run = RunDir(out)
    err = capsys.readouterr().err
    assert f"taking over {out / LOCK_NAME}, left by process {dead} on {socket.gethostname()}" in err
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    run.close()


@pytest.mark.e2e
def test_a_lock_of_a_live_process_is_not_taken_over(tmp_path):
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        _write_lock(out, pid=sleeper.pid, host=socket.gethostname(), time=time.time())
        with pytest.raises(InputError, match=f"in use by process {sleeper.pid}"):
            RunDir(out)
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


@pytest.mark.e2e
def test_a_reused_process_id_does_not_hold_the_lock(tmp_path, capsys):
    """The lock's process id now belongs to a younger process (here: this one's parent is older,
    so use a process started after the lock was written)."""
    out = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        _write_lock(out, pid=sleeper.pid, host=socket.gethostname(), time=time.time() - 3600)
        if not os.path.exists(f"/proc/{sleeper.pid}/stat"):
            pytest.skip("process start times need /proc")
        RunDir(out).close()
        assert "taking over" in capsys.readouterr().err
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
    out = tmp_path / "run"
    _write_lock(out, pid=12345, host="node-17.cluster", time=time.time())
    with pytest.raises(OutputError) as info:
        RunDir(out)
    text = str(info.value)
    assert text.startswith(f"--out: {out} is in use by process 12345 on node-17.cluster (started ")
    assert f"if that run is over (or node-17.cluster is gone), remove {out / LOCK_NAME}" in text


def test_an_unreadable_lock_file_without_a_holder_is_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_bytes(b"\x00garbage")
    RunDir(out).close()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.e2e
def test_a_command_in_process_releases_its_lock(tmp_path):
    from ntkdyn.cli import main

    out = tmp_path / "run"
    assert main([*SIMULATE, "--out", str(out)]) == 0
    assert not (out / LOCK_NAME).exists()  # nothing left behind to block the next run
