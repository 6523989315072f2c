"""A resumable minibatch epoch loop: train steps, record hooks, an evaluation per epoch.

One run is ``epochs`` × ``steps_per_epoch`` calls of a jitted step on batches that a function of
``(epoch, first batch)`` yields. The batches of an epoch must be fixed by the epoch (e.g.
:func:`ntkdyn.data.images.epoch_order` or :func:`ntkdyn.train.groups.group_balanced_order`), so
that a run resumed mid-epoch sees exactly the batches of an uninterrupted one. Everything besides
the step and the evaluation is a record hook (:mod:`ntkdyn.train.hooks`):

* the metrics hook keeps a training record every ``log_every`` steps and at the end of each epoch
  (saved in the checkpoints, so a resumed run returns the records of an uninterrupted one),
* :class:`ntkdyn.train.checkpoint.CheckpointHook` writes an atomic checkpoint every
  ``checkpoint_every`` steps and at the end of each epoch, after the evaluation, holding the state
  and the history so far,
* :func:`progress_hook` prints a line every N steps (step, loss, images/s), and any hook of the
  caller's (``hooks=``) sees the same records.

The loop evaluates at the end of each epoch, keeps the per-epoch results and writes ``done.json``
when it finishes; with ``resume=True`` a finished run returns it at once and an interrupted one
continues from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import numpy as np

from ntkdyn.runs import atomic_write_json
from ntkdyn.runs.resume import deferring, stop_requested
from ntkdyn.train.checkpoint import CheckpointHook, latest_checkpoint, restore_checkpoint
from ntkdyn.train.hooks import Hook, Record, check_hooks, every

__all__ = ["train_epochs", "metrics_record", "progress_hook"]


def metrics_record(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Device metrics as JSON values: scalars to floats, vectors (e.g. Group DRO's q) to lists.

    Args:
        metrics: name → array.

    Returns:
        name → float or list of floats.
    """
    out: dict[str, Any] = {}
    for k, v in jax.device_get(dict(metrics)).items():
        v = np.asarray(v)
        out[k] = float(v) if v.ndim == 0 else [float(x) for x in v.ravel()]
    return out


def progress_hook(
    n: int, *, desc: str = "", total_steps: int | None = None, stream: TextIO | None = None
) -> Hook:
    """A hook printing one line every ``n`` steps: epoch, step, loss and images/s.

    ``[erm/seed0] epoch 1/4 step 10/72 loss 0.6931 2130 img/s`` on stderr (only on process 0);
    the rate is the loop's ``images_per_s`` (since the start of the epoch).

    Args:
        n: steps between lines (≥ 1).
        desc: the label in brackets.
        total_steps: steps of the whole run, shown after the step.
        stream: where to print (default ``sys.stderr``).

    Raises:
        ValueError: ``n`` is not an integer ≥ 1 (:func:`ntkdyn.train.hooks.every`).
    """

    def show(record: Record) -> None:
        if jax.process_index() != 0:
            return
        m = record.metrics
        parts = [f"[{desc}]"] if desc else []
        if record.epoch is not None:
            parts.append(f"epoch {record.epoch}")
        parts.append(f"step {record.step}" + (f"/{total_steps}" if total_steps else ""))
        if "loss" in m:
            parts.append(f"loss {float(m['loss']):.4f}")
        if "images_per_s" in m:
            parts.append(f"{float(m['images_per_s']):.0f} img/s")
        print(" ".join(parts), file=sys.stderr if stream is None else stream, flush=True)

    return every(n, show)


def train_epochs(
    state: Any,
    step_fn: Callable[[Any, Any], tuple[Any, Mapping[str, Any]]],
    batches: Callable[[int, int], Iterator[Any]],
    evaluate: Callable[[Any], dict[str, Any]],
    *,
    epochs: int,
    steps_per_epoch: int,
    batch_size: int,
    checkpoint_dir: str | os.PathLike,
    resume: bool = False,
    checkpoint_every: int = 500,
    log_every: int = 50,
    hooks: Sequence[Hook] | None = None,
    place: Callable[[Any], Any] = lambda s: s,
    tags: Mapping[str, Any] | None = None,
    desc: str = "",
) -> dict[str, Any]:
    """Train for ``epochs`` epochs, evaluating after each; resumable from checkpoints.

    After step t (1-based, t = e·steps_per_epoch + b) every hook whose ``every`` divides t is
    called with a :class:`ntkdyn.train.hooks.Record` (``step``, ``epoch``, ``params``,
    ``model_state``, ``metrics`` on the host with ``images_per_s``, ``state``, ``final``), and
    every hook at the last step of each epoch, before its evaluation.

    Args:
        state: the initial training state, in host memory (also the template checkpoints are
            restored into).
        step_fn: ``(state, batch) -> (state, metrics)``, e.g.
            :func:`ntkdyn.train.dataparallel.make_train_step`.
        batches: ``(epoch, start) -> iterator`` over the batches of ``epoch`` from batch index
            ``start`` on (``start`` > 0 when resuming mid-epoch); at least ``steps_per_epoch −
            start`` of them.
        evaluate: ``state -> {split: metrics}`` at the end of each epoch (e.g. ``{"val": ...,
            "test": ...}`` of :func:`ntkdyn.train.groups.group_metrics`); its scalar entries go
            into the evaluation records.
        epochs: number of epochs (≥ 1).
        steps_per_epoch: steps in one epoch (≥ 1).
        batch_size: images per step (for the throughput record).
        checkpoint_dir: folder of this run's checkpoints and ``done.json``.
        resume: continue from ``checkpoint_dir``; without it, a folder that already holds
            checkpoints is refused.
        checkpoint_every: steps between mid-epoch checkpoints (≥ 1).
        log_every: steps between training records (≥ 1).
        hooks: more record hooks (e.g. :func:`progress_hook`); they see the records of the steps
            this call trains (a resumed run does not replay the steps before its checkpoint).
        place: puts a host state on the devices (e.g. ``lambda s: replicate(s, mesh)``).
        tags: fields added to every record (e.g. method and seed).
        desc: label of the log lines.

    Returns:
        ``{"epochs": [{"epoch": k, **evaluate(state)}, ...], "records": [...]}``; the records are
        ``{"kind": "train", **tags, "epoch", "step", **metrics, "images_per_s"}`` and
        ``{"kind": "eval", **tags, "epoch", "step", "<split>_<metric>": value, ...}``.

    Raises:
        ValueError: non-positive sizes, a hook that is not one, or existing checkpoints without
            ``resume``.
    """
    for name, value in (
        ("epochs", epochs),
        ("steps_per_epoch", steps_per_epoch),
        ("batch_size", batch_size),
        ("checkpoint_every", checkpoint_every),
        ("log_every", log_every),
    ):
        if int(value) < 1:
            raise ValueError(f"{name}: must be >= 1, got {value}")
    extra = check_hooks(hooks)
    ckpt_dir = Path(checkpoint_dir)
    done_file = ckpt_dir / "done.json"
    if resume and done_file.is_file():
        return json.loads(done_file.read_text())
    tags = dict(tags or {})
    meta: dict[str, Any] = {"epoch": 0, "batch": 0, "epochs": [], "records": []}
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        if not resume:
            raise ValueError(
                f"checkpoint_dir: {ckpt_dir} already holds checkpoints; pass --resume to continue, "
                "or choose a fresh --out"
            )
        state, meta = restore_checkpoint(latest, jax.device_get(state))
        print(
            f"[{desc}] resuming from {latest.name} (epoch {meta['epoch'] + 1}, batch {meta['batch']})",
            file=sys.stderr,
        )
    state = place(state)

    def keep_record(record: Record) -> None:
        meta["records"].append(
            {"kind": "train", **tags, "epoch": record.epoch, "step": record.step, **record.metrics}
        )

    checkpoint = CheckpointHook(ckpt_dir, int(checkpoint_every), lambda: meta)
    step_hooks = (every(int(log_every), keep_record), *extra)
    last_step = epochs * steps_per_epoch
    with deferring():  # Ctrl-C or SIGTERM: a checkpoint after the current step, then stop
        for epoch in range(meta["epoch"], epochs):
            start = meta["batch"]
            t0, seen = time.perf_counter(), 0
            for batch in batches(epoch, start):
                if meta["batch"] >= steps_per_epoch:
                    break
                state, metrics = step_fn(state, batch)
                meta["batch"] += 1
                seen += batch_size
                step = epoch * steps_per_epoch + meta["batch"]
                end = meta["batch"] == steps_per_epoch
                due = [h for h in step_hooks if end or step % h.every == 0]
                if due:
                    record = Record(
                        step=step,
                        params=getattr(state, "params", None),
                        model_state=getattr(state, "batch_stats", None),
                        metrics={
                            **metrics_record(metrics),
                            "images_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                        },
                        epoch=epoch + 1,
                        final=step == last_step,
                        state=state,
                    )
                    for hook in due:
                        hook(record)
                stop = stop_requested()
                if not end and (stop or step % checkpoint.every == 0):
                    checkpoint(Record(step=step, params=None, epoch=epoch + 1, state=state))
                    if stop:
                        raise KeyboardInterrupt
            if meta["batch"] < steps_per_epoch:
                raise ValueError(
                    f"batches: epoch {epoch + 1} yielded {meta['batch'] - start} batches from batch "
                    f"{start}, expected {steps_per_epoch - start}"
                )
            result = {"epoch": epoch + 1, **evaluate(state)}
            meta["epochs"].append(result)
            meta["records"].append(
                {
                    "kind": "eval",
                    **tags,
                    "epoch": epoch + 1,
                    "step": (epoch + 1) * steps_per_epoch,
                    **{
                        f"{split}_{k}": v
                        for split, m in result.items()
                        if isinstance(m, Mapping)
                        for k, v in m.items()
                        if isinstance(v, (int, float))
                    },
                }
            )
            line = " | ".join(
                f"{split} " + " ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
                for split, m in result.items()
                if isinstance(m, Mapping)
            )
            print(f"[{desc}] epoch {epoch + 1}: {line}", file=sys.stderr)
            meta["epoch"], meta["batch"] = epoch + 1, 0
            step = (epoch + 1) * steps_per_epoch
            checkpoint(Record(step=step, params=None, epoch=epoch + 1, state=state))
            if stop_requested() and epoch + 1 < epochs:
                raise KeyboardInterrupt
    out = {"epochs": meta["epochs"], "records": meta["records"]}
    if jax.process_index() == 0:
        atomic_write_json(done_file, out)
    return out
