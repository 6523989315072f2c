"""One record-hook protocol for every training loop of ntkdyn.

The full-batch loop (:func:`ntkdyn.train.fullbatch.train_fullbatch`), the minibatch epoch loop
(:func:`ntkdyn.train.epochs.train_epochs`) and the linearized loop
(:func:`ntkdyn.linearized.train_gd`) hand the same :class:`Record` to the same hooks, so metrics,
progress, the feature-response recorder z(t) = Uᵀ Y (f_t − f_0) and checkpoints are written once and
work in every loop. A hook is any callable ``hook(record) -> None`` with an ``every`` attribute: the
loop calls it after every ``every``-th step (on the host, outside compiled code) and once more at
the end of training (``record.final``), never twice for the same step.

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["Hook", "Record", "call_hooks", "check_hooks", "every", "due"]


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


def every(n: int, fn: Callable[[Record], None]) -> Hook:
    """Make a hook from a function: ``fn(record)`` after every ``n``-th step and at the end.

    Args:
        n: steps between calls (≥ 1).
        fn: ``record -> None``.

    Raises:
        ValueError: ``n`` is not an integer ≥ 1 or ``fn`` is not callable.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"every: expected an integer >= 1 (steps between calls), got {n!r}")
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
