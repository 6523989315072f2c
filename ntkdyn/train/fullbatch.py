"""Full-batch training of many seeds (restarts) at once, in one compiled call.

Every step sees the whole training set, so a run is a pure function of (initial parameters, data,
key): the steps become a ``jax.lax.scan``, the seeds a ``jax.vmap`` (or a ``jax.lax.map``), and the
seed axis can be split over all local devices. This is the training loop of the paper's two-moons
toy (Pezeshki et al. 2021, §3, Fig. 1–3) and of Colored MNIST (§4, Table 1), where penalties are
annealed with the step number.

Contract
--------
``loss_fn(params, model_state, batch, step, key) -> (loss, (new_model_state, metrics))``

* ``params``: one seed's parameter PyTree (differentiated);
* ``model_state``: one seed's non-trained state, e.g. batch-norm running statistics (``None`` if
  the model has none); the updated state is returned inside the auxiliary output;
* ``batch``: the full training batch (shared by all seeds, or this seed's slice when
  ``batch_axis=0``);
* ``step``: the global step number (int32 scalar, 0-based), so penalties can anneal;
* ``key``: this step's PRNG key, ``jax.random.fold_in(seed_key, step)`` — fresh per step and per seed
  (dropout masks);
* ``metrics``: a dict of scalars to log (may be empty); ``"loss"`` is added automatically.

Every argument carrying a seed axis (``params``, ``model_state``, ``keys`` and, with
``batch_axis=0``, ``batch``) is *stacked*: leading axis of size S = number of seeds.

Logging: with ``log_every=k`` the steps run as ``num_steps // k`` chunks of k; after each chunk the
metrics of the chunk's last step (computed on the parameters before that step's update) and
``eval_fn(params, model_state, batch)`` on the parameters after the chunk are recorded, as scan
outputs (no host round trip). A remainder of ``num_steps % k`` steps runs after the last record.

Seeds and devices: one value, ``layout=SeedLayout(axis, chunk, devices)``
(:mod:`ntkdyn.train.layout`). ``SeedAxis.VMAP`` batches the seeds into each step (one large step
instead of S small ones: best on a GPU, and measured fastest on a 2-core CPU for the paper's
two-moons nets too); ``SeedAxis.MAP`` trains them one after the other inside the same compiled call;
a ``chunk`` of k with ``VMAP`` batches k seeds per step and runs the chunks one after another, which
on a CPU keeps a large full-batch step's working set in cache (Colored MNIST: ten restarts in one
step run up to 10 % slower per restart than two at a time). With ``devices`` the seed axis is
split over a 1-D ``jax.sharding.Mesh`` with ``jax.shard_map``; S need not be a multiple of the
device count: the seed axis is padded by repeating the first seed, and the padding is removed from
every output.

Resuming: with ``checkpoints`` (:class:`ntkdyn.train.checkpoint.Checkpoints`) the loop runs in
host-called chunks (as with hooks) and saves the whole carry — parameters, model and optimizer
state, step counters, the last metrics — with the history so far and the hooks' records between
chunks; a resumed run continues the same sequence of compiled calls from there, so its results
equal an uninterrupted run's bit for bit.

Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from ntkdyn.train.fullbatch import train_fullbatch
    >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = jnp.sign(x[:, 0] + 0.1)
    >>> def loss_fn(params, model_state, batch, step, key):
    ...     x, y = batch
    ...     logits = (x @ params["w"])[:, 0] + params["b"]
    ...     return jnp.mean(jax.nn.softplus(-y * logits)), (model_state, {})
    >>> keys = jax.random.split(jax.random.key(0), 3)          # three seeds
    >>> params = jax.vmap(lambda k: {"w": jax.random.normal(k, (1, 1)), "b": jnp.zeros(())})(keys)
    >>> result = train_fullbatch(loss_fn, optax.sgd(0.1), params, (x, y), keys=keys,
    ...                          num_steps=100, log_every=10)
    >>> result.history["loss"].shape                        # (seeds, records)
    (3, 10)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Int, PyTree

from ntkdyn.runs.resume import deferring
from ntkdyn.train.checkpoint import Checkpoints, ChunkCheckpoints
from ntkdyn.train.hooks import Hook, Record, call_hooks, check_hooks, chunk_steps, due
from ntkdyn.train.layout import SeedAxis, SeedLayout

__all__ = [
    "TrainState",
    "TrainResult",
    "classifier_loss",
    "evaluate_seeds",
    "train_fullbatch",
]

LossFn = Callable[
    [PyTree, PyTree, PyTree, Array, Array], tuple[Array, tuple[PyTree, dict[str, Array]]]
]
EvalFn = Callable[[PyTree, PyTree, PyTree], dict[str, Array]]


class TrainState(NamedTuple):
    """Stacked training state of all seeds (leading axis S on every leaf).

    Attributes:
        params: parameter PyTree.
        model_state: non-trained model state (e.g. batch-norm statistics), or ``None``.
        opt_state: the optax optimizer state.
        step: (S,) number of steps taken.
    """

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    step: Int[Array, " S"]


class TrainResult(NamedTuple):
    """What :func:`train_fullbatch` returns.

    Attributes:
        state: the final :class:`TrainState` (leading seed axis S).
        history: dict of logged arrays shaped (S, R, ...) with R = ``num_steps // log_every``
            records: ``"loss"``, the ``loss_fn`` metrics and the ``eval_fn`` outputs.
        steps: (R,) numpy array, the number of steps taken at each record (k, 2k, …).
    """

    state: TrainState
    history: dict[str, Array]
    steps: np.ndarray


def _leading(tree: PyTree) -> set[int]:
    return {np.shape(leaf)[0] if np.ndim(leaf) else -1 for leaf in jax.tree_util.tree_leaves(tree)}


def _pad(tree: PyTree, pad: int) -> PyTree:
    """The leading axis padded by repeating entry 0 ``pad`` times.

    Concrete leaves become numpy arrays, so that they go from the host straight into their shards;
    traced leaves (inside an outer ``jax.jit``) are padded with ``jax.numpy``.
    """

    def one(a):
        xp = jnp if isinstance(a, jax.core.Tracer) else np
        a = a if xp is jnp else np.asarray(a)
        return xp.concatenate([a, xp.repeat(a[:1], pad, axis=0)], axis=0) if pad else a

    return jax.tree_util.tree_map(one, tree)


def _unpad(tree: PyTree, num: int) -> PyTree:
    return jax.tree_util.tree_map(lambda a: a[:num], tree)


def train_fullbatch(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    params: PyTree,
    batch: PyTree,
    *,
    keys: Array,
    num_steps: int,
    model_state: PyTree = None,
    log_every: int | None = None,
    eval_fn: EvalFn | None = None,
    batch_axis: int | None = None,
    layout: SeedLayout | None = None,
    unroll: int = 1,
    compiler_options: Mapping[str, Any] | None = None,
    hooks: Sequence[Hook] | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainResult:
    """Train S seeds for ``num_steps`` full-batch steps: θ_{t+1} = θ_t + optimizer(∇_θ L(θ_t; t)).

    The whole run is one ``jax.jit``-compiled call: a ``lax.scan`` over steps (unrolled ``unroll``
    times), inside a ``vmap``/``lax.map`` over seeds, inside a ``shard_map`` over devices, as ``layout``
    (:class:`ntkdyn.train.layout.SeedLayout`) says. Seed s uses the keys ``fold_in(keys[s], t)`` at
    step t, so results do not depend on the seed layout or the number of devices (up to float
    rounding). See the module docstring for the ``loss_fn`` contract.

    Args:
        loss_fn: ``(params, model_state, batch, step, key) -> (loss, (new_model_state, metrics))``.
        optimizer: an optax gradient transformation (weight decay, schedules… are its business).
        params: stacked initial parameters, leading axis S.
        batch: the full training batch (any PyTree of arrays).
        keys: (S,) typed keys or (S, 2) raw keys, one per seed.
        num_steps: number of steps, ≥ 1.
        model_state: stacked initial model state, or ``None``.
        log_every: record metrics every this many steps (≥ 1); ``None`` records nothing.
        eval_fn: ``(params, model_state, batch) -> dict of arrays`` evaluated at each record.
        batch_axis: ``None`` if all seeds share ``batch``; ``0`` if every leaf of ``batch`` has a
            leading seed axis S (e.g. one dataset draw per seed).
        layout: :class:`~ntkdyn.train.layout.SeedLayout` of the seed axis (vmap or map, chunk,
            devices); ``None``: all seeds vmapped on the default device.
        unroll: ``unroll`` of the step scan (≥ 1); a few steps per loop iteration cut loop overhead.
        compiler_options: XLA compiler options for the compiled call (e.g.
            :func:`eigen_matmul_options`); ``None``: the defaults. Inside an outer ``jax.jit`` the
            outer call's options apply instead.
        hooks: record hooks (:mod:`ntkdyn.train.hooks`), called on the host with a
            :class:`~ntkdyn.train.hooks.Record` (stacked params, the last step's metrics per seed)
            after every ``every``-th step and at the end. With hooks the loop compiles one chunk
            of c steps, c the gcd of the hooks' ``every`` and ``log_every``, and calls it from the
            host; the history and final state equal the hook-less run's (up to float rounding).
        checkpoints: :class:`~ntkdyn.train.checkpoint.Checkpoints`: save the loop's state (the
            stacked carry, the history so far and the state of hooks that have one, see
            :mod:`ntkdyn.train.hooks`) every ``checkpoints.every`` steps, rounded up to a multiple
            of the chunk length c (so the chunks, and the numbers, are those of a run without
            checkpoints), at the end, and when an interrupt is pending; with ``resume``, continue
            from the newest one. A resumed run returns exactly what an uninterrupted one returns
            (same inputs, same seed layout).

    Returns:
        :class:`TrainResult` with the final stacked state, the history and the record steps.

    Raises:
        ValueError: on a non-positive ``num_steps``/``log_every``/``unroll``, on leading axes that
            disagree with the number of keys, on an unknown ``batch_axis``/``layout``, or on
            ``compiler_options`` that are not a mapping of option names, or on ``hooks`` that
            are not record hooks.
    """
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
    if log_every is not None and (not isinstance(log_every, (int, np.integer)) or log_every < 1):
        raise ValueError(f"log_every: expected an integer >= 1 or None, got {log_every!r}")
    if not isinstance(unroll, (int, np.integer)) or unroll < 1:
        raise ValueError(f"unroll: expected an integer >= 1, got {unroll!r}")
    if batch_axis not in (None, 0):
        raise ValueError(
            f"batch_axis: expected None (shared batch) or 0 (per-seed batch), got {batch_axis!r}"
        )
    layout = SeedLayout() if layout is None else layout
    if not isinstance(layout, SeedLayout):
        raise ValueError(
            f"layout: expected a SeedLayout (e.g. SeedLayout.parse('vmap:2')) or None, got {layout!r}"
        )
    if compiler_options is not None and (
        not isinstance(compiler_options, Mapping)
        or not all(isinstance(k, str) for k in compiler_options)
    ):
        raise ValueError(
            "compiler_options: expected a mapping from XLA option names to values (e.g. "
            f"eigen_matmul_options()) or None, got {compiler_options!r}"
        )
    if not isinstance(keys, jax.Array):
        keys = jnp.asarray(keys)
    if keys.ndim < 1:
        raise ValueError(
            f"keys: expected one key per seed (shape (S,) typed or (S, 2) raw), got shape {keys.shape}"
        )
    num_seeds = keys.shape[0]
    for name, tree in (("params", params), ("model_state", model_state)) + (
        (("batch", batch),) if batch_axis == 0 else ()
    ):
        lead = _leading(tree)
        if lead and lead != {num_seeds}:
            raise ValueError(
                f"{name}: every leaf needs a leading seed axis of size {num_seeds} (the number of keys), "
                f"got leading sizes {sorted(lead)}; stack one entry per seed"
            )
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("params: got an empty PyTree; pass the stacked model parameters")

    hooks = check_hooks(hooks)
    n_records = 0 if log_every is None else num_steps // log_every
    tail = num_steps if log_every is None else num_steps - n_records * log_every

    def step_fn(carry, key, batch):
        params, model_state, opt_state, step, _last = carry
        step_key = jax.random.fold_in(key, step)
        (loss, (new_model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, model_state, batch, step, step_key
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, new_model_state, opt_state, step + 1, {"loss": loss, **metrics})

    def init_carry(params, model_state, key, batch):
        # Shapes of the logged metrics, to carry "the last step's metrics" through the scan.
        loss0, (_, metrics0) = jax.eval_shape(
            loss_fn, params, model_state, batch, jnp.int32(0), key
        )
        last0 = {"loss": jnp.zeros(loss0.shape, loss0.dtype)}
        last0.update({k: jnp.zeros(v.shape, v.dtype) for k, v in metrics0.items()})
        return (params, model_state, optimizer.init(params), jnp.int32(0), last0)

    def run_steps(carry, key, batch, length):
        if length == 0:
            return carry
        carry, _ = jax.lax.scan(
            lambda c, _: (step_fn(c, key, batch), None),
            carry,
            None,
            length=length,
            unroll=min(unroll, length),
        )
        return carry

    def evaluate(carry, batch):
        params, model_state, _, _, last = carry
        record = dict(last)
        if eval_fn is not None:
            record.update(eval_fn(params, model_state, batch))
        return record

    seeds = _Seeds(layout, num_seeds, batch_axis, compiler_options)
    if hooks or checkpoints is not None:
        return _train_chunked(
            seeds,
            init_carry,
            run_steps,
            evaluate,
            params,
            model_state,
            keys,
            batch,
            num_steps=num_steps,
            log_every=log_every,
            hooks=hooks,
            checkpoints=checkpoints,
        )

    def one_seed(seeded, key, batch):
        carry = init_carry(*seeded, key, batch)
        history = {}
        if n_records:

            def chunk_fn(carry, _):
                carry = run_steps(carry, key, batch, log_every)
                return carry, evaluate(carry, batch)

            carry, history = jax.lax.scan(chunk_fn, carry, None, length=n_records)
        carry = run_steps(carry, key, batch, tail)
        params, model_state, opt_state, step, _ = carry
        return TrainState(params, model_state, opt_state, step), history

    args = seeds.put((params, model_state), keys, batch)
    state, history = seeds.take(seeds.compile(one_seed)(*args))
    steps = np.arange(1, n_records + 1, dtype=np.int64) * (log_every or 0)
    return TrainResult(state, dict(history), steps)


def _train_chunked(
    seeds,
    init_carry,
    run_steps,
    evaluate,
    params,
    model_state,
    keys,
    batch,
    *,
    num_steps,
    log_every,
    hooks,
    checkpoints=None,
) -> TrainResult:
    """The loop with hooks: one compiled chunk of steps, called from the host between hook calls."""
    chunk = chunk_steps(hooks, log_every)
    seeded, keys, batch = seeds.put((params, model_state), keys, batch)
    carry = seeds.compile(lambda sd, key, b: init_carry(*sd, key, b))(seeded, keys, batch)
    compiled: dict[int, Callable] = {}
    record_fn = seeds.compile(lambda c, key, b: evaluate(c, b))
    history: list[dict[str, Any]] = []
    step = 0
    if checkpoints is not None:
        saver = ChunkCheckpoints(checkpoints, chunk, hooks, {"num_steps": num_steps})
        found = saver.restore(carry)
        if found is not None:
            step, carry, arrays, meta = found
            history = [
                {k[len("history/") :]: v[:, r] for k, v in arrays.items() if k.startswith("history/")}
                for r in range(int(meta["records"]))
            ]  # fmt: skip
    with deferring() if checkpoints is not None else contextlib.nullcontext():
        while step < num_steps:
            length = min(chunk, num_steps - step)
            if length not in compiled:
                compiled[length] = seeds.compile(
                    lambda c, key, b, n=length: run_steps(c, key, b, n)
                )
            carry = compiled[length](carry, keys, batch)
            step += length
            logged = log_every is not None and step % log_every == 0
            if logged:
                history.append(seeds.take(record_fn(carry, keys, batch)))
            if due(hooks, step, last_step=num_steps):
                p, ms, opt, count, last = seeds.take(carry)
                metrics = {k: np.asarray(v) for k, v in last.items()}
                call_hooks(
                    hooks,
                    Record(
                        step=step,
                        params=p,
                        model_state=ms,
                        metrics=metrics,
                        final=step == num_steps,
                        state=TrainState(p, ms, opt, count),
                    ),
                    last_step=num_steps,
                )
            if checkpoints is not None:
                saver.after_chunk(step, carry, lambda: _history_arrays(history),
                                  {"records": len(history)})  # fmt: skip
    p, ms, opt, count, _ = seeds.take(carry)
    stacked = {
        k: jnp.stack([h[k] for h in history], axis=1) for k in (history[0] if history else {})
    }
    steps = np.arange(1, len(history) + 1, dtype=np.int64) * (log_every or 0)
    return TrainResult(TrainState(p, ms, opt, count), stacked, steps)


def _history_arrays(history: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The history records as arrays ``history/<name>`` (records on axis 1, after the seeds)."""
    if not history:
        return {}
    return {f"history/{k}": np.stack([np.asarray(h[k]) for h in history], axis=1)
            for k in history[0]}  # fmt: skip


class _Seeds:
    """The seed axis as a :class:`SeedLayout` says: vmapped or mapped, chunked, over devices.

    :meth:`put` pads the seed axis to a multiple of the device count and places every input in its
    shards, :meth:`compile` maps a one-seed function ``fn(seeded, key, batch)`` over the (padded)
    seed axis in one jitted call, :meth:`take` removes the padding from its outputs.
    """

    def __init__(self, layout, num_seeds, batch_axis, compiler_options):
        self.layout, self.num_seeds, self.batch_axis = layout, num_seeds, batch_axis
        self.options = dict(compiler_options) if compiler_options else None
        devices = layout.devices
        self.pad = 0 if devices is None else (-num_seeds) % len(devices)
        self.mesh = None if devices is None else Mesh(np.asarray(devices), ("seeds",))
        self.key_impl = None

    def _map(self, fn):
        seed_axis, seed_chunk = self.layout.axis, self.layout.chunk
        batch_in = 0 if self.batch_axis == 0 else None

        def all_seeds(seeded, keys, batch):
            local_seeds = keys.shape[0]
            if seed_axis is SeedAxis.VMAP and (seed_chunk is None or seed_chunk >= local_seeds):
                return jax.vmap(fn, in_axes=(0, 0, batch_in))(seeded, keys, batch)
            chunk = seed_chunk if seed_axis is SeedAxis.VMAP else None
            if batch_in is None:
                return jax.lax.map(lambda a: fn(*a, batch), (seeded, keys), batch_size=chunk)
            return jax.lax.map(lambda a: fn(*a), (seeded, keys, batch), batch_size=chunk)

        return all_seeds

    def put(self, seeded, keys, batch):
        """(seeded, keys, batch) ready for the compiled calls (padded and sharded with devices)."""
        if self.mesh is None:
            return seeded, keys, batch
        # Typed keys travel as their raw bits; every input goes from the host straight into its
        # shards (slicing device arrays into shards would compile one program per input shape).
        if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            self.key_impl = jax.random.key_impl(keys)
            keys = jax.random.key_data(keys)
        seeded, keys = _pad(seeded, self.pad), _pad(keys, self.pad)
        if self.batch_axis == 0:
            batch = _pad(batch, self.pad)
        raw = (seeded, keys, batch)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(raw)):
            return raw
        seed_spec = PartitionSpec("seeds")
        batch_spec = seed_spec if self.batch_axis == 0 else PartitionSpec()
        return tuple(
            jax.device_put(a, jax.sharding.NamedSharding(self.mesh, spec))
            for a, spec in zip(raw, (seed_spec, seed_spec, batch_spec), strict=True)
        )

    def compile(self, fn):
        """``fn(seeded, key, batch) -> out`` of one seed, as one jitted call over all seeds."""
        mapped = all_seeds = self._map(fn)
        if self.mesh is not None:
            key_impl = self.key_impl

            def sharded(seeded, keys, batch):
                if key_impl is not None:
                    keys = jax.random.wrap_key_data(keys, impl=key_impl)
                return all_seeds(seeded, keys, batch)

            seed_spec = PartitionSpec("seeds")
            batch_spec = seed_spec if self.batch_axis == 0 else PartitionSpec()
            mapped = jax.shard_map(
                sharded,
                mesh=self.mesh,
                in_specs=(seed_spec, seed_spec, batch_spec),
                out_specs=seed_spec,
                check_vma=False,
            )
        return jax.jit(mapped, compiler_options=self.options)

    def take(self, tree):
        """``tree`` without the padding of the seed axis."""
        return _unpad(tree, self.num_seeds) if self.pad else tree


def evaluate_seeds(fn: Callable[..., Any], *stacked: PyTree) -> dict[str, np.ndarray]:
    """``fn`` of each seed's slice of ``stacked`` (leading axis S), as float64 host arrays.

    One ``jit(vmap(fn))`` call: the per-seed evaluation of trained stacked parameters (final
    accuracies, probes) that follows :func:`train_fullbatch`.

    Args:
        fn: ``fn(*one_seed_args) -> PyTree of arrays``.
        stacked: PyTrees with a leading seed axis S on every leaf.

    Returns:
        ``fn``'s PyTree with leading axis S, numpy float64.
    """
    out = jax.jit(jax.vmap(fn))(*stacked)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), out)


def classifier_loss(forward: Callable[..., Any], objective: Any) -> LossFn:
    """The ``loss_fn`` of a one-logit classifier on ``batch = (x, y01)``: the objective, and ``acc``.

    ``forward(params, model_state, x, train=True, key=key) -> (f (n,), new_model_state)``; the
    objective (:class:`ntkdyn.objectives.Objective`) sees the step and the params (an annealed
    penalty, an l2 term); the metrics are the objective's and the accuracy mean(y f > 0), y = 2y01 − 1.

    Args:
        forward: the network in train mode (dropout key, batch-norm statistics).
        objective: the training objective on labels in {0, 1}.

    Returns:
        ``loss_fn(params, model_state, batch, step, key) -> (loss, (model_state, metrics))``.
    """

    def loss_fn(params, model_state, batch, step, key):
        x, y01 = batch
        f, new_state = forward(params, model_state, x, train=True, key=key)
        value, (_, metrics) = objective.loss(f, y01, step=step, params=params)
        acc = jnp.mean(jnp.where(y01 > 0.5, f > 0, f < 0))
        return value, (new_state, {**metrics, "acc": acc})

    return loss_fn
