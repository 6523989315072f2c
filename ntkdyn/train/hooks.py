"""One record-hook protocol for every training loop of ntkdyn.

The full-batch loop (:func:`ntkdyn.train.fullbatch.train_fullbatch`), the minibatch epoch loop
(:func:`ntkdyn.train.epochs.train_epochs`) and the linearized loop
(:func:`ntkdyn.linearized.train_gd`) hand the same :class:`Record` to the same hooks, so metrics,
progress, the feature-response recorder z(t) = Uᵀ Y (f_t − f_0) and checkpoints are written once and
work in every loop. A hook is any callable ``hook(record) -> None`` with an ``every`` attribute: the
loop calls it after every ``every``-th step (on the host, outside compiled code) and once more at
the end of training (``record.final``), never twice for the same step. A loop that compiles its
steps calls the hooks between compiled chunks of :func:`chunk_steps` steps.

The standard hooks: :class:`Progress` (step, loss, steps/s on stderr, throttled),
:class:`MetricsCollector` (the metrics of every call, stacked), :class:`ResponseRecorder` (the
z(t) recorder, wrapping :class:`ntkdyn.tangent.FeatureResponseTracker`) and :class:`SeedResponses`
(one recorder per seed of a stacked run, each against its own spectrum at θ₀).

A hook that keeps what it recorded may also offer ``checkpoint_state() -> dict of arrays`` and
``restore_state(arrays)``: a loop with checkpoints (:class:`ntkdyn.train.checkpoint.Checkpoints`)
saves the one beside its own state and hands it back to a resumed run's fresh hook, so the resumed
run records exactly what an uninterrupted one does.

Example:
    >>> calls = []
    >>> hook = every(10, lambda r: calls.append(r.step))
    >>> for step in range(1, 26):
    ...     call_hooks([hook], Record(step=step, params=None), last_step=25)
    >>> calls
    [10, 20, 25]
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Hook",
    "MetricsCollector",
    "Progress",
    "Record",
    "ResponseRecorder",
    "SeedResponses",
    "call_hooks",
    "check_hooks",
    "chunk_steps",
    "due",
    "every",
]


@dataclasses.dataclass(frozen=True)
class Record:
    """What a training loop hands its hooks after a step.

    Attributes:
        step: optimizer steps done so far (≥ 1); 0 for a record of the initial state.
        params: the parameters after that step (stacked over seeds in the full-batch loop).
        model_state: non-trained state, e.g. batch-norm statistics (``None`` if none).
        metrics: host values of the step's metrics (``"loss"`` and the objective's terms).
        epoch: the 1-based epoch of a minibatch loop (``None`` in a full-batch loop).
        final: True for the record of the last step of the run.
        state: the loop's whole state (e.g. with the optimizer state), for checkpoint hooks.
    """

    step: int
    params: Any
    model_state: Any = None
    metrics: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epoch: int | None = None
    final: bool = False
    state: Any = None


@runtime_checkable
class Hook(Protocol):
    """A record hook: called with a :class:`Record` every ``every`` steps and at the end."""

    every: int

    def __call__(self, record: Record) -> None: ...  # pragma: no cover


class _Every:
    def __init__(self, n: int, fn: Callable[[Record], None]):
        self.every = n
        self.fn = fn

    def __call__(self, record: Record) -> None:
        self.fn(record)

    def __repr__(self) -> str:
        return f"every({self.every}, {self.fn!r})"


def _check_every(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"every: expected an integer >= 1 (steps between calls), got {n!r}")


def every(n: int, fn: Callable[[Record], None]) -> Hook:
    """Make a hook from a function: ``fn(record)`` after every ``n``-th step and at the end.

    Args:
        n: steps between calls (≥ 1).
        fn: ``record -> None``.

    Raises:
        ValueError: ``n`` is not an integer ≥ 1 or ``fn`` is not callable.
    """
    _check_every(n)
    if not callable(fn):
        raise ValueError(f"fn: expected a callable taking a Record, got {type(fn).__name__}")
    return _Every(n, fn)


def check_hooks(hooks: Sequence[Hook] | None) -> tuple[Hook, ...]:
    """Validate a loop's ``hooks`` argument: callables with an integer ``every`` ≥ 1.

    Raises:
        ValueError: naming the first hook that is not one, and how to make one (:func:`every`).
    """
    out = tuple(hooks or ())
    for i, hook in enumerate(out):
        n = getattr(hook, "every", None)
        if not callable(hook) or isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"hooks[{i}]: expected a callable with an integer attribute every >= 1, got "
                f"{hook!r}; wrap a function with ntkdyn.train.hooks.every(n, fn)"
            )
    return out


def due(hooks: Sequence[Hook], step: int, *, last_step: int) -> list[Hook]:
    """The hooks to call after ``step``: those whose ``every`` divides it, all of them at the end."""
    if step >= last_step:
        return list(hooks)
    return [h for h in hooks if step % h.every == 0]


def call_hooks(hooks: Sequence[Hook], record: Record, *, last_step: int) -> None:
    """Call the hooks due at ``record.step`` (all of them, with ``final=True``, at ``last_step``)."""
    chosen = due(hooks, record.step, last_step=last_step)
    if not chosen:
        return
    if record.step >= last_step and not record.final:
        record = dataclasses.replace(record, final=True)
    for hook in chosen:
        hook(record)


def chunk_steps(hooks: Sequence[Hook], *also: int | None) -> int:
    """The steps a loop runs between host visits: the gcd of the hooks' ``every`` and ``also``.

    Every hook is then due at the end of some chunk; ``also`` adds the loop's own periods (e.g. its
    ``log_every``); ``None`` entries are ignored. With no period at all, 1.
    """
    periods = [h.every for h in hooks] + [int(a) for a in also if a]
    return math.gcd(*periods) if periods else 1


def _seed(tree: Any, seed: int | None) -> Any:
    if seed is None:
        return tree
    import jax

    return jax.tree_util.tree_map(lambda a: a[seed], tree)


class Progress:
    """A progress hook: ``desc: step t/T, loss L, r steps/s`` on stderr, at most every ``interval`` s.

    The loss shown is the mean over seeds of ``record.metrics["loss"]``; the rate counts loop steps
    (all seeds at once) since the hook was made (compilation included). The last line is always
    written.

    Args:
        every: steps between calls (≥ 1).
        total: the run's number of steps (shown as ``t/T``; ``None``: just ``t``).
        desc: a label in front of the line.
        interval: the fewest seconds between two lines (0: every call).
        stream: where to write (default ``sys.stderr``).

    Raises:
        ValueError: ``every`` not an integer ≥ 1 or ``interval`` negative.
    """

    def __init__(
        self,
        every: int,
        *,
        total: int | None = None,
        desc: str = "train",
        interval: float = 1.0,
        stream: Any = None,
    ):
        _check_every(every)
        if not (isinstance(interval, (int, float)) and interval >= 0):
            raise ValueError(f"interval: expected seconds >= 0, got {interval!r}")
        self.every, self.total, self.desc, self.interval = every, total, desc, float(interval)
        self.stream = stream
        self.lines = 0
        self._start = time.perf_counter()
        self._last = -math.inf

    def __call__(self, record: Record) -> None:
        now = time.perf_counter()
        if not record.final and now - self._last < self.interval:
            return
        self._last = now
        rate = record.step / max(now - self._start, 1e-9)
        of = f"/{self.total}" if self.total else ""
        loss = record.metrics.get("loss") if record.metrics else None
        text = f"{self.desc}: step {record.step}{of}"
        if loss is not None:
            text += f", loss {float(np.mean(np.asarray(loss))):.4g}"
        stream = sys.stderr if self.stream is None else self.stream
        print(f"{text}, {rate:,.1f} steps/s", file=stream, flush=True)
        self.lines += 1


class MetricsCollector:
    """A hook that keeps ``record.metrics`` of every call: ``steps`` (R,) and ``history`` (R, ...).

    Args:
        every: steps between records (≥ 1).
        keys: the metrics to keep (``None``: all).
        seed_axis: put the seed axis first, ``history[k]`` (S, R, ...), as
            :class:`ntkdyn.train.fullbatch.TrainResult` does (the metrics then need a leading seed
            axis).

    Raises:
        ValueError: ``every`` not an integer ≥ 1.
    """

    def __init__(self, every: int, *, keys: Sequence[str] | None = None, seed_axis: bool = False):
        _check_every(every)
        self.every, self.keys, self.seed_axis = (
            every,
            None if keys is None else tuple(keys),
            seed_axis,
        )
        self._steps: list[int] = []
        self._rows: list[dict[str, np.ndarray]] = []

    def __call__(self, record: Record) -> None:
        metrics = dict(record.metrics or {})
        if self.keys is not None:
            metrics = {k: metrics[k] for k in self.keys if k in metrics}
        self._steps.append(int(record.step))
        self._rows.append({k: np.asarray(v) for k, v in metrics.items()})

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """What it recorded, for a checkpoint (every row must hold the same metrics)."""
        rows = {
            f"metric/{k}": np.stack([r[k] for r in self._rows]) for k in (self._rows or [{}])[0]
        }
        return {"steps": self.steps, **rows}

    def restore_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Continue from :meth:`checkpoint_state`'s arrays."""
        self._steps = [int(s) for s in arrays.get("steps", [])]
        names = [k for k in arrays if k.startswith("metric/")]
        self._rows = [{k[7:]: arrays[k][i] for k in names} for i in range(len(self._steps))]

    @property
    def steps(self) -> np.ndarray:
        """(R,) the steps recorded."""
        return np.asarray(self._steps, dtype=np.int64)

    @property
    def history(self) -> dict[str, np.ndarray]:
        """Each metric stacked over records: (R, ...), or (S, R, ...) with ``seed_axis``."""
        keys = dict.fromkeys(k for row in self._rows for k in row)
        out = {k: np.stack([row[k] for row in self._rows]) for k in keys}
        return {k: np.moveaxis(v, 0, 1) for k, v in out.items()} if self.seed_axis else out


class ResponseRecorder:
    """The z(t) hook: z = U_kᵀ Y (f(X; θ_t) − f(X; θ₀)) at every call, for any loop.

    Wraps :class:`ntkdyn.tangent.FeatureResponseTracker` (one jitted projection, no copy of its
    arithmetic); ``seed`` picks one seed of stacked parameters (the full-batch loop's).

    Args:
        every: steps between records (≥ 1).
        apply_fn, params0, x, y, U: as in :class:`~ntkdyn.tangent.FeatureResponseTracker`
            (``params0`` unstacked: the seed's θ₀).
        seed: index of the seed in ``record.params`` (``None``: the params are one seed's).

    Raises:
        ValueError: as :class:`~ntkdyn.tangent.FeatureResponseTracker`, or ``every`` not ≥ 1.
    """

    def __init__(self, every: int, apply_fn, params0, x, y, U, *, seed: int | None = None):
        from ntkdyn.tangent import FeatureResponseTracker

        _check_every(every)
        self.every, self.seed = every, seed
        self.tracker = FeatureResponseTracker(apply_fn, params0, x, y, U)
        self._measure = (apply_fn, params0, x, y, U)
        self._before: tuple[np.ndarray, np.ndarray] | None = None  # restored from a checkpoint

    def __call__(self, record: Record) -> None:
        self.tracker(record.step, _seed(record.params, self.seed))

    @property
    def steps(self) -> np.ndarray:
        """(T,) the recorded steps."""
        if self._before is None:
            return self.tracker.steps
        return np.concatenate([self._before[0], self.tracker.steps]).astype(np.int64)

    @property
    def z(self) -> np.ndarray:
        """(T, k) the recorded responses."""
        if self._before is None:
            return self.tracker.z
        parts = [z for z in (self._before[1], self.tracker.z) if z.size]
        return np.concatenate(parts) if parts else self.tracker.z

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """The recorded steps and responses, for a checkpoint."""
        return {"steps": self.steps, "z": self.z}

    def restore_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Continue after :meth:`checkpoint_state`'s records (a fresh recorder's are dropped)."""
        from ntkdyn.tangent import FeatureResponseTracker

        self.tracker = FeatureResponseTracker(*self._measure)
        self._before = (np.asarray(arrays["steps"], np.int64), np.asarray(arrays["z"]))

    def curve(self, params: Any) -> dict[str, np.ndarray]:
        """The recorded z(t) from step 0 (z = 0) and the share of Δf it holds at ``params``.

        Returns:
            ``{"steps": (T+1,), "z": (T+1, k) float64, "captured": ()}`` (:meth:`captured` of
            ``params``, one seed's, usually the last).
        """
        z = np.asarray(self.z, np.float64)
        return {
            "steps": np.concatenate([[0], self.steps]),
            "z": np.concatenate([np.zeros((1, z.shape[1])), z]),
            "captured": np.asarray(self.captured(params)),
        }

    def captured(self, params: Any) -> float:
        """‖U_kᵀ Y Δf‖² / ‖Δf‖² of Δf = f(X; θ) − f(X; θ₀): the share of the change U_k holds.

        1 when Δf lies in the span of U_k (the linearized theory's); ``params`` are one seed's.
        """
        from ntkdyn.tangent import feature_responses

        apply_fn, params0, x, y, U = self._measure
        z = np.asarray(feature_responses(apply_fn, params0, params, x, y, U), np.float64)
        df = np.asarray(apply_fn(params, x), np.float64) - np.asarray(
            apply_fn(params0, x), np.float64
        )
        return float(np.sum(z**2) / np.sum(df**2))


class SeedResponses:
    """The z(t) hook of every seed of a stacked run, each seed against its own spectrum at θ₀.

    Seed s: the dense spectrum YΦ = U S Vᵀ of its network at θ₀ on its own data
    (:func:`ntkdyn.tangent.feature_spectrum`), its k leading directions U_k, and a
    :class:`ResponseRecorder` of z_s(t) = U_kᵀ Y_s (f(X_s; θ_t) − f(X_s; θ₀)).

    Args:
        every: steps between records (≥ 1).
        apply_fn: pure scalar-output ``apply_fn(params, x)`` of one seed.
        params0: θ₀ stacked over S seeds.
        x: (S, n, ...) each seed's inputs.
        y: (S, n) each seed's labels in {−1, +1} or {0, 1}.
        top: k, the leading directions kept (≥ 1).

    Raises:
        ValueError: ``every`` or ``top`` not an integer ≥ 1, or as :class:`ResponseRecorder`.
    """

    def __init__(self, every: int, apply_fn, params0, x, y, *, top: int):
        from ntkdyn.tangent import feature_spectrum

        _check_every(every)
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"top: expected an integer >= 1, got {top!r}")
        self.every = every
        self.recorders = []
        for s in range(np.shape(y)[0]):
            p0 = _seed(params0, s)
            U = feature_spectrum(apply_fn, p0, x[s], y[s]).U[:, :top]
            self.recorders.append(ResponseRecorder(every, apply_fn, p0, x[s], y[s], U, seed=s))

    def __call__(self, record: Record) -> None:
        for recorder in self.recorders:
            recorder(record)

    def checkpoint_state(self) -> dict[str, np.ndarray]:
        """Every seed's records, for a checkpoint."""
        return {
            f"{s}/{k}": v
            for s, r in enumerate(self.recorders)
            for k, v in r.checkpoint_state().items()
        }

    def restore_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Continue every seed's recorder from :meth:`checkpoint_state`'s arrays."""
        for s, recorder in enumerate(self.recorders):
            recorder.restore_state({k: arrays[f"{s}/{k}"] for k in ("steps", "z")})

    def mean_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(steps (T + 1,), z (T + 1, k))``: the seed-mean z(t), from step 0 (z = 0)."""
        z = np.mean([np.asarray(r.z, np.float64) for r in self.recorders], axis=0)
        steps = np.concatenate([[0], self.recorders[0].steps])
        return steps, np.concatenate([np.zeros((1, z.shape[1])), z])
