"""A resumable minibatch epoch loop: train steps, periodic checkpoints, an evaluation per epoch.

One run is ``epochs`` × ``steps_per_epoch`` calls of a jitted step on batches that a function of
``(epoch, first batch)`` yields. The batches of an epoch must be fixed by the epoch (e.g.
:func:`ntkdyn.data.celeba.epoch_order` or :func:`ntkdyn.train.groups.group_balanced_order`), so
that a run resumed mid-epoch sees exactly the batches of an uninterrupted one. The loop

* records the training metrics every ``log_every`` steps and at the end of each epoch,
* writes an atomic checkpoint (:mod:`ntkdyn.train.checkpoint`) every ``checkpoint_every`` steps
  and at the end of each epoch, after the evaluation, holding the state and the history so far,
* evaluates at the end of each epoch and keeps the per-epoch results,
* writes ``done.json`` when it finishes; with ``resume=True`` a finished run returns it at once
  and an interrupted one continues from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ntkdyn.runs import atomic_write_json, progress
from ntkdyn.train.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint

__all__ = ["train_epochs", "metrics_record"]


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
    place: Callable[[Any], Any] = lambda s: s,
    tags: Mapping[str, Any] | None = None,
    desc: str = "",
) -> dict[str, Any]:
    """Train for ``epochs`` epochs, evaluating after each; resumable from checkpoints.

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
        place: puts a host state on the devices (e.g. ``lambda s: replicate(s, mesh)``).
        tags: fields added to every record (e.g. method and seed).
        desc: label of the progress bar and of the log lines.

    Returns:
        ``{"epochs": [{"epoch": k, **evaluate(state)}, ...], "records": [...]}``; the records are
        ``{"kind": "train", **tags, "epoch", "step", **metrics, "images_per_s"}`` and
        ``{"kind": "eval", **tags, "epoch", "step", "<split>_<metric>": value, ...}``.

    Raises:
        ValueError: non-positive sizes, or existing checkpoints without ``resume``.
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

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_dir, step, state, meta)

    for epoch in range(meta["epoch"], epochs):
        start = meta["batch"]
        t0, seen = time.perf_counter(), 0
        it = progress(
            batches(epoch, start),
            total=steps_per_epoch - start,
            desc=f"{desc} epoch {epoch + 1}/{epochs}",
            unit="img",
            scale=batch_size,
        )
        for batch in it:
            if meta["batch"] >= steps_per_epoch:
                break
            state, metrics = step_fn(state, batch)
            meta["batch"] += 1
            seen += batch_size
            step = epoch * steps_per_epoch + meta["batch"]
            if step % log_every == 0 or meta["batch"] == steps_per_epoch:
                meta["records"].append(
                    {
                        "kind": "train",
                        **tags,
                        "epoch": epoch + 1,
                        "step": step,
                        **metrics_record(metrics),
                        "images_per_s": seen / max(time.perf_counter() - t0, 1e-9),
                    }
                )
            if meta["batch"] < steps_per_epoch and step % checkpoint_every == 0:
                checkpoint(step)
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
        checkpoint((epoch + 1) * steps_per_epoch)
    out = {"epochs": meta["epochs"], "records": meta["records"]}
    if jax.process_index() == 0:
        atomic_write_json(done_file, out)
    return out
