"""Data-parallel minibatch training of a batch-norm classifier with one logit.

The batch axis is sharded over every device of a 1-D mesh (``jax.sharding``), parameters and
optimiser state are replicated; XLA inserts the all-reduces, so the step computes exactly what
one device would on the whole global batch — batch-norm statistics included — up to float
summation order. Across hosts, :func:`initialize_multihost` calls ``jax.distributed.initialize``
and every process feeds its slice of each global batch (:func:`shard_batch`).

The training objective is an object of :mod:`ntkdyn.objectives` (Pezeshki et al. 2021, Sec. 5 and
Table 2: ``ERM()``, ``ClassConditionalSD(coef, target)``, ``GroupDRO(step_size, adjustment,
group_counts)``); its state (Group DRO's weights q) travels in :class:`MinibatchState`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, Int

from ntkdyn.losses import binary_accuracy
from ntkdyn.objectives import Objective

__all__ = [
    "MinibatchState",
    "initialize_multihost",
    "data_mesh",
    "replicate",
    "shard_batch",
    "gather",
    "init_train_state",
    "make_train_step",
    "make_eval_step",
    "predict_logits",
    "lead_first",
]

DATA_AXIS = "data"


class MinibatchState(NamedTuple):
    """Everything training changes: step, parameters, batch-norm statistics, optimiser and objective state.

    Attributes:
        step: number of steps taken (the objective's schedules read it).
        params: model parameters.
        batch_stats: batch-norm running statistics.
        opt_state: the optax state.
        objective_state: the objective's state, ``objective.init()`` (``()`` for all but Group DRO).
    """

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    objective_state: Any


# ---- devices -----------------------------------------------------------------------------------


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-host run through ``jax.distributed.initialize`` when one is configured.

    Call it in every process before touching any device; later calls return at once. Arguments
    fall back to ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``; on
    clusters JAX detects (SLURM, TPU pods) ``jax.distributed.initialize()`` with no arguments
    works, which is what ``NTKDYN_MULTIHOST=1`` asks for. On CPUs the collectives go through gloo.

    Args:
        coordinator_address: ``host:port`` of process 0.
        num_processes: number of processes.
        process_id: this process's index.

    Returns:
        True when the distributed runtime was initialised, False for a single-process run.
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    if coordinator_address is None and os.environ.get("NTKDYN_MULTIHOST") != "1":
        return False
    if jax.distributed.is_initialized():  # a second call (e.g. a command, then its experiment)
        return True
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D device mesh with the axis ``"data"`` along which batches are sharded.

    Args:
        devices: the devices (default: all devices of all processes, ``jax.devices()``).

    Returns:
        The mesh.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a copy of a PyTree on every device of ``mesh`` (parameters, optimiser state).

    Args:
        tree: arrays (numpy or JAX).
        mesh: the data mesh.

    Returns:
        The tree with every leaf fully replicated over the mesh.

    Always a copy, never an alias of the input: the training step donates its state, which must
    not delete arrays the caller still holds (e.g. initial weights shared by several runs).
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    copy = lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x  # noqa: E731
    return jax.tree.map(lambda x: jax.device_put(copy(x), sharding), tree)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """Assemble global arrays sharded along the batch axis from this process's slice of a batch.

    Args:
        batch: this process's rows (all of them in a single-process run).
        mesh: the data mesh.

    Raises:
        ValueError: the rows do not divide over this process's devices.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    local = len(mesh.local_devices)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.shape[0] % local:
            raise ValueError(
                f"batch[{k!r}]: {v.shape[0]} rows do not divide over {local} local devices; "
                "choose a batch size divisible by the device count"
            )
        out[k] = jax.make_array_from_process_local_data(sharding, v)
    return out


def gather(x: Array) -> np.ndarray:
    """Collect a (possibly multi-host) batch-sharded array into one host numpy array on every process.

    Args:
        x: a global array.

    Returns:
        The whole array in host memory.
    """
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# ---- training ----------------------------------------------------------------------------------


def init_train_state(
    variables: Mapping[str, Any],
    optimizer: optax.GradientTransformation,
    objective: Objective | None = None,
) -> MinibatchState:
    """Initial :class:`MinibatchState` from model variables ``{"params", "batch_stats"}``.

    Args:
        variables: model variables.
        optimizer: an optax transformation (the paper: ``optax.adam(1e-5)``).
        objective: the training objective, whose ``init()`` gives the objective state (``None``:
            a stateless objective such as ``ERM()``).

    Returns:
        Step 0, the variables, the optimiser's initial state and the objective's initial state.
    """
    params = variables["params"]
    return MinibatchState(
        jnp.zeros((), jnp.int32),
        params,
        variables.get("batch_stats", {}),
        optimizer.init(params),
        () if objective is None else objective.init(),
    )


def make_train_step(
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    objective: Objective,
    *,
    donate: bool = True,
) -> Callable[[MinibatchState, Mapping[str, Array]], tuple[MinibatchState, dict[str, Array]]]:
    """A jitted step ``(state, batch) -> (state, metrics)`` on a (sharded) global batch.

    θ ← optimizer(∇_θ L(f_θ(x), y; groups, state.step)), with L the objective's loss on the (n,)
    logits of ``apply_fn(variables, images, train=True, mutable=["batch_stats"])`` (a Flax Linen
    apply such as ``ResNet.apply``, returning (n, 1) logits). ``batch`` holds ``image``, ``y``
    (labels in {0, 1}) and ``group`` (ids for Group DRO). Metrics: ``loss`` (the objective),
    ``acc`` (batch accuracy) and the objective's own (``nll``; ``q`` and ``group_loss`` for Group
    DRO; ``penalty`` for SD).

    Args:
        apply_fn: the model's apply function.
        optimizer: the optax transformation.
        objective: an :class:`ntkdyn.objectives.Objective`, e.g. ``ERM()``,
            ``ClassConditionalSD()`` or ``GroupDRO(step_size=0.01)``; its state is
            ``state.objective_state`` (see :func:`init_train_state`).
        donate: donate the input state's buffers (saves memory; the input state becomes unusable).

    Raises:
        ValueError: ``objective`` is not an Objective.
    """
    if not isinstance(objective, Objective):
        raise ValueError(
            "objective: expected an ntkdyn.objectives object such as ERM(), ClassConditionalSD() "
            f"or GroupDRO(), got {objective!r}"
        )

    def step(state: MinibatchState, batch):
        def loss_fn(params):
            logits, updates = apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
            )
            logits = logits[:, 0].astype(jnp.float32)
            loss, (obj_state, metrics) = objective.loss(
                logits,
                batch["y"],
                step=state.step,
                state=state.objective_state,
                groups=batch["group"],
                params=params,
            )
            return loss, (logits, updates["batch_stats"], obj_state, metrics)

        (loss, (logits, batch_stats, obj_state, obj_metrics)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "acc": binary_accuracy(logits, batch["y"].astype(jnp.float32)),
            **obj_metrics,
        }
        new = MinibatchState(state.step + 1, params, batch_stats, opt_state, obj_state)
        return new, metrics

    return jax.jit(step, donate_argnums=(0,) if donate else ())


def make_eval_step(
    apply_fn: Callable,
) -> Callable[[MinibatchState, Float[Array, "n h w 3"]], Float[Array, " n"]]:
    """A jitted ``(state, images) -> logits (n,)`` in eval mode (running batch-norm statistics).

    Args:
        apply_fn: the model's Flax Linen apply function, returning (n, 1) logits.

    Returns:
        The jitted evaluation function; sharded images give sharded logits.
    """

    def step(state: MinibatchState, images):
        out = apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
        )
        return out[:, 0].astype(jnp.float32)

    return jax.jit(step)


def predict_logits(
    eval_step: Callable[[MinibatchState, Array], Array],
    state: MinibatchState,
    batches: Iterable[Mapping[str, np.ndarray]],
    mesh: Mesh,
) -> tuple[Int[np.ndarray, " n"], Float[np.ndarray, " n"]]:
    """Logits of every example of padded, masked batches, on every process.

    Each batch holds this process's rows of ``image``, ``index`` (example ids) and ``mask`` (0 for
    the padding that makes a final partial batch divisible by the devices, see
    :func:`ntkdyn.data.celeba.iterate_batches`).

    Args:
        eval_step: from :func:`make_eval_step`.
        state: the (replicated) training state.
        batches: the batches, each sharded over ``mesh`` here.
        mesh: the data mesh.

    Returns:
        ``(index, logits)`` of the unpadded examples, in batch order.
    """
    logits, masks, index = [], [], []
    for batch in batches:
        arrays = shard_batch({k: batch[k] for k in ("image", "mask", "index")}, mesh)
        logits.append(gather(eval_step(state, arrays["image"])))
        masks.append(gather(arrays["mask"]))
        index.append(gather(arrays["index"]))
    if not logits:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    keep = np.concatenate(masks) > 0
    return np.concatenate(index)[keep], np.concatenate(logits)[keep]


def lead_first(write: Callable[[], None], label: str) -> None:
    """Run ``write`` on process 0, wait for every process, then run it on the others too.

    For files every process reads (e.g. a synthetic dataset): with a shared file system the others
    find them written (``write`` should then do nothing); without one, each writes its own copy,
    which must be the same bytes (fixed seed).

    Args:
        write: makes the files if they are missing.
        label: names the barrier (:func:`jax.experimental.multihost_utils.sync_global_devices`).
    """
    if jax.process_index() == 0:
        write()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(label)
        write()
