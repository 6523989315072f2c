"""The practice journey: model + data → spectrum at θ₀ → the theory's prediction → measured z(t).

For a network f(x; θ) at initialisation θ₀ on n training examples (Pezeshki et al. 2021, Sec. 2–4):

1. the spectrum of the label-signed tangent features YΦ = U S Vᵀ at θ₀
   (:func:`ntkdyn.feature_spectrum`) and the label alignment |u_jᵀ1| of each direction;
2. for a loss and its λ, the :class:`ntkdyn.FeatureSystem` (U, s, λ) and what the theory predicts
   on it: the fixed point z* (field(z*) = 0), the starvation matrix M[j, i] = ∂z_j*/∂s_i (feature i
   starves feature j when M[j, i] < 0), and, given a step, the trajectory z(t) of gradient descent
   in feature space (:func:`ntkdyn.gd`, exactly GD on the linearized model) or of the flow
   (:func:`ntkdyn.integrate`);
3. the measured responses of real training, z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) with U from θ₀
   (:func:`ntkdyn.responses_from_outputs`), from outputs recorded during training.

Everything comes back as plain data (NamedTuples of arrays) for plots and tables:
:func:`analyse` → :class:`SpectrumAnalysis` (spectrum, alignment, f(X; θ₀), ±1 labels and one
:class:`Prediction` per named loss); :func:`predict` → :class:`Prediction`;
:meth:`SpectrumAnalysis.measure` / :func:`measured_responses` → :class:`Measurement`;
:func:`training_responses` trains the network and its linearization and sets their z(t) beside
the prediction; :func:`starvation_summary` states what a starvation matrix says.

The functions take the theory's λ and field explicitly, in the theory's sum form
Σᵢ ℓᵢ + (λ/2)‖θ‖² (CE, :func:`ntkdyn.ce_field`) or Σᵢ ℓᵢ + (λ/2)‖ŷ‖² (SD, :func:`ntkdyn.sd_field`).
A training objective's coefficient becomes that λ in one place,
:func:`ntkdyn.objectives.theory_lam` (mean-form SD coefficient c → λ = 2c; coupled weight decay wd on
a mean loss over n examples → λ = n·wd). Time: GD with learning rate lr on a mean-form loss is GD
with step η = lr / n on the sum form, so ``predict(..., eta=lr / n, num_steps=K)`` is the theory of
K such steps.

Float64 is advised for the prediction (enable ``jax_enable_x64``; the CLI does for ``ntkdyn
spectrum``): the spectrum is always decomposed in float64, but the fixed points sit at margins
where σ(−m) ~ 1e-3.

How the three callers use it::

    # ntkdyn spectrum (ntkdyn/commands/spectrum.py): CE and SD on one spectrum, then z(t)
    a = analyse(apply_fn, params, x, y, solver=Dense(method=NTKMethod.STRUCTURED),
                predictions={"ce": (ce_field, lam_ce), "sd": (sd_field, lam_sd)})
    # or, as the command writes it: arrays and facts for results.json in one call
    arrays, facts, a = spectrum_report(apply_fn, params, x, y, solver=BlockKrylov(10, key=key),
                                       lam_ce=lam_ce, lam_sd=lam_sd, top=10)
    a.predictions["ce"].starvation[:, 0]          # ∂z_j*/∂s_1 for every j
    theory = predict(a.spectrum, lam, field, eta=eta, num_steps=K, save_every=50)
    objective, wd = objective_for_lam("ce", lam, n)      # the inverse of theory_lam
    trace = train_gd(apply_fn, params, x, y, eta=eta, num_steps=K, save_every=50,
                     objective=objective, weight_decay=wd)
    a.measure(trace.outputs, f0=trace.f0, steps=trace.steps).z   # vs theory.z
    # the network, its linearization and the theory in one call (what the command runs):
    r = training_responses(apply_fn, params, x, y, a, ntkdyn.ERM(), weight_decay=wd,
                           eta=eta, num_steps=K, save_every=50)  # r["z_network"], ...

    # experiments/moons.py (feature_responses_over_training): each seed's own U, seed-mean z(t)
    zs = []
    for s in range(S):
        p0 = jax.tree.map(lambda a: a[s], trained.params0)
        a = analyse(DenseApply(), p0, trained.X[s], trained.y[s])
        m = a.measure(trained.history["outputs"][s], steps=trained.epochs, top=k,
                      start_at_zero=True)
        zs.append(m.z)
    epochs, z = m.steps, np.mean(zs, axis=0)                     # (R + 1,), (R + 1, k)

    # experiments/colored_mnist.py: all n training examples, the top k directions matrix-free
    # (it still passes k=, key=, the deprecated keyword form of the same solver);
    # the compiled loop records only the k-vector U_kᵀYf (metrics.signed_projection), not f
    spec = feature_spectrum(apply_fn, params0, x, y, solver=BlockKrylov(k, key=key))
    z = recorded_projections - recorded_projections[0]              # (R + 1, k)
    # with the theory beside it, the objective's coefficient converted in its one place:
    field, lam = theory_lam(SpectralDecoupling(coef=c), num_examples=n)
    p = predict(a.spectrum, lam, field, eta=lr / n, num_steps=steps, save_every=log_every)

:func:`starvation_table` is the theory's two-feature version of the same question (Sec. 3.2):
z* and ∂z₂*/∂s₁ of U(δ), s = (s₁, s₂) for a range of s₁, under CE and SD.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ntkdyn._checks import check_outputs, check_x
from ntkdyn.dynamics import ce_field, gd, integrate, sd_field
from ntkdyn.fixed_points import fixed_point, fixed_point_and_jacobian_s, fixed_points_batch
from ntkdyn.linalg import OnUnconverged, TruncatedSVD
from ntkdyn.systems import FeatureSystem, rotation_system, stack_systems
from ntkdyn.tangent import (
    BlockKrylov,
    Dense,
    FeatureSpectrum,
    NTKMethod,
    feature_spectrum,
    responses_from_outputs,
    signed_labels,
)
from ntkdyn.tangent.features import ApplyFn, apply_outputs
from ntkdyn.tangent.spectrum import Solver

__all__ = [
    "Prediction",
    "Measurement",
    "SpectrumAnalysis",
    "analyse",
    "predict",
    "predict_at_scale",
    "measured_responses",
    "starvation_table",
    "starvation_summary",
    "training_responses",
    "newton_tolerance",
    "spectrum_report",
    "objective_for_lam",
    "relative_error",
    "DECOUPLED_ATOL",
]

Field = Callable[[Array, FeatureSystem], Array]

#: Tolerance below which an SD derivative counts as zero (float64 Newton at rtol 1e-12).
DECOUPLED_ATOL = 1e-8


def newton_tolerance(n: int) -> float:
    """Newton's float64 tolerance for the fixed points of a system on n examples: max(1e-12, 2e-14·n).

    The field sums n terms, so it rounds at ≈ n·ε₆₄ relative; at n = 50,000 a 1e-12 tolerance is
    below that floor and Newton would stall (1e-9 there). :func:`predict`'s default.
    """
    return max(1e-12, 2e-14 * int(n))


class Prediction(NamedTuple):
    """What the theory predicts on one feature system (U, s, λ) (Pezeshki et al. 2021, Sec. 3–4).

    Attributes:
        lam: the theory's λ (sum form).
        z_star: (d,) fixed point, field(z*, system) = 0.
        starvation: (d, d) M[j, i] = ∂z_j*/∂s_i (``None`` when not requested); M[j, i] < 0 means
            feature i starves feature j. Equal to :func:`ntkdyn.starvation_matrix`.
        t: (T,) times of the predicted trajectory in gradient-flow units (η × steps), or ``None``.
        z: (T, d) predicted z(t) from z(0) = 0, or ``None``.
    """

    lam: float
    z_star: Float[Array, " d"]
    starvation: Float[Array, "d d"] | None
    t: Float[Array, " T"] | None
    z: Float[Array, "T d"] | None


class Measurement(NamedTuple):
    """Measured feature responses of real training, z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) (Sec. 4).

    Attributes:
        steps: (T,) the training step (or epoch) of each row.
        z: (T, k) responses of the k leading directions, NumPy float64.
    """

    steps: Int[np.ndarray, " T"]
    z: Float[np.ndarray, "T k"]


def _check_lam(lam: float, name: str = "lam") -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number λ >= 0, got {lam!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{name}: the theory's λ must be finite and >= 0, got {lam}; convert a training "
            "coefficient with ntkdyn.objectives.theory_lam"
        )
    return value


def predict(
    spectrum: FeatureSpectrum,
    lam: float,
    field: Field,
    *,
    starvation: bool = True,
    eta: float | None = None,
    num_steps: int | None = None,
    save_every: int = 1,
    t1: float | None = None,
    num_points: int = 101,
    rtol: float | None = None,
    atol: float | None = None,
) -> Prediction:
    """The theory's fixed point, starvation matrix and z(t) on the system (U, s, λ) of a spectrum.

    Fixed point: field(z*, system) = 0 by Newton; with ``starvation`` the same solve also gives
    M[j, i] = ∂z_j*/∂s_i by implicit differentiation (:func:`ntkdyn.fixed_point_and_jacobian_s`).
    Trajectory from z(0) = 0: with ``eta`` and ``num_steps``, gradient descent in feature space
    z_{k+1} = z_k + η·field(z_k) (:func:`ntkdyn.gd`, exactly GD with step η on the linearized
    model's sum-form loss); with ``t1``, the flow ż = field(z) on [0, t₁] (:func:`ntkdyn.integrate`,
    η = 1, so t is gradient-flow time as for GD).

    Args:
        spectrum: (U, s) at θ₀ (:func:`ntkdyn.feature_spectrum`).
        lam: the theory's λ ≥ 0 (sum form; see the module docstring for the conversion).
        field: :func:`ntkdyn.ce_field`, :func:`ntkdyn.sd_field` or another primal field.
        starvation: also compute the (d, d) starvation matrix (one Jacobian, d forward passes
            through the solver).
        eta: GD step η > 0 of the predicted trajectory (with ``num_steps``).
        num_steps: number of GD steps (with ``eta``).
        save_every: sample every this many GD steps; must divide ``num_steps``.
        t1: end time of the flow instead of GD (excludes ``eta``/``num_steps``).
        num_points: samples of the flow on [0, t₁].
        rtol, atol: Newton's tolerances of the fixed point (default in float64
            :func:`newton_tolerance` of the spectrum's n: sums over n examples round at ≈ n·ε;
            in float32 those of :func:`ntkdyn.fixed_point`).

    Returns:
        :class:`Prediction`.

    Raises:
        ValueError: naming ``spectrum``, ``lam``, ``eta``/``num_steps`` (one without the other, or
            both with ``t1``) or the arguments of :func:`ntkdyn.gd` / :func:`ntkdyn.integrate`.
        SolverError: Newton or the trajectory failed (divergence: lower ``eta``).
    """
    if not isinstance(spectrum, FeatureSpectrum):
        raise ValueError(
            f"spectrum: expected an ntkdyn.FeatureSpectrum (from feature_spectrum), got "
            f"{type(spectrum).__name__}"
        )
    lam = _check_lam(lam)
    if (eta is None) != (num_steps is None):
        raise ValueError(
            f"eta, num_steps: give both for a GD trajectory or neither, got eta={eta}, "
            f"num_steps={num_steps}"
        )
    if t1 is not None and eta is not None:
        raise ValueError(
            "t1: a flow trajectory (t1) and a GD trajectory (eta, num_steps) exclude each other; "
            "pass one of them"
        )
    system = spectrum.to_system(lam)
    if jnp.dtype(system.s.dtype) == jnp.float64:
        tol = newton_tolerance(system.U.shape[0])
        rtol, atol = (tol if rtol is None else rtol), (tol if atol is None else atol)
    if starvation:
        z_star, M = fixed_point_and_jacobian_s(field, system, rtol=rtol, atol=atol)
    else:
        z_star, M = fixed_point(field, system, rtol=rtol, atol=atol), None
    t = z = None
    z0 = jnp.zeros(system.d, system.s.dtype)
    if eta is not None:
        traj = gd(field, system, z0, eta=eta, num_steps=num_steps, save_every=save_every)
        t, z = traj.t, traj.z
    elif t1 is not None:
        traj = integrate(field, system, z0, t1=t1, num_points=num_points)
        t, z = traj.t, traj.z
    return Prediction(lam, z_star, M, t, z)


def measured_responses(
    outputs: ArrayLike,
    f0: ArrayLike,
    y: ArrayLike,
    U: ArrayLike,
    *,
    steps: ArrayLike | None = None,
    top: int | None = None,
    start_at_zero: bool = False,
) -> Measurement:
    """Measured z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) of the k leading directions (Sec. 4, Fig. 5).

    Args:
        outputs: (T, n) outputs f(X; θ_t) recorded during training on the n examples of U.
        f0: (n,) outputs f(X; θ₀).
        y: (n,) labels in {−1, +1} or {0, 1}.
        U: (n, d) left singular vectors at θ₀.
        steps: (T,) the step (or epoch) of each row of ``outputs`` (default 0, 1, …, T − 1).
        top: keep the k = ``top`` leading directions (default all d).
        start_at_zero: prepend the row z = 0 at step 0 (for records that start after θ₀).

    Returns:
        :class:`Measurement` with (T,) or (T + 1,) steps and z of shape (T[+1], k).

    Raises:
        ValueError: naming ``outputs`` (not (T, n)), ``steps`` (wrong length), ``top`` (< 1), or as
            :func:`ntkdyn.responses_from_outputs`.
    """
    outputs = jnp.asarray(outputs)
    if outputs.ndim != 2:
        raise ValueError(
            f"outputs: expected (T, n) outputs, one row per record, got shape {outputs.shape}; "
            "loop over seeds (each seed has its own U)"
        )
    U = jnp.asarray(U)
    if top is not None:
        if int(top) < 1:
            raise ValueError(f"top: must be >= 1, got {top}")
        if U.ndim == 2:
            U = U[:, : int(top)]
    z = np.asarray(responses_from_outputs(outputs, f0, y, U), np.float64)
    T = outputs.shape[0]
    steps = np.arange(T) if steps is None else np.asarray(steps)
    if steps.shape != (T,):
        raise ValueError(
            f"steps: expected ({T},) steps, one per row of outputs, got shape {steps.shape}"
        )
    if start_at_zero:
        steps = np.concatenate([np.zeros(1, steps.dtype), steps])
        z = np.concatenate([np.zeros((1, z.shape[1])), z], axis=0)
    return Measurement(steps, z)


class SpectrumAnalysis(NamedTuple):
    """The spectrum of YΦ at θ₀ and the theory's predictions on it (:func:`analyse`).

    Attributes:
        spectrum: (U, s) of YΦ = U S Vᵀ at θ₀, U (n, d), s (d,).
        alignment: (d,) label alignment |u_jᵀ1|.
        f0: (n,) outputs f(X; θ₀) on the analysed examples.
        y: (n,) labels as ±1 (float64).
        method: the :class:`ntkdyn.NTKMethod` the Gram matrix was computed with (dense path; not
            used when :attr:`report` is set).
        predictions: name → :class:`Prediction`, one per requested (field, λ).
        report: the matrix-free solver's :class:`ntkdyn.TruncatedSVD` (per-direction residuals
            r_j, iterations, converged, products) when only the k leading directions were
            computed; ``None`` for the dense path.
    """

    spectrum: FeatureSpectrum
    alignment: Float[Array, " d"]
    f0: Float[Array, " n"]
    y: Float[np.ndarray, " n"]
    method: NTKMethod
    predictions: dict[str, Prediction]
    report: TruncatedSVD | None = None

    @property
    def truncated(self) -> bool:
        """Whether U keeps only k < n directions found matrix-free (the dense path keeps all
        directions above its cut-off, :attr:`report` is ``None`` there)."""
        return self.report is not None and self.spectrum.U.shape[1] < self.spectrum.U.shape[0]

    def measure(
        self,
        outputs: ArrayLike,
        *,
        f0: ArrayLike | None = None,
        steps: ArrayLike | None = None,
        top: int | None = None,
        start_at_zero: bool = False,
    ) -> Measurement:
        """Measured z(t) of outputs recorded on the analysed examples (:func:`measured_responses`).

        Args:
            outputs: (T, n) outputs f(X; θ_t) on the examples of :func:`analyse`.
            f0: (n,) outputs at θ₀ (default :attr:`f0`; pass the training loop's own when it
                computes the forward pass differently).
            steps, top, start_at_zero: as in :func:`measured_responses`.

        Returns:
            :class:`Measurement`.

        Raises:
            ValueError: as :func:`measured_responses`.
        """
        return measured_responses(
            outputs,
            self.f0 if f0 is None else f0,
            self.y,
            self.spectrum.U,
            steps=steps,
            top=top,
            start_at_zero=start_at_zero,
        )


def analyse(
    apply_fn: ApplyFn,
    params0: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    predictions: Mapping[str, tuple[Field, float]] | None = None,
    solver: Solver | None = None,
    starvation: bool = True,
    method: NTKMethod | None = None,
    batch_size: int | None = None,
    tol: float | None = None,
    k: int | None = None,
    key: PRNGKeyArray | None = None,
    residual_tol: float = 1e-4,
    max_iters: int | None = None,
    on_unconverged: OnUnconverged = OnUnconverged.WARN,
) -> SpectrumAnalysis:
    """Spectrum of YΦ at θ₀ and, for each named (field, λ), the theory's fixed point and starvation.

    Model + data → :func:`ntkdyn.feature_spectrum` (YΘY = U S² Uᵀ in float64) →
    :class:`ntkdyn.FeatureSystem` (U, s, λ) per prediction → :func:`predict` (z*,
    M[j, i] = ∂z_j*/∂s_i). Measured z(t) of a training run then come from
    :meth:`SpectrumAnalysis.measure`, predicted z(t) from :func:`predict` with a step.

    With ``solver=BlockKrylov(k, ...)`` only the k leading directions are found, matrix-free (YΦ v
    and ΦᵀY u by JVPs and VJPs over batches, no n × n matrix: the path for datasets whose Gram
    matrix does not fit), and
    the predictions are those of the truncated system (U_k, s_k, λ): margins m = U_k z see only the
    kept directions, so the prediction is the theory of the k strongest features alone (exact for
    the first GD step from z = 0, since each u_j is an eigenvector of YΘY; it departs from the
    full linearized model as the dropped directions' margins grow). The solver's report (r_j,
    converged) is kept in :attr:`SpectrumAnalysis.report`.

    Args:
        apply_fn: pure scalar-output ``apply_fn(params, x)``.
        params0: θ₀, the parameters at initialisation.
        x: (n, ...) training inputs.
        y: (n,) labels in {−1, +1} or {0, 1}.
        predictions: name → (field, λ), e.g. ``{"ce": (ce_field, n * wd), "sd": (sd_field, 2 * c)}``
            (λ in the theory's sum form; :func:`ntkdyn.objectives.theory_lam` converts). Default none.
        solver: :class:`ntkdyn.tangent.Dense` (default ``Dense()``; ``Dense(method=
            NTKMethod.STRUCTURED)`` needs an ``apply_fn`` implementing
            :class:`ntkdyn.tangent.DenseStructure`) or :class:`ntkdyn.tangent.BlockKrylov`.
        starvation: compute each prediction's starvation matrix.
        method, batch_size, tol, k, key, residual_tol, max_iters, on_unconverged: deprecated, the
            keyword form of the solver (``k`` given: ``BlockKrylov(k, residual_tol, max_iters,
            key=key, batch_size=batch_size, on_unconverged=on_unconverged)``; otherwise
            ``Dense(tol, method, batch_size)``); not together with ``solver``.

    Returns:
        :class:`SpectrumAnalysis`.

    Raises:
        ValueError: naming ``predictions`` (not name → (field, λ)), ``lam`` (negative) or the
            arguments of :func:`ntkdyn.feature_spectrum` (``k``, ``key``, ``residual_tol``, ...).
        SolverError: a fixed point was not found.
        ntkdyn.SVDNotConvergedError: with ``k`` and ``OnUnconverged.RAISE``, if the residuals
            miss ``residual_tol``.
    """
    x = check_x(x, "x")
    check_outputs(apply_fn, params0, x, None)
    yv = signed_labels(y, x.shape[0])
    predictions = {} if predictions is None else predictions
    if not isinstance(predictions, Mapping) or not all(
        isinstance(v, (tuple, list)) and len(v) == 2 and callable(v[0])
        for v in predictions.values()
    ):
        raise ValueError(
            "predictions: expected a mapping name -> (field, lam), e.g. "
            f"{{'ce': (ntkdyn.ce_field, 0.06)}}, got {predictions!r}"
        )
    checked = {
        name: _check_lam(lam, f"predictions[{name!r}]") for name, (_, lam) in predictions.items()
    }
    legacy = (method, batch_size, tol, k, key, max_iters) != (None,) * 6
    if solver is not None and legacy:
        raise ValueError(
            "solver: pass either solver= or the deprecated method/batch_size/tol/k/key/... "
            "keywords, not both"
        )
    if solver is None and k is not None:
        if tol is not None:
            raise ValueError(
                f"tol: is the eigenvalue cut-off of the dense path (k=None), got tol={tol} "
                f"with k={k}; the matrix-free path stops on residual_tol"
            )
        solver = BlockKrylov(
            k,
            residual_tol,
            60 if max_iters is None else max_iters,
            key=key,
            batch_size=batch_size,
            on_unconverged=on_unconverged,
        )
    elif solver is None:
        solver = Dense(tol, method or NTKMethod.JACOBIAN_CONTRACTION, batch_size)
    spectrum = feature_spectrum(apply_fn, params0, x, yv, solver=solver)
    report = None
    if spectrum.residuals is not None:
        report = TruncatedSVD(
            np.asarray(spectrum.U),
            np.asarray(spectrum.s),
            None,
            spectrum.residuals,
            spectrum.iterations,
            spectrum.converged,
            spectrum.products,
        )
    f0 = apply_outputs(apply_fn, params0, x, None)
    preds = {
        name: predict(spectrum, checked[name], field, starvation=starvation)
        for name, (field, _) in predictions.items()
    }
    used = solver.method if isinstance(solver, Dense) else NTKMethod.JACOBIAN_CONTRACTION
    return SpectrumAnalysis(spectrum, spectrum.label_alignment(), f0, yv, used, preds, report)


def spectrum_report(
    apply_fn: ApplyFn,
    params0: Any,
    x: ArrayLike,
    y: ArrayLike,
    *,
    solver: Solver,
    lam_ce: float,
    lam_sd: float,
    top: int,
) -> tuple[dict[str, np.ndarray], dict[str, Any], SpectrumAnalysis]:
    """The spectrum at θ₀ and the CE and SD theory on it, as arrays and JSON-ready facts.

    :func:`analyse` with ``solver`` (a :class:`~ntkdyn.tangent.BlockKrylov` that misses its
    tolerance is flagged by ``converged``, not raised), then :func:`predict` under CE (λ_CE) and
    SD (λ_SD) on the same (U, s). Feature 1 starves direction j > 1 when
    ∂z_j*/∂s₁ < −:data:`DECOUPLED_ATOL`, for both losses.

    Args:
        apply_fn, params0: the network at θ₀.
        x, y: inputs and labels (±1 or {0, 1}).
        solver: :class:`~ntkdyn.tangent.Dense` or :class:`~ntkdyn.tangent.BlockKrylov`.
        lam_ce, lam_sd: the theory's λ of each loss (sum form).
        top: number of leading directions in the ``top`` block and ``starvation_top_ce``.

    Returns:
        ``(arrays, facts, analysis)``: NumPy arrays ``s``, ``alignment``, ``U_top``, ``z_ce``,
        ``z_sd``, ``dz_ds1_ce``, ``dz_ds1_sd`` (∂z_j*/∂s₁ for every j), ``starvation_top_ce``
        (top × top block of ∂z_j*/∂s_i) and, from a Krylov solver, ``residuals``; the facts
        ``d``, ``seconds`` (the spectrum's wall time), ``solver``, ``converged``, ``residuals``,
        ``iterations``, ``matvecs``, ``s``, ``alignment``, ``s1_over_s2``, ``top``,
        ``newton_tol``, ``starvation_threshold``, ``starved_by_top_ce``/``_sd`` with
        ``starved_magnitude_ce``/``_sd`` ([largest, smallest] |∂z_j*/∂s₁| among the starved, or
        ``None``), ``max_abs_dz_ds1_sd``; the :class:`SpectrumAnalysis` with both predictions.

    Raises:
        ValueError: as :func:`analyse` and :func:`predict`.
        SolverError: a fixed point was not found.
    """
    import dataclasses
    import time

    if isinstance(solver, BlockKrylov):
        solver = dataclasses.replace(solver, on_unconverged=OnUnconverged.IGNORE)
    t0 = time.perf_counter()
    analysis = analyse(apply_fn, params0, x, y, solver=solver)
    seconds = time.perf_counter() - t0
    spec = analysis.spectrum
    (ce, tol_ce), (sd, tol_sd) = (
        predict_at_scale(spec, lam_ce, ce_field),
        predict_at_scale(spec, lam_sd, sd_field),
    )
    s = np.asarray(spec.s)
    d, k = s.size, min(int(top), s.size)
    M_ce, M_sd = np.asarray(ce.starvation), np.asarray(sd.starvation)
    arrays = {
        "s": s,
        "alignment": np.asarray(analysis.alignment),
        "U_top": np.asarray(spec.U[:, :k]),
        "z_ce": np.asarray(ce.z_star),
        "z_sd": np.asarray(sd.z_star),
        "dz_ds1_ce": M_ce[:, 0],
        "dz_ds1_sd": M_sd[:, 0],
        "starvation_top_ce": M_ce[:k, :k],
    }
    if spec.residuals is not None:
        arrays["residuals"] = np.asarray(spec.residuals)
    facts: dict[str, Any] = {
        "d": d,
        "seconds": seconds,
        "solver": spec.solver,
        "converged": bool(spec.converged),
        "residuals": None if spec.residuals is None else arrays["residuals"].tolist(),
        "iterations": spec.iterations,
        "matvecs": spec.products,
        "s": s.tolist(),
        "alignment": arrays["alignment"].tolist(),
        "s1_over_s2": float(s[0] / s[1]) if d > 1 else None,
        "top": {
            key: arrays[key][:k].tolist()
            for key in ("s", "alignment", "z_ce", "z_sd", "dz_ds1_ce", "dz_ds1_sd")
        },
        "newton_tol": max(tol_ce, tol_sd),
        "starvation_threshold": -DECOUPLED_ATOL,
    }
    for name, col in (("ce", M_ce[1:, 0]), ("sd", M_sd[1:, 0])):
        starved = np.abs(col[col < -DECOUPLED_ATOL])
        facts[f"starved_by_top_{name}"] = int(starved.size)
        facts[f"starved_magnitude_{name}"] = (
            [float(starved.max()), float(starved.min())] if starved.size else None
        )
    facts["max_abs_dz_ds1_sd"] = float(np.max(np.abs(M_sd[:, 0])))
    return arrays, facts, analysis._replace(predictions={"ce": ce, "sd": sd})


def predict_at_scale(
    spectrum: FeatureSpectrum, lam: float, field: Field
) -> tuple[Prediction, float]:
    """:func:`predict` (with the starvation matrix) at :func:`newton_tolerance` (n), and, if Newton
    stalls there, once more at that tolerance times s₁².

    The field scales as s²: with s₁ in the hundreds (a ResNet's spectrum) it rounds at ≈ s₁²·n·ε,
    so Newton gets the same relative tolerance on that scale.

    Returns:
        ``(prediction, tolerance used)``.

    Raises:
        SolverError: Newton fails at both tolerances.
    """
    from ntkdyn.dynamics import SolverError

    tol = newton_tolerance(int(spectrum.U.shape[0]))
    try:
        return predict(spectrum, lam, field), tol
    except SolverError:
        tol *= max(1.0, float(spectrum.s[0]) ** 2)
        return predict(spectrum, lam, field, rtol=tol, atol=tol), tol


def starvation_summary(spectrum: FeatureSpectrum, lam: float, field: Field) -> dict[str, Any]:
    """The starvation matrix of one (U, s, λ) and the facts a report states about it.

    :func:`predict` (float64, Newton at :func:`newton_tolerance`) gives z* and
    M[j, i] = ∂z_j*/∂s_i; feature i starves feature j when M[j, i] < −:data:`DECOUPLED_ATOL`.
    A theory that has no fixed point (λ = 0, or Newton fails) is reported, not raised, so the
    trained run that asked keeps its results. Newton runs at :func:`newton_tolerance` (n), and,
    if it stalls there, once more at that tolerance times s₁² (the field's scale; ``newton_tol``
    says which).

    Args:
        spectrum: (U, s), e.g. the k leading directions found matrix-free.
        lam: the theory's λ (sum form; :func:`ntkdyn.objectives.theory_lam` converts).
        field: :func:`ntkdyn.ce_field` or :func:`ntkdyn.sd_field`.

    Returns:
        JSON-ready dict: ``lam``, ``z_star``, ``matrix`` (M), ``negative_fraction_col1`` and
        ``col1_min`` (j > 1 against feature 1), the same for the column of the largest |z_i*|
        (``dominant`` is its 1-based index, ``negative_fraction_dominant``, ``dominant_min``),
        ``max_abs`` and ``newton_tol``; or ``lam`` and ``error`` when there is no fixed point.
    """
    import jax

    from ntkdyn.dynamics import SolverError

    lam = _check_lam(lam)
    out: dict[str, Any] = {"lam": lam}
    with jax.enable_x64(True):  # the fixed points sit at margins where σ(−m) ~ 1e-3
        spectrum64 = FeatureSpectrum(
            jnp.asarray(spectrum.U, jnp.float64), jnp.asarray(spectrum.s, jnp.float64)
        )
        if lam == 0.0:
            return {**out, "error": "λ = 0: no finite fixed point"}
        try:
            p, tol = predict_at_scale(spectrum64, lam, field)
        except SolverError as exc:
            return {**out, "error": str(exc)}
        z, M = np.asarray(p.z_star, np.float64), np.asarray(p.starvation, np.float64)
    i = int(np.argmax(np.abs(z)))
    col = np.delete(M[:, i], i)
    return {
        **out,
        "z_star": z,
        "matrix": M,
        "negative_fraction_col1": float(np.mean(M[1:, 0] < -DECOUPLED_ATOL)),
        "col1_min": float(np.min(M[1:, 0])),
        "dominant": i + 1,
        "negative_fraction_dominant": float(np.mean(col < -DECOUPLED_ATOL)),
        "dominant_min": float(np.min(col)),
        "max_abs": float(np.max(np.abs(M))),
        "newton_tol": tol,
    }


def training_responses(
    apply_fn: ApplyFn,
    params0: Any,
    x: ArrayLike,
    y: ArrayLike,
    analysis: SpectrumAnalysis,
    objective: Any,
    *,
    weight_decay: float = 0.0,
    eta: float,
    num_steps: int,
    save_every: int = 1,
    log: Callable[[str], None] | None = None,
    checkpoints: Any = None,
) -> dict[str, Any]:
    """z(t) of real training, of linearized training and of the theory's GD, on one (U, s, λ).

    The last step of the journey: the network and its linearization are trained by full-batch GD
    (:func:`ntkdyn.linearized.train_gd`, centred outputs g = f − f(θ₀)) with step η on the sum-form
    ``objective`` plus ``weight_decay``; their recorded outputs are measured on U
    (:meth:`SpectrumAnalysis.measure`: z(t) = Uᵀ Y (f_t − f₀), never an n × n matrix) and set
    beside :func:`predict`'s GD in feature space at the λ of
    :func:`ntkdyn.objectives.theory_lam`. Linearized training and the theory agree when U keeps
    every direction; with a truncated U they agree at the first step and part as the dropped
    directions' margins grow. Real training departs from both as the tangent features move.

    Args:
        apply_fn, params0: the network at θ₀ (trained in the params' dtype).
        x, y: the analysed training inputs and labels.
        analysis: :func:`analyse`'s result at θ₀ on the same examples.
        objective: :class:`ntkdyn.objectives.ERM` or :class:`~ntkdyn.objectives.SpectralDecoupling`.
        weight_decay: coupled weight decay of the mean-form loss (λ = n·wd for CE).
        eta, num_steps, save_every: GD step (sum form), steps and record interval.
        log: called with one line per training run (e.g. ``print``), or ``None``.
        checkpoints: :class:`ntkdyn.train.checkpoint.Checkpoints` (or ``None``): both training
            runs save their state in its stages ``network`` and ``linearized``
            (:func:`ntkdyn.linearized.train_gd`) and, with ``resume``, continue from there; the
            z(t) of a resumed run equal an uninterrupted one's with the same checkpoints.

    Returns:
        Dict with NumPy arrays ``t`` (T,), ``z_network``, ``z_linearized``, ``z_theory`` (T, d),
        the floats ``lam`` and ``seconds_network``, ``seconds_linearized`` (wall time of each run).

    Raises:
        ValueError: as :func:`ntkdyn.objectives.theory_lam`, :func:`ntkdyn.linearized.train_gd`
            and :func:`predict`.
        SolverError: the theory's trajectory failed (lower ``eta``).
    """
    import time

    import jax

    from ntkdyn.linearized import train_gd
    from ntkdyn.objectives import theory_lam

    n = int(analysis.spectrum.U.shape[0])
    field, lam = theory_lam(objective, num_examples=n, weight_decay=weight_decay)
    kw = dict(eta=eta, num_steps=num_steps, save_every=save_every, center=True)
    out: dict[str, Any] = {"lam": float(lam)}
    for name, linearized in (("network", False), ("linearized", True)):
        t0 = time.perf_counter()
        trace = train_gd(
            apply_fn,
            params0,
            x,
            y,
            linearized=linearized,
            objective=objective,
            weight_decay=weight_decay,
            checkpoints=checkpoints.stage(name) if checkpoints is not None else None,
            **kw,
        )
        jax.block_until_ready(trace.outputs)
        out[f"seconds_{name}"] = time.perf_counter() - t0
        if log is not None:
            log(f"train ({name}): {num_steps} GD steps in {out[f'seconds_{name}']:.1f} s")
        out[f"z_{name}"] = analysis.measure(trace.outputs, f0=trace.f0, steps=trace.steps).z
    theory = predict(
        analysis.spectrum,
        lam,
        field,
        starvation=False,
        eta=eta,
        num_steps=num_steps,
        save_every=save_every,
    )
    return {**out, "t": np.asarray(theory.t), "z_theory": np.asarray(theory.z)}


def objective_for_lam(loss: str, lam: float, num_examples: int) -> tuple[Any, float]:
    """The mean-form training objective and coupled weight decay whose theory λ is ``lam``.

    The inverse of :func:`ntkdyn.objectives.theory_lam`, which stays the one conversion: its
    λ per unit coefficient scales the objective (CE: ERM with weight decay λ/n; SD:
    SpectralDecoupling with coefficient λ/2), and the round trip is checked.

    Args:
        loss: ``"ce"`` or ``"sd"``.
        lam: the theory's λ > 0 (sum form).
        num_examples: n, the examples of the mean.

    Returns:
        ``(objective, weight_decay)`` for :func:`training_responses`.

    Raises:
        ValueError: naming ``loss`` or ``lam``.
    """
    from ntkdyn.objectives import ERM, SpectralDecoupling, theory_lam

    lam = _check_lam(lam)
    if loss == "ce":
        _, unit = theory_lam(ERM(), num_examples=num_examples, weight_decay=1.0)
        objective, wd = ERM(), lam / unit
    elif loss == "sd":
        _, unit = theory_lam(SpectralDecoupling(coef=1.0), num_examples=num_examples)
        objective, wd = SpectralDecoupling(coef=lam / unit), 0.0
    else:
        raise ValueError(f"loss: expected 'ce' or 'sd', got {loss!r}")
    _, back = theory_lam(objective, num_examples=num_examples, weight_decay=wd)
    if not math.isclose(back, lam, rel_tol=1e-12):
        raise ValueError(f"lam: the objective's theory λ is {back}, expected {lam}")
    return objective, wd


def relative_error(z: ArrayLike, ref: ArrayLike) -> Float[np.ndarray, " T"]:
    """‖z_t − ref_t‖ / ‖ref_t‖ for each saved time t (the absolute error where ref_t = 0).

    Args:
        z, ref: (T, d) responses, e.g. measured and predicted z(t).

    Returns:
        (T,) relative errors (0 at t = 0 when both start at z = 0).
    """
    z, ref = np.asarray(z, np.float64), np.asarray(ref, np.float64)
    num = np.linalg.norm(z - ref, axis=-1)
    den = np.linalg.norm(ref, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), num)


# --------------------------------------------------------------------------------------------------
# The two-feature system of the theory


def _check_positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: must be a finite number > 0, got {value}")


def starvation_table(
    s1: Sequence[float],
    s2: float = 2.0,
    delta: float = 0.5,
    lam: float = 0.01,
    sd_lam: float = 0.002,
    fd_h: float = 1e-4,
) -> dict[str, Any]:
    """Fixed points and ∂z₂*/∂s₁ of the two-feature system for each s₁, under CE and SD.

    U(δ) = [[√(1−δ²), −δ], [δ, √(1−δ²)]], y = (1, 1), s = (s₁, s₂). CE: λz* = S²Uᵀσ(−Uz*);
    SD: Uᵀσ(−Uz*) = λ_SD z* (paper Sec. 3 and 4). Derivatives by implicit differentiation through
    the Newton solver (one batched solve); CE's also by central differences.

    Args:
        s1: values of s₁ (> 0).
        s2: s₂ > 0.
        delta: coupling, |δ| < 1.
        lam: CE weight decay λ > 0.
        sd_lam: SD penalty λ_SD > 0.
        fd_h: finite-difference step, 0 < h < min(s).

    Returns:
        A JSON-ready dict with keys ``s1``, ``s2``, ``delta``, ``ce``, ``sd``, ``starvation`` (CE's
        ∂z₂*/∂s₁ < 0 at every s₁ > s₂, and at least one such s₁), ``sd_decoupled`` (every SD
        |∂z*/∂s₁| < :data:`DECOUPLED_ATOL`) and ``fd_max_abs_error`` (implicit vs finite
        differences).

    Raises:
        ValueError: naming ``s1``, ``s2``, ``delta``, ``lam``, ``sd_lam`` or ``fd_h``.
    """
    s1 = [float(v) for v in s1]
    if not s1:
        raise ValueError("s1: give at least one value")
    for v in s1:
        _check_positive("s1", v)
    _check_positive("s2", s2)
    _check_positive("lam", lam)
    _check_positive("sd_lam", sd_lam)
    if not math.isfinite(delta) or abs(delta) >= 1:
        raise ValueError(f"delta: must satisfy |delta| < 1, got {delta}")
    if not (math.isfinite(fd_h) and 0 < fd_h < min(min(s1), s2)):
        raise ValueError(
            f"fd_h: must satisfy 0 < fd_h < min(s1, s2) = {min(min(s1), s2)}, got {fd_h}"
        )

    k = len(s1)
    # One batch per loss: the k systems, then (CE only) their s₁ ± h neighbours for the differences.
    ce_systems = [rotation_system([v, s2], delta, lam) for v in s1]
    ce_systems += [
        rotation_system([v + sign * fd_h, s2], delta, lam) for sign in (1, -1) for v in s1
    ]
    sd_systems = [rotation_system([v, s2], delta, sd_lam) for v in s1]
    z_all, J_all = fixed_points_batch(ce_field, stack_systems(ce_systems))
    z_ce, J_ce = z_all[:k], J_all[:k]
    fd = np.asarray((z_all[k : 2 * k, 1] - z_all[2 * k :, 1]) / (2 * fd_h))
    z_sd, J_sd = fixed_points_batch(sd_field, stack_systems(sd_systems))

    dz2 = np.asarray(J_ce[:, 1, 0])
    above = np.array(s1) > s2
    starvation = bool(above.any() and np.all(dz2[above] < 0))
    sd_decoupled = bool(np.all(np.abs(np.asarray(J_sd[:, :, 0])) < DECOUPLED_ATOL))
    return {
        "s1": s1,
        "s2": float(s2),
        "delta": float(delta),
        "ce": {
            "lam": float(lam),
            "z1": np.asarray(z_ce[:, 0]).tolist(),
            "z2": np.asarray(z_ce[:, 1]).tolist(),
            "dz1_ds1": np.asarray(J_ce[:, 0, 0]).tolist(),
            "dz2_ds1": dz2.tolist(),
            "dz2_ds1_fd": fd.tolist(),
        },
        "sd": {
            "lam": float(sd_lam),
            "z1": np.asarray(z_sd[:, 0]).tolist(),
            "z2": np.asarray(z_sd[:, 1]).tolist(),
            "dz1_ds1": np.asarray(J_sd[:, 0, 0]).tolist(),
            "dz2_ds1": np.asarray(J_sd[:, 1, 0]).tolist(),
        },
        "starvation": starvation,
        "sd_decoupled": sd_decoupled,
        "fd_max_abs_error": float(np.max(np.abs(fd - dz2))),
        "fd_h": float(fd_h),
    }
