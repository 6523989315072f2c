"""Run directories and atomic files: the one place that writes files.

Every file is written to a temporary file in the same directory, then ``os.replace``d, so an
interrupted run never leaves a half-written file; JSON has sorted keys and a fixed float
representation (same seed, same bytes).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ntkdyn.errors import InputError


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
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; results get the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def check_writable(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Make sure a run can be written to ``path`` before any computing: create it, probe-write.

    Creates the folder (with parents) if missing, writes and removes a temporary file in it. Call
    it after the settings are validated and before the work starts, so a run never computes for
    minutes and then fails to save.

    Args:
        path: the output folder.
        flag: how the user named it, for the error (``--out``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: naming ``flag`` and the path when it exists as a file, or cannot be created
            or written (with the system's reason).
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
        raise InputError(
            f"{flag}: cannot write to {path} ({reason}); choose a writable folder"
        ) from None
    return path


class RunDir:
    """A results directory with atomic writers for configs, metrics, results, figures and summaries.

    Args:
        path: the directory; created (with parents) if missing.

    Raises:
        ValueError: if ``path`` exists and is not a directory.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(
                f"out: {str(self.path)!r} exists and is not a directory; pass a directory path"
            )
        self.path.mkdir(parents=True, exist_ok=True)

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
