"""Data-parallel minibatch training of a batch-norm classifier with one logit: ERM, class-conditional SD, Group DRO.

The batch axis is sharded over every device of a 1-D mesh (``jax.sharding``), parameters and
optimiser state are replicated; XLA inserts the all-reduces, so the step computes exactly what
one device would on the whole global batch — batch-norm statistics included — up to float
summation order. Across hosts, :func:`initialize_multihost` calls ``jax.distributed.initialize``
and every process feeds its slice of each global batch (:func:`shard_batch`).

The training objective is chosen by passing an object (Pezeshki et al. 2021, Sec. 5 and Table 2):

* :class:`ERM`: mean logistic loss.
* :class:`ClassConditionalSD`: logistic loss + Σ_c λ_c · mean_{y=c}(ŷ − γ_c)².
* :class:`GroupDRO`: Σ_g q_g L_g with online weights q (Sagawa et al. 2020).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float

from ntkdyn.losses import (
    GroupDROState,
    binary_accuracy,
    class_conditional_sd_penalty,
    group_dro_init,
    group_dro_update,
    logistic_loss,
    to_signed,
)

__all__ = [
    "ERM",
    "ClassConditionalSD",
    "GroupDRO",
    "MinibatchState",
    "initialize_multihost",
    "data_mesh",
    "replicate",
    "shard_batch",
    "gather",
    "init_train_state",
    "make_train_step",
    "make_eval_step",
]

DATA_AXIS = "data"


class ERM(NamedTuple):
    """Empirical risk minimisation: mean logistic loss softplus(−y± ŷ)."""

    def loss(self, logits, y01, groups, dro: GroupDROState):
        """(loss, new Group DRO state — unchanged)."""
        return logistic_loss(logits, to_signed(y01).astype(logits.dtype)), dro


class ClassConditionalSD(NamedTuple):
    """Class-conditional Spectral Decoupling (Pezeshki et al. 2021, Sec. 5, CelebA).

    loss = mean logistic + λ₀·mean_{y=0}(ŷ − γ₀)² + λ₁·mean_{y=1}(ŷ − γ₁)², paper values
    λ = (0.1, 0.1), γ = (0.44, 2.5).

    Attributes:
        lam: (λ₀, λ₁).
        gamma: (γ₀, γ₁).
    """

    lam: tuple[float, float] = (0.1, 0.1)
    gamma: tuple[float, float] = (0.44, 2.5)

    def loss(self, logits, y01, groups, dro: GroupDROState):
        """(loss, unchanged Group DRO state)."""
        y = y01.astype(logits.dtype)
        base = logistic_loss(logits, 2.0 * y - 1.0)
        return base + class_conditional_sd_penalty(logits, y, lam=self.lam, gamma=self.gamma), dro


class GroupDRO(NamedTuple):
    """Online Group DRO (Sagawa et al. 2020, Alg. 1): q_g ∝ q_g·exp(η (L_g + C/√n_g)), loss Σ_g q_g L_g.

    Attributes:
        step_size: η (0.01 in Sagawa et al.).
        adjustment: C of the generalisation adjustment (0: none).
        group_counts: training-set size of each group (needed when ``adjustment > 0``).
    """

    step_size: float = 0.01
    adjustment: float = 0.0
    group_counts: tuple[int, ...] = (1, 1, 1, 1)

    def loss(self, logits, y01, groups, dro: GroupDROState):
        """(robust loss, updated group weights)."""
        per = logistic_loss(logits, to_signed(y01).astype(logits.dtype), reduction="none")
        adj = self.adjustment if self.adjustment else None
        return group_dro_update(
            dro,
            per,
            groups,
            step_size=self.step_size,
            adjustment=adj,
            group_counts=np.asarray(self.group_counts, np.float32) if adj else None,
        )


class MinibatchState(NamedTuple):
    """Everything training changes: step, parameters, batch-norm statistics, optimiser and Group DRO state."""

    step: Array
    params: Any
    batch_stats: Any
    opt_state: Any
    dro: GroupDROState


# ---- devices -----------------------------------------------------------------------------------


def initialize_multihost(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Join a multi-host run through ``jax.distributed.initialize`` when one is configured.

    Call it once per process before touching any device. Arguments fall back to ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``;
    on clusters JAX detects (SLURM, TPU pods) ``jax.distributed.initialize()`` with no arguments works,
    which is what ``NTKDYN_MULTIHOST=1`` asks for.

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
    variables: Mapping[str, Any], optimizer: optax.GradientTransformation, num_groups: int = 4
) -> MinibatchState:
    """Initial :class:`MinibatchState` from model variables ``{"params", "batch_stats"}``.

    Args:
        variables: model variables.
        optimizer: an optax transformation (the paper: ``optax.adam(1e-5)``).
        num_groups: groups for Group DRO's weights.

    Returns:
        Step 0, the variables, the optimiser's initial state and uniform group weights.
    """
    params = variables["params"]
    return MinibatchState(
        jnp.zeros((), jnp.int32),
        params,
        variables.get("batch_stats", {}),
        optimizer.init(params),
        group_dro_init(num_groups),
    )


def make_train_step(
    apply_fn: Callable,
    optimizer: optax.GradientTransformation,
    method: ERM | ClassConditionalSD | GroupDRO,
    *,
    donate: bool = True,
) -> Callable[[MinibatchState, Mapping[str, Array]], tuple[MinibatchState, dict[str, Array]]]:
    """A jitted step ``(state, batch) -> (state, metrics)`` on a (sharded) global batch.

    ``apply_fn(variables, images, train=True, mutable=["batch_stats"])`` is a Flax Linen apply
    (e.g. ``ResNet.apply``) returning (n, 1) logits. Metrics: ``loss`` (the objective), ``nll``
    (mean logistic loss), ``acc`` (mean accuracy of the batch) and ``q`` (Group DRO weights).

    Args:
        apply_fn: the model's apply function.
        optimizer: the optax transformation.
        method: :class:`ERM`, :class:`ClassConditionalSD` or :class:`GroupDRO`.
        donate: donate the input state's buffers (saves memory; the input state becomes unusable).
    """
    if not isinstance(method, (ERM, ClassConditionalSD, GroupDRO)):
        raise ValueError(
            f"method: expected ERM(), ClassConditionalSD() or GroupDRO(), got {method!r}"
        )

    def step(state: MinibatchState, batch):
        def objective(params):
            logits, updates = apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image"],
                train=True,
                mutable=["batch_stats"],
            )
            logits = logits[:, 0].astype(jnp.float32)
            loss, dro = method.loss(logits, batch["y"], batch["group"], state.dro)
            return loss, (logits, updates["batch_stats"], dro)

        (loss, (logits, batch_stats, dro)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        y = batch["y"].astype(jnp.float32)
        metrics = {
            "loss": loss,
            "nll": logistic_loss(logits, 2.0 * y - 1.0),
            "acc": binary_accuracy(logits, y),
            "q": dro.q,
        }
        return MinibatchState(state.step + 1, params, batch_stats, opt_state, dro), metrics

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
