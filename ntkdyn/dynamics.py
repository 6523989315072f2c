"""Feature-response dynamics of a linearized classifier (Pezeshki et al. 2021, Sec. 3–4 and appendix).

A :class:`~ntkdyn.systems.FeatureSystem` (U, s, λ) fixes the dynamics of the feature responses
z = S Vᵀθ. The loss is chosen by passing a *vector field* ``field(z, system) -> ż/η``:

* :func:`ce_field` — cross-entropy with weight decay, ż = η[S²Uᵀσ(−Uz) − λz]  (paper Sec. 3);
* :func:`sd_field` — Spectral Decoupling, ż = ηS²[Uᵀσ(−Uz) − λz]  (paper Sec. 4);
* :func:`dual_field` — the dual (Legendre) flow on α ∈ (0, 1)ⁿ, mapped back by :func:`dual_to_z`
  (paper Sec. 3, dual formulation);
* :func:`quadratic_ce_field` — CE with the binary entropy replaced by its quadratic expansion about α₀
  (an *approximation*, decoupled fixed points; paper appendix).

Two integrators take any field: :func:`gd` (discrete gradient descent, z_{k+1} = z_k + η·field(z_k),
identical to gradient descent on θ) and :func:`integrate` (adaptive diffrax solver of ż = η·field(z)).
Both return a :class:`Trajectory` whose ``result`` reports failures (divergence, exhausted step
budget) instead of returning silent NaNs, and both are jit-compiled and ``jax.vmap``-able over
batches of systems (grids of s, λ, δ).

Float64 is advised (enable ``jax_enable_x64``): fixed points sit at margins where σ(−m) ~ 1e-3, and the
exactness checks (GD in z equals GD on θ) are to machine precision.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from ntkdyn._checks import is_concrete, validate_state, validate_system
from ntkdyn.systems import FeatureSystem

__all__ = [
    "RESULTS",
    "SolverError",
    "Trajectory",
    "ce_field",
    "sd_field",
    "quadratic_ce_field",
    "dual_field",
    "dual_to_z",
    "z_to_dual",
    "gd",
    "integrate",
]

Field = Callable[[Array, FeatureSystem], Array]


class RESULTS(diffrax.RESULTS):
    """Outcome codes of :func:`gd` and :func:`integrate` (diffrax's codes plus GD divergence).

    ``RESULTS.successful`` means the run finished; ``RESULTS[traj.result]`` gives the message of a
    concrete result. Members inherited from ``diffrax.RESULTS`` (e.g. ``max_steps_reached``) come from
    the adaptive solver.
    """

    gd_diverged = (
        "Gradient descent diverged: the iterates became non-finite. The step `eta` is too large for "
        "this system; GD is stable only for eta * rho(d field/dz) < 2 (for CE that needs eta * lam < 2, "
        "for SD eta * lam * max(s)**2 < 2). Reduce `eta`."
    )
    gd_unstable = (
        "Gradient descent is unstable at its last iterate: eta * rho(d field/dz) >= 2 there, so the "
        "iterates oscillate or blow up instead of settling. Reduce `eta` (below 2 / rho)."
    )


class SolverError(ValueError):
    """Raised (with ``throw=True``) when a run fails: GD diverged or the ODE solver gave up.

    A subclass of ``ValueError``: the failure is always fixed by changing an argument (``eta``,
    ``max_steps``, ``rtol``/``atol``, ``z0``), which the message names.
    """


class Trajectory(NamedTuple):
    """A sampled trajectory of a feature-response flow.

    Attributes:
        t: (T,) sample times in gradient-flow units (η × number of steps for :func:`gd`; the solver
            time of ż = η·field for :func:`integrate`, so with η = 1 the two overlay).
        z: (T, d) states at those times (α for the dual flow).
        result: a :class:`RESULTS` item; ``RESULTS.successful`` unless the run failed.
        num_steps: number of GD steps, or of accepted solver steps.
    """

    t: Float[Array, " T"]
    z: Float[Array, "T d"]
    result: RESULTS
    num_steps: Int[Array, ""]

    @property
    def success(self) -> Array:
        """Boolean array: True where the run finished without failure."""
        return self.result == RESULTS.successful

    @property
    def final(self) -> Float[Array, " d"]:
        """The last sampled state z(t_end)."""
        return self.z[..., -1, :]


# --------------------------------------------------------------------------------------------------
# Vector fields


def ce_field(z: Float[Array, " d"], system: FeatureSystem) -> Float[Array, " d"]:
    """Cross-entropy with weight decay: field(z) = S²Uᵀσ(−Uz) − λz.

    Gradient flow θ̇ = −η∇_θ[Σᵢ log(1 + e^{−mᵢ}) + (λ/2)‖θ‖²] with margins m = YΦθ = Uz gives exactly
    ż = η·field(z) (paper Sec. 3). Fixed points satisfy λz* = S²Uᵀσ(−Uz*); the features are
    coupled through U.

    Args:
        z: (d,) feature responses.
        system: the (U, s, λ) system.

    Returns:
        (d,) the field ż/η.
    """
    U, s, lam = system
    return s**2 * (U.T @ jax.nn.sigmoid(-(U @ z))) - lam * z


def sd_field(z: Float[Array, " d"], system: FeatureSystem) -> Float[Array, " d"]:
    """Spectral Decoupling: field(z) = S²[Uᵀσ(−Uz) − λz].

    Gradient flow on Σᵢ log(1 + e^{−mᵢ}) + (λ/2)‖ŷ‖², with ‖ŷ‖² = ‖Uz‖² = ‖z‖² (paper Sec. 4).
    The fixed point Uᵀσ(−Uz*) = λz* does not depend on s: the singular values only set each
    feature's speed.

    Args:
        z: (d,) feature responses.
        system: the (U, s, λ) system (λ is the logit-penalty strength).

    Returns:
        (d,) the field ż/η.
    """
    U, s, lam = system
    return s**2 * (U.T @ jax.nn.sigmoid(-(U @ z)) - lam * z)


def quadratic_ce_field(
    z: Float[Array, " d"], system: FeatureSystem, alpha0: float = 0.5
) -> Float[Array, " d"]:
    """CE with the *quadratic approximation* of the binary entropy about α₀ (paper appendix).

    This is an approximation, not the CE dynamics. Expanding H(α) to second order about α₀ turns
    σ(−m) into the affine g(m) = (b − m)/a with a = 1/(α₀(1−α₀)) and b = log((1−α₀)/α₀) + 1/(1−α₀),
    so field(z) = S²Uᵀg(Uz) − λz. Its fixed points decouple,
    z_j* = b s_j² (u_jᵀ1)/(aλ + s_j²): gradient starvation comes from the non-quadratic σ.

    Args:
        z: (d,) feature responses.
        system: the (U, s, λ) system.
        alpha0: expansion point α₀ ∈ (0, 1) (0.5: the expansion at initialisation, m = 0). Pass it
            with ``functools.partial(quadratic_ce_field, alpha0=...)``.

    Returns:
        (d,) the field ż/η.
    """
    U, s, lam = system
    a = 1.0 / (alpha0 * (1.0 - alpha0))
    b = math.log((1.0 - alpha0) / alpha0) + 1.0 / (1.0 - alpha0)
    return s**2 * (U.T @ ((b - U @ z) / a)) - lam * z


def dual_field(alpha: Float[Array, " n"], system: FeatureSystem) -> Float[Array, " n"]:
    """The dual (Legendre) flow: field(α) = log((1 − α)/α) − λ⁻¹ U S² Uᵀ α.

    From log(1 + e^{−m}) = max_{α∈[0,1]} [H(α) − αm] and θ = λ⁻¹(YΦ)ᵀα (paper Sec. 3 and its appendix). The state
    is α ∈ (0, 1)ⁿ, one dual variable per example; z = :func:`dual_to_z` (α). Its fixed points are those
    of :func:`ce_field` (α* = σ(−Uz*)). Needs λ > 0.

    Args:
        alpha: (n,) dual variables in (0, 1).
        system: the (U, s, λ) system, λ > 0.

    Returns:
        (n,) the field α̇/η.
    """
    U, s, lam = system
    return jnp.log1p(-alpha) - jnp.log(alpha) - (U @ (s**2 * (U.T @ alpha))) / lam


def dual_to_z(alpha: Float[Array, "... n"], system: FeatureSystem) -> Float[Array, "... d"]:
    """Feature responses of dual variables: z = λ⁻¹ S² Uᵀ α (paper Sec. 3).

    Args:
        alpha: (..., n) dual variables (a trajectory works: leading axes are kept).
        system: the (U, s, λ) system, λ > 0.

    Returns:
        (..., d) feature responses.
    """
    U, s, lam = system
    return s**2 * (alpha @ U) / lam


def z_to_dual(z: Float[Array, "... d"], system: FeatureSystem) -> Float[Array, "... n"]:
    """The dual variables on the primal optimality manifold: α = σ(−Uz).

    At a fixed point this inverts :func:`dual_to_z`; it is the natural warm start for the dual flow.

    Args:
        z: (..., d) feature responses.
        system: the (U, s, λ) system.

    Returns:
        (..., n) dual variables in (0, 1).
    """
    return jax.nn.sigmoid(-(z @ system.U.T))


# --------------------------------------------------------------------------------------------------
# Validation (only on concrete values: under jit/vmap the checks move to the run's result)


def _check_positive(name: str, value, *, integer: bool = False) -> None:
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.isfinite(arr) or arr <= 0 or (integer and arr != int(arr)):
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"{name}: must be {kind}, got {value!r}")


def _raise_or_flag(traj: Trajectory, throw: bool, hint: str) -> Trajectory:
    """With ``throw``: raise :class:`SolverError` (concrete) or an Equinox runtime error (traced)."""
    if not throw:
        return traj
    if is_concrete(traj.result):
        failed = ~np.asarray(traj.success)
        if failed.any():
            idx = np.asarray(traj.result._value)[failed].ravel()[0]
            raise SolverError(f"{_message_of(int(idx))} {hint}".strip())
        return traj
    msgs = [f"{_message_of(i)} {hint}".strip() for i in range(len(_RESULT_MESSAGES))]
    z = eqx.branched_error_if(traj.z, ~traj.success, traj.result._value, msgs)
    return traj._replace(z=z)


_RESULT_MESSAGES = list(RESULTS._index_to_message)


def _message_of(index: int) -> str:
    return _RESULT_MESSAGES[index] or "successful"


# --------------------------------------------------------------------------------------------------
# Gradient descent


def _spectral_radius(J: Array, iterations: int = 100) -> Array:
    """Largest |eigenvalue| of J by power iteration (the fields here have real spectra)."""
    d = J.shape[0]
    v = jnp.ones(d, J.dtype) + jnp.linspace(0.0, 0.5, d, dtype=J.dtype)

    def body(_, v):
        w = J @ v
        return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(J.dtype).tiny)

    v = jax.lax.fori_loop(0, iterations, body, v / jnp.linalg.norm(v))
    return jnp.linalg.norm(J @ v)


@functools.partial(jax.jit, static_argnames=("field", "num_steps", "save_every", "unroll"))
def _gd(field, system, z0, eta, num_steps, save_every, unroll):
    def step(z, _):
        return z + eta * field(z, system), None

    def block(z, _):
        z, _ = jax.lax.scan(step, z, None, length=save_every, unroll=unroll)
        return z, z

    _, zs = jax.lax.scan(block, z0, None, length=num_steps // save_every)
    zs = jnp.concatenate([z0[None], zs], axis=0)
    k = jnp.arange(zs.shape[0]) * save_every
    t = (eta * k).astype(zs.dtype)
    finite = jnp.all(jnp.isfinite(zs))
    # Local linear stability of the GD map z ↦ z + η·field(z) at the last iterate: a run that blows
    # up (slowly, before overflowing) or oscillates ends where η·ρ(∂field/∂z) ≥ 2.
    z_last = jnp.where(finite, zs[-1], jnp.zeros_like(zs[-1]))
    rho = _spectral_radius(jax.jacfwd(field)(z_last, system))
    unstable = eta * rho >= 2.0
    result = RESULTS.where(
        ~finite,
        RESULTS.gd_diverged,
        RESULTS.where(unstable, RESULTS.gd_unstable, RESULTS.successful),
    )
    return Trajectory(t, zs, result, jnp.asarray(num_steps))


def gd(
    field: Field,
    system: FeatureSystem,
    z0: Float[ArrayLike, " d"],
    *,
    eta: float | Float[Array, ""],
    num_steps: int,
    save_every: int = 1,
    throw: bool = True,
    unroll: int = 1,
) -> Trajectory:
    """Discrete gradient descent in feature space: z_{k+1} = z_k + η·field(z_k, system).

    For :func:`ce_field` and :func:`sd_field` this is *exactly* gradient descent with step η on the
    parameters θ of the linearized model (z = S Vᵀθ, θ₀ = 0), to machine precision. Runs as one
    ``lax.scan``; jit-compiled, ``jax.vmap``-able over systems, z0 and η.

    Args:
        field: a vector field ``field(z, system)`` (e.g. :func:`ce_field`).
        system: the (U, s, λ) system.
        z0: (d,) initial state ((n,) α₀ for :func:`dual_field`).
        eta: step size η > 0.
        num_steps: number of GD steps K ≥ 1.
        save_every: sample every this many steps; must divide ``num_steps``. The trajectory holds
            K/save_every + 1 samples, k = 0, save_every, …, K.
        throw: raise :class:`SolverError` if GD diverges (under ``jit``/``vmap``: an Equinox runtime
            error with the same message); with ``False`` the failure is only reported in ``result``.
        unroll: ``lax.scan`` unroll factor of the inner loop (speed only).

    Returns:
        :class:`Trajectory` with t = η·k.

    Raises:
        ValueError: naming ``eta``, ``num_steps``, ``save_every``, ``z0`` or the system field at fault.
        SolverError: with ``throw``, when GD diverged (non-finite iterates) or is unstable at its last
            iterate (η·ρ(∂field/∂z) ≥ 2, estimated by power iteration): ``eta`` is too large.
    """
    validate_system(system)
    z0 = validate_state(field, system, z0)
    _check_positive("eta", eta)
    _check_positive("num_steps", num_steps, integer=True)
    _check_positive("save_every", save_every, integer=True)
    if num_steps % save_every:
        raise ValueError(
            f"save_every: must divide num_steps={num_steps}, got {save_every}; "
            f"e.g. save_every={math.gcd(num_steps, save_every)}"
        )
    eta = jnp.asarray(eta, z0.dtype)
    traj = _gd(field, system, z0, eta, int(num_steps), int(save_every), int(unroll))
    eta_txt = f"(got eta={float(eta)})" if is_concrete(eta) else ""
    return _raise_or_flag(traj, throw, eta_txt)


# --------------------------------------------------------------------------------------------------
# Continuous time


@functools.partial(jax.jit, static_argnames=("field", "solver", "max_steps", "rtol", "atol"))
def _integrate(field, system, z0, eta, t1, ts, solver, rtol, atol, max_steps):
    term = diffrax.ODETerm(lambda t, z, args: eta * field(z, system))
    sol = diffrax.diffeqsolve(
        term,
        solver,
        t0=jnp.zeros((), ts.dtype),
        t1=t1,
        dt0=None,
        y0=z0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    return Trajectory(sol.ts, sol.ys, RESULTS.promote(sol.result), sol.stats["num_accepted_steps"])


def integrate(
    field: Field,
    system: FeatureSystem,
    z0: Float[ArrayLike, " d"],
    *,
    t1: float,
    eta: float = 1.0,
    ts: Float[ArrayLike, " T"] | None = None,
    num_points: int = 101,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 16_384,
    solver: diffrax.AbstractSolver | None = None,
    throw: bool = True,
) -> Trajectory:
    """Integrate ż = η·field(z, system) on [0, t₁] with an adaptive diffrax solver.

    Continuous-time limit of :func:`gd`: with η = 1 the time t is the gradient-flow time, i.e.
    η_GD × number of GD steps, so the ODE curve overlays a GD trajectory with the same t. (With η ≠ 1, t
    counts steps of size η.) Jit-compiled and ``jax.vmap``-able over systems and z0.

    Args:
        field: a vector field ``field(z, system)``.
        system: the (U, s, λ) system.
        z0: (d,) initial state ((n,) α₀ for :func:`dual_field`).
        t1: final time > 0.
        eta: rate η > 0 multiplying the field.
        ts: (T,) increasing sample times in [0, t₁]; default ``num_points`` equally spaced, 0 to t₁.
        num_points: number of samples when ``ts`` is None (≥ 2).
        rtol, atol: the PID step-size controller's tolerances.
        max_steps: the solver's step budget.
        solver: a diffrax solver (default ``diffrax.Tsit5()``; pass ``diffrax.Kvaerno5()`` for very
            stiff systems).
        throw: raise :class:`SolverError` on failure (under ``jit``/``vmap``: an Equinox runtime
            error); with ``False`` the failure is only reported in ``result`` (samples after the
            failure are then ``inf``, never silently wrong numbers).

    Returns:
        :class:`Trajectory` with ``result`` from the solver and ``num_steps`` its accepted steps.

    Raises:
        ValueError: naming ``t1``, ``eta``, ``ts``, ``num_points``, ``rtol``, ``atol``,
            ``max_steps`` or ``z0`` for bad values.
        SolverError: the solver failed (e.g. exhausted ``max_steps``), with ``throw``.
    """
    validate_system(system)
    z0 = validate_state(field, system, z0)
    _check_positive("t1", t1)
    _check_positive("eta", eta)
    _check_positive("rtol", rtol)
    _check_positive("atol", atol)
    _check_positive("max_steps", max_steps, integer=True)
    dtype = z0.dtype
    if ts is None:
        _check_positive("num_points", num_points, integer=True)
        if num_points < 2:
            raise ValueError(f"num_points: need at least 2 samples, got {num_points}")
        ts = jnp.linspace(0.0, 1.0, int(num_points), dtype=dtype) * jnp.asarray(t1, dtype)
    else:
        ts = jnp.asarray(ts, dtype)
        if ts.ndim != 1 or ts.shape[0] < 1:
            raise ValueError(f"ts: expected a non-empty 1-D array of times, got shape {ts.shape}")
        if is_concrete(ts, t1):
            ts_np = np.asarray(ts)
            if (
                not np.all(np.isfinite(ts_np))
                or np.any(np.diff(ts_np) < 0)
                or ts_np[0] < 0
                or ts_np[-1] > float(t1)
            ):
                raise ValueError(
                    f"ts: must be finite, non-decreasing and inside [0, t1={t1}], got {ts_np.tolist()[:6]}..."
                )
    solver = diffrax.Tsit5() if solver is None else solver
    traj = _integrate(
        field,
        system,
        z0,
        jnp.asarray(eta, dtype),
        jnp.asarray(t1, dtype),
        ts,
        solver,
        float(rtol),
        float(atol),
        int(max_steps),
    )
    hint = (
        f"(max_steps={max_steps}, rtol={rtol}, atol={atol}, t1={t1}). Increase `max_steps`, loosen "
        "`rtol`/`atol`, shorten `t1`, or pass an implicit solver (solver=diffrax.Kvaerno5()) for a "
        "stiff system."
    )
    return _raise_or_flag(traj, throw, hint)
