"""Run directories and atomic files: the one place that writes files.

Every file is written to a temporary file in the same directory, flushed to disk and then
``os.replace``d, so an interrupted run, a full disk or a failing write never leaves a half-written
file (the previous one stays intact); JSON has sorted keys and a fixed float representation (same
seed, same bytes). A write that the system refuses for a reason of the user's environment (disk
full, file too large, read-only file system, no permission) raises
:class:`~ntkdyn.errors.OutputError` naming the file and the reason.

One writer per run directory: :class:`RunDir` (and :func:`check_writable` while a command runs)
holds the directory's lock file ``.lock`` — an ``fcntl.flock`` on it, and the holder's process id,
host and start time in it. A second process that wants the same directory is refused with the
holder named; a lock left by a process that was killed is taken over (same host, process gone,
with a note on stderr); a lock of another host is refused with how to remove it. The lock is
re-entrant within a process, and released when the command ends (:func:`command_scope`), on
:meth:`RunDir.close`, or at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import enum
import errno
import json
import math
import os
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ntkdyn.errors import InputError, OutputError


def to_jsonable(obj: Any) -> Any:
    """Convert arrays, scalars, dataclasses, enums and paths into plain JSON values.

    Non-finite floats become ``None`` (JSON has no NaN); arrays become nested lists.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if hasattr(obj, "__array__"):  # numpy and jax arrays
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"to_jsonable: cannot convert object of type {type(obj).__name__}")


#: errno of a failed write that the user's environment causes → what to do about it.
_ENVIRONMENT: dict[int, str] = {
    errno.ENOSPC: "free space on that disk or choose another --out",
    errno.EDQUOT: "free space within your quota or choose another --out",
    errno.EFBIG: "the file exceeds the file-size limit (ulimit -f) or the file system's; raise it "
    "or choose another --out",
    errno.EROFS: "the file system is read-only; choose a writable --out",
    errno.EACCES: "no permission to write there; choose a writable --out",
    errno.EPERM: "no permission to write there; choose a writable --out",
}


def _reason(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory + rename).

    Args:
        path: destination; parent directories are created.
        data: the bytes.

    Returns:
        ``path`` as a :class:`~pathlib.Path`. On any failure the previous file (if any) is untouched
        and no temporary file is left behind.

    Raises:
        OutputError: the system refused the write for a reason of the environment (disk full,
            quota, file too large, read-only file system, no permission), naming ``path``; the
            other ``OSError`` exceptions propagate unchanged.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results get the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT:
            raise OutputError(
                f"{path}: cannot write ({_reason(exc)}); {_ENVIRONMENT[exc.errno]}"
            ) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically.

    Args:
        path: destination.
        text: the text.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` (converted by :func:`to_jsonable`) as indented, key-sorted JSON, atomically.

    Args:
        path: destination.
        obj: any value :func:`to_jsonable` accepts (arrays, dataclasses, mappings, scalars).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


# ------------------------------------------------------------------ one writer per run directory

#: Name of the lock file inside a run directory.
LOCK_NAME = ".lock"
_HOST = socket.gethostname()
_GUARD = threading.RLock()
_SCOPES: list[set[str]] = []  # directories first locked inside each running command


@dataclasses.dataclass
class _Held:
    fd: int
    path: Path
    count: int
    pid: int


_HELD: dict[str, _Held] = {}  # real path of a run directory → the lock this process holds on it


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: the file system has no such locks."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the pid and host in the file decide
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, EINVAL: no flock here
        return None
    return True


def _read_info(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8")) if raw.strip() else {}
    except (OSError, ValueError):
        return {"unreadable": True}
    return info if isinstance(info, dict) else {"unreadable": True}


def _started(info: Mapping[str, Any]) -> str:
    return str(info.get("started") or "at an unknown time")


def _alive(pid: int, since: float | None) -> bool:
    """Whether process ``pid`` of this host runs and is older than ``since`` (a reused id is not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        pass
    if since is None:
        return True
    try:  # Linux: the process's start time; a process started after the lock reuses the id
        with open(f"/proc/{pid}/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK") <= since + 2.0
    except (OSError, ValueError, IndexError, StopIteration):
        return True


def _in_use(directory: Path, info: Mapping[str, Any], flag: str) -> OutputError:
    pid, host = info.get("pid", "?"), info.get("host", "an unknown host")
    text = (
        f"{flag}: {directory} is in use by process {pid} on {host} (started {_started(info)}); "
        f"wait for it or choose another {flag}"
    )
    if host != _HOST:
        text += f"; if that run is over (or {host} is gone), remove {directory / LOCK_NAME}"
    return OutputError(text)


def _take(directory: Path, flag: str) -> int:
    """Open, flock and fill in ``directory/.lock``; the open descriptor holds the lock."""
    path = directory / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise OutputError(
                f"{flag}: cannot write to {directory} ({_reason(exc)}); choose a writable folder"
            ) from None
        keep = False
        try:
            locked = _flock(fd)
            if locked is False:
                raise _in_use(directory, _read_info(fd), flag)
            try:  # the holder may have removed the file between our open and our lock
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    continue
            except FileNotFoundError:
                continue
            info = _read_info(fd)
            pid, host = info.get("pid"), info.get("host")
            if info and not info.get("unreadable") and isinstance(pid, int):
                if host != _HOST:
                    raise _in_use(directory, info, flag)
                since = info.get("time") if isinstance(info.get("time"), (int, float)) else None
                if pid != os.getpid() and _alive(pid, since):
                    raise _in_use(directory, info, flag)
                print(
                    f"ntkdyn: note: {flag}: taking over {path}, left by process {pid} on {host} "
                    f"(started {_started(info)}), which is no longer running",
                    file=sys.stderr,
                )
            now = datetime.datetime.now().astimezone()
            mine = {
                "pid": os.getpid(),
                "host": _HOST,
                "started": now.isoformat(sep=" ", timespec="seconds"),
                "time": now.timestamp(),
                "command": " ".join(sys.argv)[:500],
            }
            data = (json.dumps(mine, sort_keys=True) + "\n").encode("utf-8")
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
                os.fsync(fd)
            except OSError as exc:
                if exc.errno in _ENVIRONMENT:
                    raise OutputError(
                        f"{path}: cannot write ({_reason(exc)}); {_ENVIRONMENT[exc.errno]}"
                    ) from None
                raise
            keep = True
            return fd
        finally:
            if not keep:
                os.close(fd)
    raise OutputError(f"{flag}: cannot lock {path}: it keeps being replaced; try again")


def acquire_run_lock(directory: str | os.PathLike, flag: str = "--out") -> Path:
    """Make this process the one writer of ``directory``: hold ``directory/.lock``.

    Re-entrant: a process that holds the lock gets it again (counted). The lock file holds the
    process id, host and start time; it is ``flock``-ed while held. A lock whose holder is gone
    (same host, no such process, or a process id reused since) is taken over with a note on
    stderr; a lock held by a process of another host is refused, as the holder cannot be checked.

    Args:
        directory: the run directory (it must exist).
        flag: how the user named it, for messages (``--out``).

    Returns:
        The lock file's path.

    Raises:
        OutputError: the directory is in use by another process (its id, host and start time are
            named), or the lock file cannot be written.
    """
    directory = Path(directory)
    key = os.path.realpath(directory)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():
            held.count += 1
            return held.path
        if held is not None:  # inherited through fork: the parent's, not ours
            del _HELD[key]
            with contextlib.suppress(OSError):
                os.close(held.fd)
        fd = _take(directory, flag)
        _HELD[key] = _Held(fd, directory / LOCK_NAME, 1, os.getpid())
        if _SCOPES:
            _SCOPES[-1].add(key)
        return directory / LOCK_NAME


def _release(key: str) -> None:
    held = _HELD.pop(key, None)
    if held is None:
        return
    try:
        if held.pid == os.getpid():
            with contextlib.suppress(OSError):  # remove it only while it is still ours
                if os.stat(held.path).st_ino == os.fstat(held.fd).st_ino:
                    os.unlink(held.path)
    finally:
        with contextlib.suppress(OSError):
            os.close(held.fd)


def release_run_lock(directory: str | os.PathLike, *, all_holds: bool = False) -> None:
    """Give back one hold (or ``all_holds``) of this process's lock on ``directory``.

    The lock file is removed when the last hold is given back. Nothing happens if this process
    holds no lock there.
    """
    key = os.path.realpath(Path(directory))
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if all_holds or held.count <= 0:
            _release(key)


def release_run_locks() -> None:
    """Give back every run-directory lock this process holds (called at exit)."""
    with _GUARD:
        for key in list(_HELD):
            _release(key)


atexit.register(release_run_locks)


@contextlib.contextmanager
def command_scope():
    """The span of one command: run directories locked inside it are released when it ends.

    The command line runs every command inside it; there :func:`check_writable` also takes the
    output folder's lock, so a second run on the same ``--out`` is refused before it computes.
    """
    with _GUARD:
        _SCOPES.append(set())
    try:
        yield
    finally:
        with _GUARD:
            for key in _SCOPES.pop():
                _release(key)


def check_writable(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure a run can be written to ``path`` before any computing: create it, probe-write.

    Creates the folder (with parents) if missing, writes and removes a temporary file in it. Call
    it after the settings are validated and before the work starts, so a run never computes for
    minutes and then fails to save. While a command runs (:func:`command_scope`) it also takes the
    folder's lock (:func:`acquire_run_lock`), so a second run on the same folder is refused here.

    Args:
        path: the output folder.
        flag: how the user named it, for the error (``--out``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: naming ``flag`` and the path when it exists as a file, or cannot be created
            or written (with the system's reason, as :class:`~ntkdyn.errors.OutputError`), or is
            in use by another run.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag}: {str(path)!r} is a file, not a folder; choose a writable folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(
            f"{flag}: cannot write to {path} ({reason}); choose a writable folder"
        ) from None
    if _SCOPES:  # a command is running: it is about to write here, so it becomes the one writer
        acquire_run_lock(path, flag)
    return path


class RunDir:
    """A results directory with atomic writers for configs, metrics, results, figures and summaries.

    The directory has one writer: constructing a ``RunDir`` takes its lock
    (:func:`acquire_run_lock`; re-entrant within a process), held until :meth:`close`, the end of
    a ``with`` block, the end of the command, or the process's exit.

    Args:
        path: the directory; created (with parents) if missing.
        lock: take the directory's lock (the default).
        flag: how the user named the directory, for messages.

    Raises:
        ValueError: if ``path`` exists and is not a directory.
        OutputError: the directory cannot be created or is in use by another process.
    """

    def __init__(self, path: str | os.PathLike, *, lock: bool = True, flag: str = "--out"):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(
                f"out: {str(self.path)!r} exists and is not a directory; pass a directory path"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(
                f"{flag}: cannot create {self.path} ({_reason(exc)}); choose a writable folder"
            ) from None
        self._locked = False
        if lock:
            acquire_run_lock(self.path, flag)
            self._locked = True

    def close(self) -> None:
        """Give back this object's hold of the directory's lock (the files stay)."""
        if self._locked:
            self._locked = False
            release_run_lock(self.path)

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, name: str) -> Path:
        """Path of ``name`` inside the run directory."""
        return self.path / name

    def write_config(self, config: Any) -> Path:
        """Write the resolved configuration to ``config.json``."""
        return atomic_write_json(self.file("config.json"), config)

    def write_results(self, results: Any, name: str = "results.json") -> Path:
        """Write the final results to ``results.json`` (or ``name``)."""
        return atomic_write_json(self.file(name), results)

    def write_json(self, name: str, obj: Any) -> Path:
        """Write any JSON file in the run directory."""
        return atomic_write_json(self.file(name), obj)

    def write_text(self, name: str, text: str) -> Path:
        """Write a text file (e.g. ``summary.md``) in the run directory."""
        return atomic_write_text(self.file(name), text)

    def write_metrics(
        self, records: Iterable[Mapping[str, Any]], name: str = "metrics.jsonl"
    ) -> Path:
        """Write metrics over time as JSON lines (one record per line), atomically."""
        lines = [json.dumps(to_jsonable(r), sort_keys=True, allow_nan=False) for r in records]
        return atomic_write_text(self.file(name), "".join(line + "\n" for line in lines))

    def write_npz(self, name: str, **arrays: Any) -> Path:
        """Write arrays to a compressed ``.npz`` file, atomically."""
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
        return atomic_write_bytes(self.file(name), buf.getvalue())

    def save_figure(
        self, fig: Any, stem: str, *, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 150
    ) -> list[Path]:
        """Save a matplotlib figure as ``stem.png`` and ``stem.pdf`` (atomically) and close it.

        PDF metadata carries no creation date, so the same figure gives the same bytes.
        """
        import io

        import matplotlib.pyplot as plt

        paths = []
        for fmt in formats:
            buf = io.BytesIO()
            metadata = (
                {"CreationDate": None}
                if fmt == "pdf"
                else ({"Software": None} if fmt == "png" else None)
            )
            fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=metadata)
            paths.append(atomic_write_bytes(self.file(f"{stem}.{fmt}"), buf.getvalue()))
        plt.close(fig)
        return paths
