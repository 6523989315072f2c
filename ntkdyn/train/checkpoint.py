"""Atomic training checkpoints: a PyTree of arrays plus JSON metadata in one ``.npz`` file.

A checkpoint is written to a temporary file and renamed into place (:func:`ntkdyn.runs.atomic_write_bytes`),
so a run killed at any instant leaves either the previous checkpoint or the new one, never a torn
file. Leaves are stored in ``jax.tree`` flattening order with their key paths; restoring checks
them against a template tree (same structure, shapes and dtypes), so a checkpoint from another
model or optimiser is refused with a message instead of being mis-loaded. The metadata (epoch,
position in the epoch, history, best model so far, …) is JSON, stored in the same file.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntkdyn.runs import atomic_write_bytes, to_jsonable

__all__ = [
    "CheckpointHook",
    "save_checkpoint",
    "latest_checkpoint",
    "restore_checkpoint",
    "list_checkpoints",
]

_NAME = re.compile(r"^ckpt_(\d{10})\.npz$")


def _host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)  # replicated state: every shard is the whole array
    return np.asarray(x)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, oldest step first.

    Args:
        directory: checkpoint folder.

    Returns:
        Paths (empty if the folder is absent or holds none).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    tree: Any,
    metadata: dict[str, Any] | None = None,
    *,
    keep: int = 2,
) -> Path:
    """Write ``tree`` and ``metadata`` as ``directory/ckpt_<step>.npz`` atomically; keep the newest ``keep``.

    Only process 0 writes in a multi-host run (the state is replicated).

    Args:
        directory: checkpoint folder (created if missing).
        step: global step, part of the file name.
        tree: PyTree of arrays (e.g. a TrainState).
        metadata: JSON-serialisable extras.
        keep: how many checkpoints to keep (>= 1).

    Returns:
        The checkpoint path.
    """
    if keep < 1:
        raise ValueError(f"keep: must be >= 1, got {keep}")
    directory = Path(directory)
    path = directory / f"ckpt_{int(step):010d}.npz"
    leaves_with_path, _ = jax.tree_util.tree_flatten_with_path(tree)
    arrays = {f"leaf_{i:05d}": _host(v) for i, (_, v) in enumerate(leaves_with_path)}
    meta = {
        "step": int(step),
        "paths": [jax.tree_util.keystr(p) for p, _ in leaves_with_path],
        "metadata": to_jsonable(metadata or {}),
    }
    arrays["__meta__"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    if jax.process_index() == 0:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        for old in list_checkpoints(directory)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``directory``.

    Args:
        directory: checkpoint folder.

    Returns:
        Its path, or None when there is none.
    """
    found = list_checkpoints(directory)
    return found[-1] if found else None


def restore_checkpoint(path: str | os.PathLike, template: Any) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint into the structure of ``template``.

    Args:
        path: a checkpoint file.
        template: a PyTree with the expected structure, shapes and dtypes (e.g. a fresh TrainState).

    Returns:
        ``(tree, metadata)`` with numpy leaves.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a checkpoint, or its leaves do not match ``template``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            leaves = [data[f"leaf_{i:05d}"] for i in range(len(meta["paths"]))]
    except (KeyError, OSError, ValueError) as exc:
        raise ValueError(
            f"checkpoint {path}: unreadable ({exc}); delete it to start over"
        ) from None
    expected, treedef = jax.tree_util.tree_flatten_with_path(template)
    paths = [jax.tree_util.keystr(p) for p, _ in expected]
    if paths != meta["paths"]:
        raise ValueError(
            f"checkpoint {path}: its structure differs from this run's (another model, method or optimiser?); "
            "use a fresh --out or delete the checkpoints"
        )
    for p, (_, t), leaf in zip(paths, expected, leaves, strict=True):
        if (
            tuple(np.shape(t)) != leaf.shape
            or np.dtype(getattr(t, "dtype", leaf.dtype)) != leaf.dtype
        ):
            raise ValueError(
                f"checkpoint {path}: leaf {p} is {leaf.dtype}{list(leaf.shape)}, "
                f"this run expects {np.dtype(t.dtype)}{list(np.shape(t))}"
            )
    return jax.tree_util.tree_unflatten(treedef, leaves), meta["metadata"]


class CheckpointHook:
    """A record hook that saves the loop's state every ``every`` steps as ``directory/ckpt_<step>.npz``.

    Called with a :class:`ntkdyn.train.hooks.Record`, it writes ``record.state`` (the whole training
    state, optimizer included) with ``metadata()`` (the loop's position and history, what a resumed
    run needs) through :func:`save_checkpoint`. The loop decides when: a minibatch loop calls it at
    the steps ``every`` divides inside an epoch and after each epoch's evaluation.

    Args:
        directory: checkpoint folder (created on the first save).
        every: steps between checkpoints (≥ 1).
        metadata: ``() -> dict`` of JSON values saved beside the state.
        keep: how many checkpoints to keep.

    Raises:
        ValueError: ``every`` is not an integer ≥ 1.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        every: int,
        metadata: Callable[[], dict[str, Any]] = dict,
        *,
        keep: int = 2,
    ):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(
                f"every: expected an integer >= 1 (steps between checkpoints), got {every!r}"
            )
        self.directory = Path(directory)
        self.every = every
        self.metadata = metadata
        self.keep = keep

    def __call__(self, record: Any) -> None:
        save_checkpoint(self.directory, record.step, record.state, self.metadata(), keep=self.keep)

    def __repr__(self) -> str:
        return f"CheckpointHook({str(self.directory)!r}, every={self.every})"
