"""Resuming a long run: the run folder's checks, the pending interrupt, and how to continue.

A resumable command keeps its checkpoints in ``OUT/checkpoints/`` (:class:`ntkdyn.train.checkpoint.
Checkpoints`) with the command's name (``command.json``), and its settings in ``OUT/config.json``
from the start.
:func:`start_run` enforces the rules every resumable command shares (``ntkdyn groups`` and
``ntkdyn celeba`` included):

* without ``--resume``, a folder that holds checkpoints is refused (nothing is overwritten);
* with ``--resume``, a folder of another command is refused, and so is one whose settings differ
  (the line names the first differing setting), except those listed as not changing the numbers
  (the output folder, progress, devices of a layout that gives the same numbers, ...).

Interrupts: inside :func:`interruptible`, SIGTERM is handled as SIGINT. While a loop that
checkpoints runs (inside :func:`deferring`), the first Ctrl-C (or SIGTERM) is only noted: the loop
asks :func:`stop_requested` after each compiled chunk, saves a checkpoint and raises
``KeyboardInterrupt``; a second one interrupts at once. Elsewhere an interrupt acts at once. On the way out the command prints the line that continues it (the same
arguments with ``--resume``); the command line then exits with status 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ntkdyn.errors import InputError
from ntkdyn.runs.files import RunDir, atomic_write_json, to_jsonable

__all__ = [
    "add_resume_flags",
    "deferring",
    "interruptible",
    "resume_command",
    "start_run",
    "stop_requested",
]

_STATE = {"pending": None, "active": 0, "loops": 0}


def stop_requested() -> bool:
    """Whether an interrupt is pending: the loop should checkpoint and raise ``KeyboardInterrupt``."""
    return _STATE["pending"] is not None


def _handler(signum, frame) -> None:
    if _STATE["active"] and _STATE["loops"] and _STATE["pending"] is None:
        _STATE["pending"] = signum
        print(
            "ntkdyn: stopping after the next checkpoint (interrupt again to stop now)",
            file=sys.stderr,
            flush=True,
        )
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """A loop that checkpoints: inside, an interrupt waits for the loop's next checkpoint.

    The loop checks :func:`stop_requested` at its boundaries; if an interrupt is still pending
    when the loop ends (it ended first), ``KeyboardInterrupt`` is raised on the way out.
    """
    _STATE["loops"] += 1
    try:
        yield
    finally:
        _STATE["loops"] -= 1
    if _STATE["pending"] is not None and not _STATE["loops"]:
        raise KeyboardInterrupt


def resume_command(command: str, argv: Sequence[str] | None = None) -> str:
    """The command line that continues this run: its arguments and ``--resume``.

    Args:
        command: the subcommand, e.g. ``"cmnist"``.
        argv: the arguments after ``ntkdyn`` (default ``sys.argv[1:]``; when they do not hold
            ``command``, e.g. a call from Python, just ``ntkdyn command --resume``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if command not in args:
        args = [command]
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join(["ntkdyn", *args])


@contextlib.contextmanager
def interruptible(command: str, argv: Sequence[str] | None = None) -> Iterator[None]:
    """Run a resumable command: SIGINT and SIGTERM stop it at its next checkpoint.

    On ``KeyboardInterrupt`` it prints ``ntkdyn: to resume: <command line>`` on stderr and lets
    the interrupt go on (the command line exits with status 130). Outside the main thread it only
    prints the line (signal handlers live in the main thread).
    """
    main = threading.current_thread() is threading.main_thread()
    old = {}
    if main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, _handler)
    _STATE["active"] += 1
    try:
        yield
    except KeyboardInterrupt:
        print(f"ntkdyn: to resume: {resume_command(command, argv)}", file=sys.stderr, flush=True)
        raise
    finally:
        _STATE["active"] -= 1
        if not _STATE["active"]:
            _STATE["pending"] = None
        for sig, handler in old.items():
            signal.signal(sig, handler)


def start_run(
    out: str | os.PathLike,
    command: str,
    settings: dict[str, Any],
    *,
    resume: bool,
    ignore: Iterable[str] = (),
    nested: Iterable[str] = (),
) -> Path:
    """Check a resumable run's folder and write its settings; returns the checkpoint folder.

    Writes ``settings`` to ``config.json`` (the command's report may rewrite it with more entries
    at the end) and the command's name to ``checkpoints/command.json``.

    Args:
        out: the run folder (``--out``).
        command: the command's name, e.g. ``"ntkdyn cmnist"``.
        settings: the settings that make the numbers (JSON-able).
        resume: ``--resume`` was given.
        ignore: settings a resumed run may change (they do not change the numbers).
        nested: settings whose entries have flags of their own, named without the setting
            (``protocol`` → ``--sd.coef``); other nested entries are named ``--setting.key``.

    Returns:
        ``out/checkpoints``.

    Raises:
        InputError: ``--out`` is a file; checkpoints without ``--resume``; ``--resume`` on a run
            of another command or with other settings (naming the first that differs).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder; choose another --out")
    checkpoints = out / "checkpoints"
    config, made = out / "config.json", checkpoints / "command.json"
    if resume and config.is_file():
        old, made_by = _read(config), _read(made).get("command")
        if made_by != command:
            what = f"a run of {made_by}, not of" if made_by else "no run of"
            raise InputError(f"--resume: {out} holds {what} {command}; pass a fresh --out")
        new = {k: v for k, v in to_jsonable(settings).items() if k not in set(ignore)}
        diff = _first_difference({k: old.get(k) for k in new}, new, ())
        if diff is not None:
            path, was, now = diff
            path = path[1:] if path[0] in set(nested) and len(path) > 1 else path
            flag = "--" + ".".join(path).replace("_", "-")
            raise InputError(
                f"--resume: {flag} differs from the run in {out} ({_short(was)} there, "
                f"{_short(now)} here); use the same arguments or a fresh --out"
            )
    elif not resume and any(checkpoints.rglob("ckpt_*.npz")):
        raise InputError(
            f"--out: {out} holds a run's checkpoints; pass --resume to continue it or a fresh --out"
        )
    RunDir(out).write_config(settings)
    atomic_write_json(made, {"command": command})
    return checkpoints


def _first_difference(old: Any, new: Any, path: tuple[str, ...]):
    """``(path, old, new)`` of the first entry of ``new`` that differs from ``old``, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key, value in new.items():
            found = _first_difference(old.get(key), value, (*path, str(key)))
            if found is not None:
                return found
        return None
    return None if old == new else (path, old, new)


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def add_resume_flags(parser: Any, every: int, unit: str = "steps") -> None:
    """Add ``--resume`` and ``--checkpoint-every`` to a command's parser."""
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its checkpoints (the same settings)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=every,
        metavar="N",
        help=f"{unit} between checkpoints (in --out/checkpoints; also on Ctrl-C or SIGTERM)",
    )


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``argparse.ArgumentTypeError`` otherwise)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
