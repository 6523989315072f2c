"""Train one method over restarts × a grid of hyperparameters, then evaluate every trained network.

A protocol over restarts trains the same network R times (restart r: its own data draw and
initialisation) and, for a sweep, at each of G grid points. All G·R runs are one call of
:func:`ntkdyn.train.fullbatch.train_fullbatch` with the seed axis laid out grid point × restart
(index g·R + r): restart r's data, keys and θ₀ are repeated at every grid point, and the grid's
values travel with the data as ``batch["hp"]`` (one value per run), so the objective reads its
coefficients from there and a sweep compiles once. After training, :func:`train_restarts` evaluates
every run with one ``jit(vmap(evaluate))`` (:func:`ntkdyn.train.fullbatch.evaluate_seeds`).

Example::

    out = train_restarts(loss_fn, optax.adam(1e-3), params0, batch, keys=keys, num_steps=100,
                         grid=[{"coef": 0.1}, {"coef": 1.0}], log_every=10,
                         evaluate=accuracy, evaluate_args=(batch,))
    out.values["acc"]        # (G·R,): grid point g, restart r at g·R + r
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntkdyn.train.fullbatch import TrainResult, evaluate_seeds, train_fullbatch
from ntkdyn.train.hooks import Progress, ResponseRecorder

__all__ = ["TrainedRestarts", "grid_values", "tile_grid", "train_restarts"]


class TrainedRestarts(NamedTuple):
    """What :func:`train_restarts` returns.

    Attributes:
        result: the :class:`~ntkdyn.train.fullbatch.TrainResult`, stacked over G·R runs.
        values: ``evaluate``'s per-run values, float64 with leading axis G·R (empty without it).
        seconds: wall time of the training call (compilation included).
        responses: the first run's z(t) recorder (:class:`~ntkdyn.train.hooks.ResponseRecorder`),
            or ``None``.
    """

    result: TrainResult
    values: dict[str, Any]
    seconds: float
    responses: ResponseRecorder | None = None

    def curves(self, initial: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
        """The first run's curves from step 0: z(t) and the captured share, and history metrics.

        Args:
            initial: the metrics at θ₀ (the curves' first point).
            names: curve name → history metric (e.g. ``{"train_loss": "train_nll"}``).

        Returns:
            :meth:`ResponseRecorder.curve` at the first run's final parameters (when recorded) and
            ``name: (T + 1,)`` float64 for each of ``names``.
        """
        run0 = jax.tree_util.tree_map(lambda a: a[0], self.result.state.params)
        out = dict(self.responses.curve(run0)) if self.responses is not None else {}
        if out and names:  # the recorder also records the last step, the history only multiples
            keep = np.isin(out["steps"], np.concatenate([[0], np.asarray(self.result.steps)]))
            out["steps"], out["z"] = out["steps"][keep], out["z"][keep]
        for name, h in names.items():
            values = np.asarray(self.result.history[h][0], np.float64)
            out[name] = np.concatenate([[float(initial[h])], values])
        return out


def tile_grid(tree: Any, points: int) -> Any:
    """``tree`` with its leading axis R repeated ``points`` times: (R, ...) → (G·R, ...)."""
    if points == 1:
        return tree
    return jax.tree_util.tree_map(lambda a: jnp.tile(a, (points,) + (1,) * (a.ndim - 1)), tree)


def grid_values(grid: Sequence[Mapping[str, float]], restarts: int, dtype: Any) -> dict[str, Any]:
    """The grid's hyperparameters as (G·R,) arrays: point g's value at runs g·R … g·R + R − 1."""
    return {h: jnp.repeat(jnp.asarray([g[h] for g in grid], dtype), restarts) for h in grid[0]}


def train_restarts(
    loss_fn: Callable[..., Any],
    optimizer: Any,
    params0: Any,
    batch: Any,
    *,
    keys: Any,
    num_steps: int,
    grid: Sequence[Mapping[str, float]] = ({},),
    model_state: Any = None,
    log_every: int,
    evaluate: Callable[..., Any] | None = None,
    evaluate_args: Sequence[Any] = (),
    desc: str | None = None,
    progress_seconds: float = 5.0,
    responses: tuple[Callable[..., Any], Any, Any, Any] | None = None,
    hooks: Sequence[Any] = (),
    **train_kwargs: Any,
) -> TrainedRestarts:
    """Train R restarts at each of G grid points in one call, then evaluate every run.

    Args:
        loss_fn: ``train_fullbatch``'s ``(params, model_state, batch, step, key) -> (loss, aux)``;
            with grid values, ``batch["hp"]`` holds this run's hyperparameters.
        optimizer: an optax gradient transformation.
        params0: θ₀ of each restart, leading axis R.
        batch: each restart's training data, leading axis R on every leaf (a dict when the grid
            has values, which are added as ``batch["hp"]``).
        keys: (R,) typed or (R, 2) raw training keys, one per restart.
        num_steps: full-batch steps (≥ 1).
        grid: the G grid points (hyperparameter name → value); ``({},)``: one point, no values.
        model_state: each restart's non-trained state (leading axis R), or ``None``.
        log_every: steps between records of the history and of the standard hooks (≥ 1).
        evaluate: ``evaluate(params, *one_run_args) -> dict`` of a trained run, or ``None``.
        evaluate_args: per-restart PyTrees (leading axis R) handed to ``evaluate``.
        desc: label of a progress line (:class:`~ntkdyn.train.hooks.Progress`) on stderr, at
            most every ``progress_seconds``; ``None``: silent.
        progress_seconds: least time between two progress lines.
        responses: ``(apply_fn, x, y, U)``: record the first run's z(t) =
            Uᵀ Y (f(x; θ_t) − f(x; θ₀)) (:class:`~ntkdyn.train.hooks.ResponseRecorder`).
        hooks: more record hooks, called after those.
        **train_kwargs: the rest of :func:`~ntkdyn.train.fullbatch.train_fullbatch` (``eval_fn``,
            ``layout``, ``compiler_options``, ``unroll``, and ``checkpoints``: a resumable run,
            whose recorder z(t) and progress hook continue where the checkpoint left them).

    Returns:
        :class:`TrainedRestarts`; run g·R + r is restart r at grid point g.

    Raises:
        ValueError: an empty ``grid``, grid points with different names, values with a ``batch``
            that is not a dict, or as :func:`~ntkdyn.train.fullbatch.train_fullbatch`.
    """
    grid = list(grid)
    if not grid or any(set(g) != set(grid[0]) for g in grid):
        raise ValueError(f"grid: expected grid points with the same names, got {grid!r}")
    if grid[0] and not isinstance(batch, Mapping):
        raise ValueError(
            f"batch: grid values go into batch['hp'], so batch must be a dict, got {type(batch)}"
        )
    G = len(grid)
    restarts = int(jnp.shape(keys)[0])
    params0, batch, model_state, keys, args = tile_grid(
        (params0, batch, model_state, keys, tuple(evaluate_args)), G
    )
    if grid[0]:
        floats = [
            a for a in jax.tree_util.tree_leaves(batch) if jnp.issubdtype(a.dtype, jnp.floating)
        ]
        dtype = floats[0].dtype if floats else jnp.float32
        batch = {**batch, "hp": grid_values(grid, restarts, dtype)}
    standard: list[Any] = []
    if desc is not None:
        standard.append(Progress(log_every, total=num_steps, desc=desc, interval=progress_seconds))
    recorder = None
    if responses is not None:
        run0 = jax.tree_util.tree_map(lambda a: a[0], params0)
        recorder = ResponseRecorder(log_every, responses[0], run0, *responses[1:], seed=0)
        standard.append(recorder)
    start = time.perf_counter()
    result = train_fullbatch(
        loss_fn,
        optimizer,
        params0,
        batch,
        keys=keys,
        num_steps=num_steps,
        model_state=model_state,
        batch_axis=0,
        log_every=log_every,
        hooks=[*standard, *hooks],
        **train_kwargs,
    )
    jax.block_until_ready(result.state.params)
    seconds = time.perf_counter() - start
    result = result._replace(history={k: np.asarray(v) for k, v in result.history.items()})
    values = evaluate_seeds(evaluate, result.state.params, *args) if evaluate else {}
    return TrainedRestarts(result, values, seconds, recorder)
