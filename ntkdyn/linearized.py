"""The linearized network f_lin(θ) = f(θ₀) + Φ(θ − θ₀) and exact full-batch gradient descent on it.

The theory (Pezeshki et al. 2021, Sec. 3) describes a network by its first-order Taylor expansion
at initialisation; its feature responses z = S Vᵀ(θ − θ₀) then follow the discrete map
z_{k+1} = z_k + η·field(z_k) of :func:`ntkdyn.dynamics.gd` exactly. :func:`train_gd` runs the same
full-batch gradient descent on the real network (``linearized=False``) or on its linearization
(``linearized=True``) and records the outputs on the training set, so that measured z(t) of real
training, z(t) of linearized training and the prediction of the theory can be drawn together.

The training objective is an :mod:`ntkdyn.objectives` object (``ERM()`` or
``SpectralDecoupling(coef=c)``) with coupled weight decay ``wd``, as the experiments train; the
descent runs on its *sum* form, the loss the theory's fields are derived from:

    L(θ) = n·L_obj(g(θ)) + (n·wd/2)‖θ − θ₀‖²
         = Σᵢ log(1 + exp(−yᵢ gᵢ(θ))) + (λ_CE/2)‖θ − θ₀‖² + (λ_SD/2)‖g(θ)‖²,

with λ_CE = n·wd and λ_SD = 2c (:func:`ntkdyn.objectives.theory_lam`), g(θ) = f(X; θ) − f(X; θ₀)
when ``center=True`` (the theory's margins m = Yg = Uz start at zero) or g(θ) = f(X; θ) otherwise.
Weight decay pulls towards θ₀, which is what the theory's (λ/2)‖θ‖² means for a linearization
about θ₀. Then for the linearized model with ``center=True``, the run equals
:func:`ntkdyn.dynamics.gd` with ``theory_lam(objective, num_examples=n, weight_decay=wd)``'s field
and λ, with the same η.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

if TYPE_CHECKING:
    from ntkdyn.train.checkpoint import Checkpoints

from ntkdyn._checks import check_outputs, check_x
from ntkdyn.objectives import ERM, Objective, theory_lam
from ntkdyn.runs.resume import deferring
from ntkdyn.tangent import ApplyFn, responses_from_outputs, signed_labels
from ntkdyn.tangent.features import apply_outputs
from ntkdyn.train.hooks import Hook, Record, call_hooks, check_hooks, chunk_steps

__all__ = ["linearize", "GDTrace", "train_gd"]


def linearize(apply_fn: ApplyFn, params0: Any) -> ApplyFn:
    """The linearized model f_lin(θ, x) = f(θ₀, x) + J(θ₀, x)(θ − θ₀) as a pure function.

    Computed with one forward-mode JVP per call (no n × p matrix); differentiable in θ and jittable.

    Args:
        apply_fn: pure ``apply_fn(params, x)``.
        params0: θ₀, the expansion point.

    Returns:
        ``f_lin(params, x)`` with the same output shape as ``apply_fn``.
    """

    def f_lin(params, x):
        dparams = jax.tree.map(lambda a, b: a - b, params, params0)
        out, tangent = jax.jvp(lambda p: apply_fn(p, x), (params0,), (dparams,))
        return out + tangent

    return f_lin


class GDTrace(NamedTuple):
    """Outputs on the training set along a gradient-descent run.

    Attributes:
        steps: (T,) step numbers k = 0, save_every, …, num_steps.
        outputs: (T, n) network outputs f(X; θ_k) (of the linearized model if it was trained).
        f0: (n,) outputs at θ₀.
        params: θ after the last step.
        eta: the step size (time in gradient-flow units is t = η·k, as in :class:`ntkdyn.dynamics.Trajectory`).
    """

    steps: Int[Array, " T"]
    outputs: Float[Array, "T n"]
    f0: Float[Array, " n"]
    params: Any
    eta: float

    @property
    def t(self) -> Float[Array, " T"]:
        """(T,) gradient-flow time η·k of each sample."""
        return self.eta * self.steps

    def responses(self, y: ArrayLike, U: ArrayLike) -> Float[Array, "T d"]:
        """Feature responses z_k = Uᵀ Y (f(X; θ_k) − f(X; θ₀)) of each sample (Sec. 4, Fig. 5).

        Args:
            y: (n,) labels in {−1, +1} or {0, 1}.
            U: (n, d) left singular vectors at θ₀ (:func:`ntkdyn.feature_spectrum`).

        Returns:
            (T, d) responses.

        Raises:
            ValueError: naming ``y`` or ``U`` on a shape or label mismatch.
        """
        return responses_from_outputs(self.outputs, self.f0, y, U)


def _problem(apply_fn, params0, x, y, wd, *, objective, linearized, center):
    """(f0, outputs(θ), loss(θ) -> (value, outputs)) of the module docstring's sum-form loss."""
    n = x.shape[0]
    if linearized:
        f0, jvp = jax.linearize(lambda p: apply_outputs(apply_fn, p, x, None), params0)

        def outputs(p):
            return f0 + jvp(jax.tree.map(lambda a, b: a - b, p, params0))
    else:
        f0 = apply_outputs(apply_fn, params0, x, None)

        def outputs(p):
            return apply_outputs(apply_fn, p, x, None)

    def loss(p):
        out = outputs(p)
        g = out - f0 if center else out
        dp = jax.tree.map(lambda a, b: a - b, p, params0)
        l2 = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(dp))
        value, _ = objective.loss(g, (y + 1) / 2, params=dp)
        return n * value + 0.5 * (n * wd) * l2, out

    return f0, outputs, loss


@functools.partial(
    jax.jit,
    static_argnames=("apply_fn", "objective", "linearized", "center", "num_blocks", "save_every"),
)
def _run(
    apply_fn, params0, x, y, eta, wd, *, objective, linearized, center, num_blocks, save_every
):
    n = x.shape[0]
    f0, outputs, loss = _problem(
        apply_fn, params0, x, y, wd, objective=objective, linearized=linearized, center=center
    )

    def step(p, _):
        grads, _ = jax.grad(loss, has_aux=True)(p)
        return jax.tree.map(lambda a, g: a - eta * g, p, grads), None

    def block(p, _):
        p, _ = jax.lax.scan(step, p, None, length=save_every)
        return p, outputs(p)

    params, outs = jax.lax.scan(block, params0, None, length=num_blocks)
    outs = jnp.concatenate([outputs(params0)[None], outs], axis=0).reshape(num_blocks + 1, n)
    return outs, f0, params


def _run_hooked(
    apply_fn,
    params0,
    x,
    y,
    eta,
    wd,
    *,
    objective,
    linearized,
    center,
    num_steps,
    save_every,
    hooks,
    checkpoints=None,
):
    """:func:`_run` as compiled chunks called from the host, with the hooks called between them
    (and, with ``checkpoints``, the loop's state saved and restored there)."""

    def build(p0):
        return _problem(
            apply_fn, p0, x, y, wd, objective=objective, linearized=linearized, center=center
        )

    @functools.partial(jax.jit, static_argnames="length")
    def advance(p, length):
        _, _, loss = build(params0)

        def step(p, _):
            (value, _), grads = jax.value_and_grad(loss, has_aux=True)(p)
            return jax.tree.map(lambda a, g: a - eta * g, p, grads), value

        p, values = jax.lax.scan(step, p, None, length=length)
        return p, values[-1]

    out_fn = jax.jit(lambda p: build(params0)[1](p))

    @jax.jit
    def start():  # f(θ₀) and the first record in one program, as in _run: z(0) = 0 exactly
        f0, outputs, _ = build(params0)
        return f0, outputs(params0)

    f0, out0 = start()
    chunk = chunk_steps(hooks, save_every)
    params, outs, step = params0, [out0], 0
    saver = None
    if checkpoints is not None:
        from ntkdyn.train.checkpoint import ChunkCheckpoints

        settings = {"num_steps": int(num_steps), "save_every": int(save_every)}
        saver = ChunkCheckpoints(checkpoints, chunk, hooks, settings)
        found = saver.restore(params)
        if found is not None:
            step, params, arrays, _ = found
            outs = [jnp.asarray(row) for row in arrays["outputs"]]
            if len(outs) != step // save_every + 1:
                where = checkpoints.directory
                raise ValueError(f"checkpoint in {where}: unreadable outputs; use a fresh --out")
    with deferring() if saver is not None else contextlib.nullcontext():
        while step < num_steps:
            length = min(chunk, num_steps - step)
            params, value = advance(params, length)
            step += length
            if step % save_every == 0:
                outs.append(out_fn(params))
            call_hooks(
                hooks,
                Record(step=step, params=params, metrics={"loss": np.asarray(value)}),
                last_step=num_steps,
            )
            if saver is not None:
                saver.after_chunk(step, params, lambda: {"outputs": np.stack(outs)})
    return jnp.stack(outs), f0, params


def train_gd(
    apply_fn: ApplyFn,
    params0: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    eta: float,
    num_steps: int,
    save_every: int = 1,
    objective: Objective = ERM(),
    weight_decay: float = 0.0,
    center: bool = True,
    linearized: bool = False,
    hooks: Sequence[Hook] | None = None,
    checkpoints: Checkpoints | None = None,
) -> GDTrace:
    """Full-batch gradient descent θ_{k+1} = θ_k − η∇L(θ_k) on the loss of the module docstring.

    One jitted ``lax.scan``. With ``linearized=True`` the model is f_lin (:func:`linearize`, via
    one ``jax.linearize`` at θ₀) and the run is exact: its feature responses equal
    :func:`ntkdyn.dynamics.gd` with ``field, λ = theory_lam(objective, num_examples=n,
    weight_decay=weight_decay)`` on ``feature_spectrum(...).to_system(λ)`` up to rounding, when
    ``center=True`` and U spans the rows of YΦ (no truncated directions).

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params0: θ₀.
        x: (n, ...) training inputs.
        y: (n,) labels in {−1, +1} or {0, 1}.
        eta: step size η > 0.
        num_steps: number of steps K ≥ 1.
        save_every: record the outputs every this many steps; must divide ``num_steps``.
        objective: ``ERM()`` or ``SpectralDecoupling(coef=c)`` (:mod:`ntkdyn.objectives`), the
            objectives the theory covers.
        weight_decay: coupled weight decay wd ≥ 0 on θ − θ₀ (of the mean-form objective; the
            theory's λ is n·wd).
        center: train g = f − f(θ₀) (the theory's convention) instead of f.
        linearized: train the linearized model instead of the network.
        hooks: record hooks (:mod:`ntkdyn.train.hooks`) called on the host with a
            :class:`~ntkdyn.train.hooks.Record` (θ_k, ``metrics={"loss": n·L}`` of the last step)
            every ``every`` steps and at the end; the loop then runs compiled chunks of the gcd of
            the hooks' ``every`` and ``save_every`` steps (same trace up to float rounding).
        checkpoints: :class:`~ntkdyn.train.checkpoint.Checkpoints`: run in the chunks of
            ``hooks`` and save θ_k, the outputs recorded so far and the hooks' states every
            ``checkpoints.every`` steps (rounded up to a multiple of the chunk), at the end and
            when an interrupt is pending (then ``KeyboardInterrupt``); with ``resume``, continue
            from the newest checkpoint. A run resumed from any checkpoint returns the trace of an
            uninterrupted run with the same ``hooks`` and ``checkpoints`` bit for bit, whatever
            ``checkpoints.every`` is.

    Returns:
        :class:`GDTrace`.

    Raises:
        ValueError: naming ``eta``, ``num_steps``, ``save_every``, ``weight_decay``,
            ``objective``, ``x``, ``y`` or ``params0`` on bad input, or naming the checkpoint
            folder when its checkpoint is of another run.
    """
    x = check_x(x, "x")
    check_outputs(apply_fn, params0, x, None)
    if not (np.isfinite(eta) and eta > 0):
        raise ValueError(f"eta: must be a finite step size > 0, got {eta}")
    if not (np.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay: must be finite and >= 0, got {weight_decay}")
    theory_lam(objective, num_examples=x.shape[0], weight_decay=weight_decay)  # checks objective
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps: must be a positive integer, got {num_steps}")
    if int(save_every) != save_every or save_every < 1 or num_steps % save_every:
        raise ValueError(
            f"save_every: must be a positive divisor of num_steps={num_steps}, got {save_every}"
        )
    hooks = check_hooks(hooks)
    dtype = jax.eval_shape(apply_fn, params0, x).dtype
    yv = jnp.asarray(signed_labels(y, x.shape[0]), dtype)
    if hooks or checkpoints is not None:
        outs, f0, params = _run_hooked(
            apply_fn,
            params0,
            x,
            yv,
            jnp.asarray(eta, dtype),
            jnp.asarray(weight_decay, dtype),
            objective=objective,
            linearized=bool(linearized),
            center=bool(center),
            num_steps=int(num_steps),
            save_every=int(save_every),
            hooks=hooks,
            checkpoints=checkpoints,
        )
        steps = jnp.arange(outs.shape[0]) * int(save_every)
        return GDTrace(steps, outs, f0, params, float(eta))
    outs, f0, params = _run(
        apply_fn,
        params0,
        x,
        yv,
        jnp.asarray(eta, dtype),
        jnp.asarray(weight_decay, dtype),
        objective=objective,
        linearized=bool(linearized),
        center=bool(center),
        num_blocks=int(num_steps) // int(save_every),
        save_every=int(save_every),
    )
    steps = jnp.arange(outs.shape[0]) * int(save_every)
    return GDTrace(steps, outs, f0, params, float(eta))
