"""Atomic training checkpoints: a PyTree of arrays plus JSON metadata in one ``.npz`` file.

A checkpoint is written to a temporary file and renamed into place (:func:`ntkdyn.runs.atomic_write_bytes`),
so a run killed at any instant leaves either the previous checkpoint or the new one, never a torn
file. Leaves are stored in ``jax.tree`` flattening order with their key paths; restoring checks
them against a template tree (same structure, shapes and dtypes), so a checkpoint from another
model or optimiser is refused with a message instead of being mis-loaded. The metadata (epoch,
position in the epoch, history, best model so far, …) is JSON, stored in the same file.

Resumable runs: a :class:`Checkpoints` value tells a loop where to save, how often and whether
to continue (:func:`ntkdyn.train.fullbatch.train_fullbatch` saves its whole carry, history and
hook records between compiled chunks; :class:`KrylovCheckpoints` saves the block Krylov state of
:func:`ntkdyn.truncated_svd`), so that a run killed at any instant and resumed ends with exactly
the numbers of an uninterrupted one. :func:`resumable` is the command-line side: the run folder's
checks, ``--resume``, and Ctrl-C / SIGTERM (:mod:`ntkdyn.runs.resume`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntkdyn.runs import atomic_write_bytes, to_jsonable
from ntkdyn.runs.resume import stop_requested

__all__ = [
    "CheckpointHook",
    "Checkpoints",
    "KrylovCheckpoints",
    "read_checkpoint",
    "resumable",
    "save_checkpoint",
    "latest_checkpoint",
    "restore_checkpoint",
    "restore_state",
    "saved_arrays",
    "hook_states",
    "restore_hook_states",
    "ChunkCheckpoints",
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
        _crash_point(path, buf.getvalue())
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
    stored, metadata = read_checkpoint(path)
    meta = {"paths": list(stored), "metadata": metadata}
    leaves = list(stored.values())
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


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every leaf of a checkpoint by its key path, without a template, and its metadata.

    Args:
        path: a checkpoint file.

    Returns:
        ``(leaves, metadata)``: ``leaves`` maps ``jax.tree_util.keystr`` paths to NumPy arrays, in
        the saved tree's flattening order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["__meta__"]).decode())
            leaves = {p: data[f"leaf_{i:05d}"] for i, p in enumerate(meta["paths"])}
    except (KeyError, OSError, ValueError) as exc:
        raise ValueError(
            f"checkpoint {path}: unreadable ({exc}); delete it to start over"
        ) from None
    return leaves, meta["metadata"]


#: Test hook: ``N`` makes the N-th checkpoint write of the process stop dead half-way through
#: its temporary file (``os._exit(137)``, as a SIGKILL would), to test that a resumed run ignores it.
CRASH_ENV = "NTKDYN_CHECKPOINT_CRASH"
#: Test hook: seconds to pause before each checkpoint write (a window to kill a run in).
PAUSE_ENV = "NTKDYN_CHECKPOINT_PAUSE"
_writes = [0]


def _crash_point(path: Path, data: bytes) -> None:
    pause = os.environ.get(PAUSE_ENV, "").strip()
    if pause:
        time.sleep(float(pause))
    when = os.environ.get(CRASH_ENV, "").strip()
    if not when:
        return
    _writes[0] += 1
    if _writes[0] != int(when):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.crash.tmp", "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        os.fsync(fh.fileno())
    os._exit(137)


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where a loop saves its state, how often, and whether it continues from there.

    A loop handed one saves its whole state (:func:`save_checkpoint`) every ``every`` steps (or
    iterations), when it ends, and when an interrupt is pending
    (:func:`ntkdyn.runs.resume.stop_requested`), after which it raises ``KeyboardInterrupt``. With
    ``resume`` it starts from the newest checkpoint in ``directory`` (from scratch when there is
    none); without it a folder that holds checkpoints is refused.

    Attributes:
        directory: the loop's checkpoint folder (created on the first save).
        every: steps between checkpoints (≥ 1); a loop rounds it up to its own chunk length.
        resume: continue from the newest checkpoint.
        keep: how many checkpoints to keep (≥ 1).

    Raises:
        ValueError: ``every`` or ``keep`` not an integer ≥ 1.
    """

    directory: Path
    every: int = 500
    resume: bool = False
    keep: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        for name in ("every", "keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")

    def stage(self, name: str) -> Checkpoints:
        """The checkpoints of one stage of a run (a method, a configuration) in a subfolder."""
        return dataclasses.replace(self, directory=self.directory / name)

    def latest(self) -> tuple[int, dict[str, np.ndarray], dict[str, Any]] | None:
        """``(step, leaves, metadata)`` of the newest checkpoint when resuming, else ``None``.

        Raises:
            ValueError: the folder holds checkpoints and ``resume`` is off, or one is unreadable.
        """
        path = latest_checkpoint(self.directory)
        if path is None:
            return None
        if not self.resume:
            raise ValueError(
                f"checkpoints: {self.directory} already holds checkpoints; resume them or "
                "choose another folder"
            )
        for torn in self.directory.glob(".ckpt_*.tmp"):  # a write that a kill cut short
            torn.unlink(missing_ok=True)
        leaves, meta = read_checkpoint(path)
        return int(meta["step"]), leaves, meta

    def save(self, step: int, state: Any, arrays: Mapping[str, Any], metadata: dict) -> Path:
        """Save ``state`` (a PyTree, under ``state``) and named ``arrays`` at ``step``."""
        tree = {"state": jax.device_get(state), "arrays": {k: _host(v) for k, v in arrays.items()}}
        return save_checkpoint(
            self.directory, step, tree, {"step": int(step), **metadata}, keep=self.keep
        )


def restore_state(leaves: Mapping[str, np.ndarray], template: Any, where: str) -> Any:
    """The ``state`` saved by :meth:`Checkpoints.save`, checked against ``template``.

    Raises:
        ValueError: naming ``where`` when the structure, a shape or a dtype differs.
    """
    expected, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for p, t in expected:
        key = "['state']" + jax.tree_util.keystr(p)
        leaf = leaves.get(key)
        if leaf is None or leaf.shape != tuple(np.shape(t)) or leaf.dtype != np.dtype(t.dtype):
            raise ValueError(
                f"checkpoint in {where}: leaf {jax.tree_util.keystr(p)} differs from this run's "
                "(another model, method or optimiser?); use a fresh --out"
            )
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def saved_arrays(leaves: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The named ``arrays`` saved by :meth:`Checkpoints.save`."""
    head = "['arrays']['"
    return {k[len(head) : -2]: v for k, v in leaves.items() if k.startswith(head)}


def hook_states(hooks: Iterable[Any]) -> dict[str, np.ndarray]:
    """The arrays of every hook that keeps a state (``hook.checkpoint_state()``), as named arrays
    ``hook<i>/<name>`` for :meth:`Checkpoints.save`."""
    arrays: dict[str, np.ndarray] = {}
    for i, hook in enumerate(hooks):
        if callable(getattr(hook, "checkpoint_state", None)):
            arrays |= {f"hook{i}/{k}": np.asarray(v) for k, v in hook.checkpoint_state().items()}
    return arrays


def restore_hook_states(hooks: Iterable[Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Give each hook that keeps a state (``hook.restore_state``) what :func:`hook_states` saved."""
    for i, hook in enumerate(hooks):
        if callable(getattr(hook, "restore_state", None)):
            head = f"hook{i}/"
            hook.restore_state({k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)})


class ChunkCheckpoints:
    """The checkpoints of a loop of compiled chunks called from the host (the full-batch loop,
    :func:`ntkdyn.linearized.train_gd`): its carry, named arrays of its own and the hooks' states,
    saved between chunks and restored bit for bit.

    Args:
        checkpoints: where and how often (``every`` is rounded up to a multiple of ``chunk``).
        chunk: the loop's steps per compiled chunk.
        hooks: the loop's record hooks (their ``checkpoint_state``/``restore_state``).
        settings: what a resumed run must share with the saved one (``num_steps`` required);
            saved as metadata and compared on restore.
    """

    def __init__(self, checkpoints: Checkpoints, chunk: int, hooks, settings: dict[str, int]):
        self.ckpt, self.hooks, self.settings = checkpoints, hooks, dict(settings)
        self.every = -(-checkpoints.every // chunk) * chunk  # a multiple of the chunk length

    def restore(self, carry: Any) -> tuple[int, Any, dict[str, np.ndarray], dict] | None:
        """``(step, carry, arrays, metadata)`` of the newest checkpoint (the carry's leaves placed
        where ``carry``'s live), or ``None`` when there is none to continue.

        Raises:
            ValueError: naming the folder when the checkpoint is of another run.
        """
        found = self.ckpt.latest()
        if found is None:
            return None
        step, leaves, meta = found
        where = str(self.ckpt.directory)
        for key, value in self.settings.items():
            if meta.get(key) != value:
                raise ValueError(
                    f"checkpoint in {where}: a run with {key} = {meta.get(key)}, this one "
                    f"{value}; use a fresh --out"
                )
        host = restore_state(leaves, jax.device_get(carry), where)
        # Each leaf goes back where the fresh carry's lives (same sharding, same compiled chunk).
        carry = jax.tree_util.tree_map(lambda a, h: jax.device_put(h, a.sharding), carry, host)
        arrays = saved_arrays(leaves)
        restore_hook_states(self.hooks, arrays)
        return step, carry, arrays, meta

    def after_chunk(
        self, step: int, carry: Any, arrays: Callable[[], dict[str, Any]], metadata=None
    ) -> None:
        """Save when due (every ``every`` steps, at the last step, or an interrupt pending, after
        which ``KeyboardInterrupt`` is raised); ``arrays()`` is called only then."""
        stop = stop_requested()
        last = step == self.settings["num_steps"]
        if not (stop or last or step % self.every == 0):
            return
        saved = {**arrays(), **hook_states(self.hooks)}
        self.ckpt.save(step, carry, saved, {**self.settings, **(metadata or {})})
        if stop and not last:
            raise KeyboardInterrupt


class KrylovCheckpoints:
    """The :class:`ntkdyn.linalg.KrylovCheckpoint` of a block Krylov solver in :class:`Checkpoints`.

    Saves the iteration's state every ``checkpoints.every`` block iterations, when it stops, and
    when an interrupt is pending (then raises ``KeyboardInterrupt``); loads the newest when resuming.
    """

    _FIELDS = ("K", "W", "T", "Z", "new")

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self._loaded = -1

    def load(self):
        """The newest saved :class:`ntkdyn.linalg.KrylovState` (``None``: start afresh)."""
        from ntkdyn.linalg import KrylovState

        found = self.checkpoints.latest()
        if found is None:
            return None
        _, leaves, meta = found
        a = saved_arrays(leaves)
        self._loaded = int(meta["iterations"])
        fields = {f: a.get(f) for f in self._FIELDS}
        return KrylovState(**fields, iterations=self._loaded, matvecs=int(meta["matvecs"]))

    def save(self, state, final: bool) -> None:
        """Write ``state`` when due (see the class docstring)."""
        stop = stop_requested()
        due = state.iterations % self.checkpoints.every == 0 and state.iterations != self._loaded
        if not (final or stop or due):
            return
        arrays = {f: getattr(state, f) for f in self._FIELDS if getattr(state, f) is not None}
        meta = {"iterations": int(state.iterations), "matvecs": int(state.matvecs), "final": final}
        self.checkpoints.save(state.iterations, {}, arrays, meta)
        if stop and not final:
            raise KeyboardInterrupt


@contextlib.contextmanager
def resumable(
    out: str | os.PathLike,
    command: str,
    settings: dict[str, Any],
    *,
    resume: bool,
    every: int,
    ignore: Iterable[str] = (),
    nested: Iterable[str] = (),
) -> Iterator[Checkpoints]:
    """A resumable command's run: the folder checked, its settings written, interrupts handled.

    :func:`ntkdyn.runs.resume.start_run` (refuses checkpoints without ``resume``, another command
    or other settings with it) inside :func:`ntkdyn.runs.resume.interruptible` (SIGINT and SIGTERM
    stop at the next checkpoint and print the command line that continues the run). A run that
    fails or is interrupted before its first checkpoint removes the folder it created.

    Args:
        out: the run folder (``--out``).
        command: e.g. ``"ntkdyn cmnist"``.
        settings: the settings that make the numbers.
        resume: ``--resume``.
        every: ``--checkpoint-every``.
        ignore: settings a resumed run may change.
        nested: settings whose entries have flags of their own (``protocol`` → ``--sd.coef``).

    Yields:
        The run's :class:`Checkpoints` in ``out/checkpoints`` (one :meth:`Checkpoints.stage` per
        loop).
    """
    from ntkdyn.runs.resume import interruptible, start_run

    out = Path(out)
    created = not out.exists()
    with interruptible(command.split()[-1]):
        try:
            folder = start_run(
                out, command, settings, resume=bool(resume), ignore=ignore, nested=nested
            )
            yield Checkpoints(folder, int(every), resume=bool(resume))
        except BaseException:
            if created and not any((out / "checkpoints").rglob("ckpt_*.npz")):
                shutil.rmtree(out, ignore_errors=True)
            raise


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
