"""Fixed points of the feature-response flows and their sensitivity to the singular values.

z* solves field(z*, system) = 0 (Newton's method, optimistix). Its derivative with respect to the
singular values comes from the implicit function theorem, ∂z*/∂s = −(∂f/∂z)⁻¹ ∂f/∂s, which jax computes
by differentiating *through* the root finder (optimistix's ``ImplicitAdjoint``): no unrolled Newton
iterations are differentiated.

Gradient starvation (Pezeshki et al. 2021, Sec. 3): feature i *starves* feature j when
∂z_j*/∂s_i < 0 — a stronger feature i lowers the response the network learns for feature j. The
:func:`starvation_matrix` M[j, i] = ∂z_j*/∂s_i shows it for any d; :func:`finite_difference_jacobian_s`
cross-checks it by central differences.

Closed forms used as checks: :func:`lambert_w_fixed_point` (U = I, large margins) and
:func:`sd_square_margin` (SD with square U). Float64 is advised (enable ``jax_enable_x64``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
import scipy.optimize
import scipy.special
from jaxtyping import Array, ArrayLike, Float

from ntkdyn._checks import is_concrete, validate_state, validate_system
from ntkdyn.dynamics import SolverError
from ntkdyn.systems import FeatureSystem

__all__ = [
    "fixed_point",
    "fixed_point_jacobian_s",
    "fixed_point_and_jacobian_s",
    "fixed_points_batch",
    "starvation_matrix",
    "finite_difference_jacobian_s",
    "lambert_w_fixed_point",
    "sd_square_margin",
]

Field = Callable[[Array, FeatureSystem], Array]


def _root(field, system, z0, rtol, atol, max_steps):
    solver = optx.Newton(rtol=rtol, atol=atol)
    sol = optx.root_find(
        lambda z, sys: field(z, sys), solver, z0, args=system, max_steps=max_steps, throw=False
    )
    return sol.value, sol.result


@functools.partial(jax.jit, static_argnames=("field", "rtol", "atol", "max_steps"))
def _fixed_point(field, system, z0, rtol, atol, max_steps):
    z, result = _root(field, system, z0, rtol, atol, max_steps)
    residual = jnp.max(jnp.abs(field(z, system)))
    return z, result, residual


def _accepted(z, result, residual, rtol, atol):
    """Newton succeeded and left a residual ‖field(z*)‖_∞ within 1e3·(atol + rtol·‖z*‖_∞)."""
    return (result == optx.RESULTS.successful) & (
        residual <= 1e3 * atol + 1e3 * rtol * jnp.max(jnp.abs(z))
    )


def _converged(field, system, z, result, rtol, atol):
    return _accepted(z, result, jnp.max(jnp.abs(field(z, system))), rtol, atol)


@functools.partial(jax.jit, static_argnames=("field", "rtol", "atol", "max_steps"))
def _chunk_solve(field, systems, z0, rtol, atol, max_steps):
    def one(system):
        z, result = _root(field, system, z0, rtol, atol, max_steps)

        def z_star(s):
            return _root(field, system._replace(s=s), z0, rtol, atol, max_steps)[0]

        return z, jax.jacfwd(z_star)(system.s), _converged(field, system, z, result, rtol, atol)

    return jax.vmap(one)(systems)


def _validate_batch(systems: FeatureSystem) -> int:
    if not isinstance(systems, FeatureSystem):
        raise ValueError(f"systems: expected a batched FeatureSystem, got {type(systems).__name__}")
    U, s, lam = (np.asarray(x, dtype=float) for x in systems)
    if (
        U.ndim != 3
        or s.ndim != 2
        or lam.ndim != 1
        or not (U.shape[0] == s.shape[0] == lam.shape[0])
        or U.shape[2] != s.shape[1]
    ):
        raise ValueError(
            f"systems: expected a batch U (B, n, d), s (B, d), lam (B,), got shapes {U.shape}, {s.shape}, {lam.shape}; "
            "stack single systems with ntkdyn.stack_systems"
        )
    for name, arr in (("U", U), ("s", s), ("lam", lam)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"systems.{name}: contains non-finite values (NaN or inf)")
    if np.any(s <= 0):
        raise ValueError(f"systems.s: singular values must be > 0, got min {s.min()}")
    if np.any(lam < 0):
        raise ValueError(f"systems.lam: must be >= 0, got min {lam.min()}")
    err = np.max(np.abs(np.einsum("bni,bnj->bij", U, U) - np.eye(U.shape[2])))
    tol = 1e-10 if np.asarray(systems.U).dtype == np.float64 else 1e-4
    if err > tol:
        raise ValueError(
            f"systems.U: columns are not orthonormal (max |UᵀU - I| = {err:.2e} > {tol:.0e})"
        )
    return U.shape[0]


def fixed_points_batch(
    field: Field,
    systems: FeatureSystem,
    z0: Float[ArrayLike, " d"] | None = None,
    *,
    chunk: int = 64,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
) -> tuple[Float[Array, "B d"], Float[Array, "B d d"]]:
    """Fixed points and ∂z*/∂s of a batch of systems (grids of s, λ, δ) with one compiled function.

    The batch is cut into chunks of ``chunk`` systems (the last one padded), each solved by the same
    jit-compiled ``vmap`` of Newton + implicit differentiation, so grids of any size cost one
    compilation per field. Equal to looping :func:`fixed_point` and :func:`fixed_point_jacobian_s`.

    Args:
        field: a vector field ``field(z, system)``.
        systems: a batched :class:`~ntkdyn.systems.FeatureSystem`: U (B, n, d), s (B, d), lam (B,).
        z0: (d,) common initial guess (default zeros).
        chunk: systems per compiled call.
        rtol, atol, max_steps: Newton's settings (see :func:`fixed_point`).

    Returns:
        ``(z, J)``: (B, d) fixed points and (B, d, d) Jacobians J[b, j, i] = ∂z_j*/∂s_i.

    Raises:
        ValueError: naming ``systems`` (bad batch) or ``chunk``.
        SolverError: Newton failed for some system (its index is named).
    """
    B = _validate_batch(systems)
    rtol, atol = _tolerances(rtol, atol, systems.s.dtype)
    if int(chunk) < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    d = systems.s.shape[1]
    z0 = jnp.zeros(d, systems.s.dtype) if z0 is None else jnp.asarray(z0, systems.s.dtype)
    if z0.shape != (d,):
        raise ValueError(f"z0: expected shape ({d},), got {z0.shape}")
    chunk = int(chunk)  # fixed (not min(chunk, B)): every batch size reuses one compilation
    pad = (-B) % chunk
    padded = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]), systems)
    zs, Js, oks = [], [], []
    for i in range(0, B + pad, chunk):
        part = jax.tree.map(lambda x, i=i: x[i : i + chunk], padded)
        z, J, ok = _chunk_solve(field, part, z0, float(rtol), float(atol), int(max_steps))
        zs.append(z)
        Js.append(J)
        oks.append(ok)
    z, J, ok = (jnp.concatenate(a)[:B] for a in (zs, Js, oks))
    if not bool(jnp.all(ok)):
        bad = np.flatnonzero(~np.asarray(ok))
        raise SolverError(
            f"Newton's method did not reach a fixed point for systems {bad[:10].tolist()} of the batch "
            f"{_hint(rtol, atol, max_steps)}"
        )
    return z, J


def _tolerances(rtol, atol, dtype, scale: float = 1.0) -> tuple[float, float]:
    """Newton's default tolerances by dtype: 1e-12 in float64, 1e-5 in float32 (times ``scale``)."""
    default = (1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-5) * scale
    return (default if rtol is None else float(rtol)), (default if atol is None else float(atol))


def _hint(rtol, atol, max_steps) -> str:
    return (
        f"(rtol={rtol}, atol={atol}, max_steps={max_steps}). Pass a better initial guess `z0` (e.g. "
        "the end of a gd run, or lambert_w_fixed_point), or increase `max_steps`."
    )


def _default_z0(field: Field, system: FeatureSystem, z0) -> Array:
    if z0 is None:
        return jnp.zeros(system.s.shape[-1:], jnp.result_type(system.s.dtype, float))
    return validate_state(field, system, z0)


def fixed_point(
    field: Field,
    system: FeatureSystem,
    z0: Float[ArrayLike, " d"] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
    throw: bool = True,
) -> Float[Array, " d"]:
    """The fixed point z* of a flow, field(z*, system) = 0, by Newton's method (optimistix).

    For :func:`~ntkdyn.dynamics.ce_field` this is λz* = S²Uᵀσ(−Uz*) (paper Sec. 3); for
    :func:`~ntkdyn.dynamics.sd_field`, Uᵀσ(−Uz*) = λz*. Differentiable with respect to ``system`` by
    implicit differentiation (see :func:`fixed_point_jacobian_s`). Jit-compiled, ``jax.vmap``-able.

    Newton from z = 0 converges for the CE and SD fields (the fields are monotone, and convex along
    the Newton path); for other fields, or the dual flow, pass ``z0`` (e.g. ``gd(...).final``).

    Args:
        field: a vector field ``field(z, system)``.
        system: the (U, s, λ) system.
        z0: (d,) initial guess; default zeros (d,). Required, in (0, 1)ⁿ, for the dual field.
        rtol, atol: Newton's termination tolerances (on the step, in the max norm); default 1e-12
            in float64, 1e-5 in float32.
        max_steps: Newton's iteration budget.
        throw: raise :class:`~ntkdyn.dynamics.SolverError` if Newton fails or leaves a residual
            ‖field(z*)‖_∞ > 1e3·atol (under ``jit``/``vmap``: an Equinox runtime error); with
            ``False`` a failed solve returns NaNs.

    Returns:
        (d,) the fixed point.

    Raises:
        ValueError: for a bad ``system`` or ``z0``.
        SolverError: Newton did not converge (with ``throw``), naming ``z0`` and ``max_steps``.
    """
    validate_system(system)
    z0 = _default_z0(field, system, z0)
    rtol, atol = _tolerances(rtol, atol, z0.dtype)
    z, result, residual = _fixed_point(field, system, z0, float(rtol), float(atol), int(max_steps))
    ok = _accepted(z, result, residual, rtol, atol)
    if not throw:
        return jnp.where(ok, z, jnp.nan)
    return _surface(z, ok, result, residual, rtol, atol, max_steps)


def _surface(out, ok, result, residual, rtol, atol, max_steps):
    """``out`` if Newton converged; else a :class:`SolverError` (concrete) or an Equinox runtime error (traced)."""
    msg = f"Newton's method did not reach a fixed point of the field {_hint(rtol, atol, max_steps)}"
    if is_concrete(ok):
        if not bool(jnp.all(ok)):
            raise SolverError(
                f"{msg} Solver status: {optx.RESULTS[result] or 'converged'}; residual {float(jnp.max(residual)):.2e}."
            )
        return out
    return eqx.error_if(out, ~ok, msg)


def fixed_point_jacobian_s(
    field: Field,
    system: FeatureSystem,
    z0: Float[ArrayLike, " d"] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
) -> Float[Array, "d d"]:
    """∂z*/∂s by implicit differentiation through the Newton solver: J[j, i] = ∂z_j*/∂s_i.

    Implicit function theorem on field(z*(s), s) = 0: ∂z*/∂s = −(∂field/∂z)⁻¹ ∂field/∂s at z*, computed by
    ``jax.jacfwd`` through ``optimistix.root_find`` (``ImplicitAdjoint``). Paper Sec. 3.

    Args:
        field: a vector field ``field(z, system)`` whose state is z ∈ ℝᵈ.
        system: the (U, s, λ) system.
        z0: initial guess for the solver (default zeros).
        rtol, atol, max_steps: Newton's settings (see :func:`fixed_point`).

    Returns:
        (d, d) matrix J with J[j, i] = ∂z_j*/∂s_i.

    Raises:
        ValueError: for a bad ``system`` or ``z0``.
        SolverError: Newton did not converge.
    """
    return fixed_point_and_jacobian_s(field, system, z0, rtol=rtol, atol=atol, max_steps=max_steps)[
        1
    ]


@functools.partial(jax.jit, static_argnames=("field", "rtol", "atol", "max_steps"))
def _jacobian_s(field, system, z0, rtol, atol, max_steps):
    """∂z*/∂s and, from the same Newton solve, z*, its result code and residual."""

    def z_star(s):
        z, result = _root(field, system._replace(s=s), z0, rtol, atol, max_steps)
        return z, (z, result)

    J, (z, result) = jax.jacfwd(z_star, has_aux=True)(system.s)
    return J, z, result, jnp.max(jnp.abs(field(z, system)))


def fixed_point_and_jacobian_s(
    field: Field,
    system: FeatureSystem,
    z0: Float[ArrayLike, " d"] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
    """z* and ∂z*/∂s from one Newton solve: what :func:`fixed_point` and :func:`starvation_matrix`
    return, for the price of the second alone.

    Args:
        field: a vector field ``field(z, system)`` whose state is z ∈ ℝᵈ.
        system: the (U, s, λ) system.
        z0: initial guess for the solver (default zeros).
        rtol, atol, max_steps: Newton's settings (see :func:`fixed_point`).

    Returns:
        ``(z_star, J)``: the (d,) fixed point and the (d, d) matrix J[j, i] = ∂z_j*/∂s_i.

    Raises:
        ValueError: for a bad ``system`` or ``z0``.
        SolverError: Newton did not converge.
    """
    validate_system(system)
    z0 = _default_z0(field, system, z0)
    rtol, atol = _tolerances(rtol, atol, z0.dtype)
    J, z, result, residual = _jacobian_s(
        field, system, z0, float(rtol), float(atol), int(max_steps)
    )
    ok = _accepted(z, result, residual, rtol, atol)
    return _surface((z, J), ok, result, residual, rtol, atol, max_steps)


def starvation_matrix(
    field: Field,
    system: FeatureSystem,
    z0: Float[ArrayLike, " d"] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
) -> Float[Array, "d d"]:
    """The starvation matrix M[j, i] = ∂z_j*/∂s_i of a d-feature system (paper Sec. 3).

    An off-diagonal entry M[j, i] < 0 means feature i starves feature j: increasing the strength s_i
    of feature i decreases the response z_j* learned for feature j. Under CE with coupled U the
    off-diagonal entries are generically nonzero; under SD they vanish (its fixed point does not
    depend on s). Same computation as :func:`fixed_point_jacobian_s`.

    Args:
        field: a vector field (e.g. :func:`~ntkdyn.dynamics.ce_field`).
        system: the (U, s, λ) system, any d.
        z0: initial guess for Newton (default zeros).
        rtol, atol, max_steps: Newton's settings.

    Returns:
        (d, d) matrix M.

    Raises:
        ValueError: for a bad ``system`` or ``z0``.
        SolverError: Newton did not converge.
    """
    return fixed_point_jacobian_s(field, system, z0, rtol=rtol, atol=atol, max_steps=max_steps)


def finite_difference_jacobian_s(
    field: Field,
    system: FeatureSystem,
    h: float = 1e-5,
    z0: Float[ArrayLike, " d"] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 256,
) -> Float[Array, "d d"]:
    """∂z*/∂s by central finite differences: J[:, i] = (z*(s + h eᵢ) − z*(s − h eᵢ)) / 2h.

    A slow reference for :func:`fixed_point_jacobian_s` (error O(h²) + O(tol/h)).

    Args:
        field: a vector field.
        system: the (U, s, λ) system.
        h: the step, 0 < h < min(s).
        z0: initial guess for Newton (default zeros).
        rtol, atol, max_steps: Newton's settings (default: a tenth of :func:`fixed_point`'s, since the
            differences divide the solver's error by 2h).

    Returns:
        (d, d) matrix J with J[j, i] ≈ ∂z_j*/∂s_i.

    Raises:
        ValueError: naming ``h`` if it is not in (0, min(s)).
        SolverError: Newton did not converge.
    """
    validate_system(system)
    s = jnp.asarray(system.s)
    if not (np.isfinite(h) and 0 < h < float(jnp.min(s))):
        raise ValueError(f"h: must satisfy 0 < h < min(s) = {float(jnp.min(s))}, got {h}")
    eye = jnp.eye(s.shape[0], dtype=s.dtype)
    # Tighter than the default: the differences divide the solver's error by 2h.
    rtol, atol = _tolerances(rtol, atol, s.dtype, scale=0.1)

    def z_star(si):
        return fixed_point(
            field, system._replace(s=si), z0, rtol=rtol, atol=atol, max_steps=max_steps
        )

    cols = [(z_star(s + h * eye[i]) - z_star(s - h * eye[i])) / (2 * h) for i in range(s.shape[0])]
    return jnp.stack(cols, axis=1)


def lambert_w_fixed_point(s: Float[ArrayLike, " d"], lam: float) -> Float[Array, " d"]:
    """Large-margin fixed point of CE with U = I: z_j* ≈ W(s_j²/λ) (W the Lambert W function).

    With U = I the fixed point solves λz_j = s_j²σ(−z_j) feature by feature; for large margins
    σ(−z) ≈ e^{−z}, so z_j e^{z_j} = s_j²/λ (paper Sec. 3). The relative error is O(e^{−z*}).

    Args:
        s: (d,) singular values > 0.
        lam: λ > 0.

    Returns:
        (d,) the approximation W(s²/λ), in float64.

    Raises:
        ValueError: naming ``s`` or ``lam`` for non-positive or non-finite values.
    """
    s_np = np.atleast_1d(np.asarray(s, dtype=float))
    if not np.all(np.isfinite(s_np)) or np.any(s_np <= 0):
        raise ValueError(f"s: singular values must be finite and > 0, got {s_np.tolist()}")
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam: must be a finite number > 0, got {lam}")
    return jnp.asarray(np.real(scipy.special.lambertw(s_np**2 / lam)))


def sd_square_margin(lam: float) -> float:
    """The SD margin a of a square system: the root of σ(−a) = λa.

    With square U every margin is equal at the SD fixed point, so z* = a·Uᵀ1 whatever s is
    (paper Sec. 4); for small λ, a ≈ W(1/λ).

    Args:
        lam: λ > 0.

    Returns:
        a > 0 (float64 scalar).

    Raises:
        ValueError: naming ``lam`` if it is not a finite number > 0.
    """
    if not np.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam: must be a finite number > 0, got {lam}")
    return float(
        scipy.optimize.brentq(
            lambda a: scipy.special.expit(-a) - lam * a, 0.0, 1.0 / lam, xtol=1e-15, rtol=1e-15
        )
    )
