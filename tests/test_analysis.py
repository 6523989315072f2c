"""The practice journey: spectrum → prediction → measurement, against closed forms and the theory core."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn import (
    ERM,
    SpectralDecoupling,
    ce_field,
    fixed_point,
    sd_field,
    sd_square_margin,
    starvation_matrix,
    theory_lam,
    train_gd,
)
from ntkdyn.analysis import (
    Measurement,
    Prediction,
    SpectrumAnalysis,
    analyse,
    measured_responses,
    objective_for_lam,
    predict,
    relative_error,
    spectrum_report,
    starvation_table,
)
from ntkdyn.tangent import BlockKrylov, Dense, NTKMethod, feature_spectrum

F64 = dict(rtol=1e-9, atol=1e-10)


def _linear(key, n=6, p=8):
    """A model linear in θ with p > n (so U is square and nothing is truncated)."""
    k1, k2 = jax.random.split(key)
    x = jax.random.normal(k1, (n, p))
    y = jnp.array([1, 1, -1, 1, -1, -1][:n])
    params0 = {"w": 0.1 * jax.random.normal(k2, (p,))}
    return (lambda q, x: x @ q["w"]), params0, x, y


@pytest.mark.parametrize("name", ["ce", "sd"])
def test_predicted_z_of_linear_model_equals_measured_gd(key, name):
    """GD on a model linear in θ is GD in z: the prediction equals the measurement exactly."""
    f, p0, x, y = _linear(key)
    eta, K = 0.05, 60
    objective, wd = (ERM(), 0.05 / 6) if name == "ce" else (SpectralDecoupling(coef=0.025), 0.0)
    field, lam = theory_lam(objective, num_examples=6, weight_decay=wd)
    assert field is (ce_field if name == "ce" else sd_field) and lam == pytest.approx(0.05)
    a = analyse(f, p0, x, y, predictions={"loss": (field, lam)})
    assert a.spectrum.s.shape == (6,)
    trace = train_gd(
        f, p0, x, y, eta=eta, num_steps=K, save_every=10, objective=objective, weight_decay=wd
    )
    measured = a.measure(trace.outputs, f0=trace.f0, steps=trace.steps)
    theory = predict(a.spectrum, lam, field, eta=eta, num_steps=K, save_every=10)
    assert isinstance(measured, Measurement) and isinstance(theory, Prediction)
    np.testing.assert_array_equal(measured.steps, np.arange(0, K + 1, 10))
    np.testing.assert_allclose(theory.t, eta * measured.steps, **F64)
    np.testing.assert_allclose(measured.z, theory.z, **F64)
    np.testing.assert_allclose(measured.z[0], 0.0, atol=0)
    # a's own f0 is the same forward pass as the training loop's
    np.testing.assert_allclose(a.measure(trace.outputs).z, measured.z, **F64)


def test_fixed_point_and_starvation_equal_the_theory_core(key):
    f, p0, x, y = _linear(key)
    a = analyse(f, p0, x, y, predictions={"ce": (ce_field, 0.1), "sd": (sd_field, 0.02)})
    for name, field, lam in (("ce", ce_field, 0.1), ("sd", sd_field, 0.02)):
        system = a.spectrum.to_system(lam)
        pred = a.predictions[name]
        assert pred.lam == lam and pred.t is None and pred.z is None
        np.testing.assert_allclose(pred.z_star, fixed_point(field, system), **F64)
        np.testing.assert_allclose(pred.starvation, starvation_matrix(field, system), **F64)
    # SD with square U: every margin equals a with σ(−a) = λa, so z* = a Uᵀ1 (closed form)
    margin = sd_square_margin(0.02)
    np.testing.assert_allclose(
        a.predictions["sd"].z_star, margin * a.spectrum.U.sum(axis=0), rtol=1e-8
    )
    np.testing.assert_allclose(a.predictions["sd"].starvation, 0.0, atol=1e-8)
    np.testing.assert_allclose(a.alignment, np.abs(a.spectrum.U.sum(0)), **F64)
    np.testing.assert_array_equal(a.y, np.asarray(y, np.float64))
    assert a.method is NTKMethod.JACOBIAN_CONTRACTION


def test_analyse_matches_feature_spectrum_and_skips_starvation_on_request(key):
    f, p0, x, y = _linear(key)
    a = analyse(f, p0, x, (y + 1) // 2, predictions={"ce": (ce_field, 0.1)}, starvation=False)
    spec = feature_spectrum(f, p0, x, y)
    np.testing.assert_allclose(a.spectrum.s, spec.s, **F64)
    np.testing.assert_allclose(a.spectrum.U, spec.U, **F64)
    assert a.predictions["ce"].starvation is None and a.predictions["ce"].z_star.shape == (6,)
    assert analyse(f, p0, x, y).predictions == {}


def test_flow_prediction_starts_at_zero_and_tends_to_the_fixed_point(key):
    f, p0, x, y = _linear(key)
    spec = feature_spectrum(f, p0, x, y)
    pred = predict(spec, 0.5, ce_field, t1=200.0, num_points=5)
    assert pred.t.shape == (5,) and pred.z.shape == (5, 6)
    np.testing.assert_allclose(pred.z[0], 0.0, atol=0)
    np.testing.assert_allclose(pred.z[-1], pred.z_star, rtol=1e-5, atol=1e-6)


def test_measured_responses_keep_top_and_start_at_zero(key):
    f, p0, x, y = _linear(key)
    spec = feature_spectrum(f, p0, x, y)
    ckpts = [{"w": p0["w"] + 0.1 * i} for i in range(1, 4)]
    outs = jnp.stack([f(c, x) for c in ckpts])
    m = measured_responses(outs, f(p0, x), y, spec.U, steps=[5, 10, 15], top=2, start_at_zero=True)
    np.testing.assert_array_equal(m.steps, [0, 5, 10, 15])
    assert m.z.shape == (4, 2) and m.z.dtype == np.float64
    np.testing.assert_allclose(m.z[0], 0.0, atol=0)
    full = measured_responses(outs, f(p0, x), y, spec.U)
    np.testing.assert_array_equal(full.steps, [0, 1, 2])
    np.testing.assert_allclose(m.z[1:], full.z[:, :2], **F64)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, o, f0, y: predict(s, -1.0, ce_field), "lam"),
        (lambda s, o, f0, y: predict(s.U, 0.1, ce_field), "spectrum"),
        (lambda s, o, f0, y: predict(s, 0.1, ce_field, eta=0.1), "eta, num_steps"),
        (
            lambda s, o, f0, y: predict(s, 0.1, ce_field, eta=0.1, num_steps=2, t1=1.0),
            "t1",
        ),
        (lambda s, o, f0, y: measured_responses(o[0], f0, y, s.U), "outputs"),
        (lambda s, o, f0, y: measured_responses(o, f0, y, s.U, steps=[1]), "steps"),
        (lambda s, o, f0, y: measured_responses(o, f0, y, s.U, top=0), "top"),
        (lambda s, o, f0, y: measured_responses(o, f0[:3], y, s.U), "outputs"),
    ],
)
def test_bad_input_names_argument(key, call, match):
    f, p0, x, y = _linear(key)
    spec = feature_spectrum(f, p0, x, y)
    outs = jnp.stack([f(p0, x)] * 2)
    with pytest.raises(ValueError, match=match):
        call(spec, outs, f(p0, x), y)


def test_analyse_names_bad_predictions_and_method(key):
    f, p0, x, y = _linear(key)
    with pytest.raises(ValueError, match="predictions"):
        analyse(f, p0, x, y, predictions={"ce": ce_field})
    with pytest.raises(ValueError, match=r"predictions\['ce'\]"):
        analyse(f, p0, x, y, predictions={"ce": (ce_field, -0.1)})
    with pytest.raises(ValueError, match="method: NTKMethod.STRUCTURED"):
        analyse(f, p0, x, y, solver=Dense(method=NTKMethod.STRUCTURED))
    with pytest.raises(ValueError, match="solver"):
        analyse(f, p0, x, y, solver=Dense(), tol=1e-9)
    assert isinstance(analyse(f, p0, x, y), SpectrumAnalysis)


def test_starvation_table_lives_in_analysis_and_the_command_uses_it():
    import ntkdyn.commands.starvation as command

    assert command.starvation_table is starvation_table
    table = starvation_table([2.0, 6.0])
    assert table["starvation"] and table["sd_decoupled"]
    assert table["fd_max_abs_error"] < 1e-7
    with pytest.raises(ValueError, match="delta"):
        starvation_table([2.0], delta=1.0)


def test_analyse_top_k_matrix_free_is_the_truncated_dense_system(key):
    """analyse(solver=BlockKrylov(k)) keeps the k leading directions of the dense spectrum and predicts on them.

    The first GD step from z = 0 is exact on the truncated system (each u_j is an eigenvector of
    YΘY, so u_jᵀYΘY1 = s_j² u_jᵀ1); the second is not (the dropped directions' margins feed back).
    """
    k1, k2 = jax.random.split(key)
    n, p, k = 12, 20, 3
    x = jax.random.normal(k1, (n, p))
    y = jnp.where(jnp.arange(n) % 3 == 0, -1, 1)
    p0 = {"w": 0.1 * jax.random.normal(k2, (p,))}

    def f(q, x):
        return x @ q["w"]

    dense = analyse(f, p0, x, y)
    assert dense.report is None and not dense.truncated
    a = analyse(
        f,
        p0,
        x,
        y,
        predictions={"ce": (ce_field, 0.1)},
        solver=BlockKrylov(k, 1e-9, key=jax.random.PRNGKey(1)),
    )
    assert a.truncated and a.spectrum.converged and a.spectrum.residuals.shape == (k,)
    assert a.report.converged and a.report.matvecs == a.spectrum.products
    # the deprecated keywords are the same solver
    legacy = analyse(f, p0, x, y, k=k, key=jax.random.PRNGKey(1), residual_tol=1e-9)
    np.testing.assert_array_equal(legacy.spectrum.s, a.spectrum.s)
    assert a.spectrum.U.shape == (n, k)
    np.testing.assert_allclose(a.spectrum.s, dense.spectrum.s[:k], rtol=1e-12)
    np.testing.assert_allclose(a.spectrum.U, dense.spectrum.U[:, :k], atol=1e-8)
    np.testing.assert_allclose(a.alignment, dense.alignment[:k], atol=1e-8)
    truncated = type(dense.spectrum)(dense.spectrum.U[:, :k], dense.spectrum.s[:k])
    np.testing.assert_allclose(
        a.predictions["ce"].z_star, fixed_point(ce_field, truncated.to_system(0.1)), rtol=1e-6
    )
    objective, wd = ERM(), 0.1 / n
    trace = train_gd(f, p0, x, y, eta=0.01, num_steps=2, objective=objective, weight_decay=wd)
    measured = a.measure(trace.outputs, f0=trace.f0, steps=trace.steps).z
    theory = predict(a.spectrum, 0.1, ce_field, starvation=False, eta=0.01, num_steps=2).z
    np.testing.assert_allclose(measured[1], theory[1], rtol=1e-7)
    assert np.max(np.abs(measured[2] - theory[2])) > 1e-6 * np.max(np.abs(theory[2]))
    with pytest.raises(ValueError, match="key"):
        analyse(f, p0, x, y, k=k)
    with pytest.raises(ValueError, match="key"):
        BlockKrylov(k)


@pytest.mark.parametrize("name", ["ce", "sd"])
def test_training_responses_of_a_linear_model_equal_the_theory(key, name):
    """On a model linear in θ the network, its linearization and the theory's GD coincide."""
    from ntkdyn.analysis import training_responses

    f, p0, x, y = _linear(key)
    objective, wd = (ERM(), 0.05 / 6) if name == "ce" else (SpectralDecoupling(coef=0.025), 0.0)
    lines = []
    out = training_responses(
        f, p0, x, y, analyse(f, p0, x, y), objective, weight_decay=wd, eta=0.05,
        num_steps=40, save_every=10, log=lines.append,
    )  # fmt: skip
    assert out["lam"] == pytest.approx(0.05) and len(lines) == 2
    np.testing.assert_allclose(out["t"], 0.05 * np.arange(0, 41, 10), **F64)
    for k in ("z_network", "z_linearized"):
        np.testing.assert_allclose(out[k], out["z_theory"], **F64)
    assert np.max(np.abs(out["z_theory"][-1])) > 1e-2  # the responses moved


def test_starvation_summary_is_predicts_matrix_with_its_facts(key):
    from ntkdyn.analysis import DECOUPLED_ATOL, newton_tolerance, starvation_summary

    f, p0, x, y = _linear(key)
    a = analyse(f, p0, x, y)
    ce = starvation_summary(a.spectrum, 0.1, ce_field)
    M = np.asarray(predict(a.spectrum, 0.1, ce_field).starvation)
    np.testing.assert_allclose(ce["matrix"], M, **F64)
    assert ce["col1_min"] == pytest.approx(M[1:, 0].min())
    assert ce["negative_fraction_col1"] == pytest.approx(np.mean(M[1:, 0] < -DECOUPLED_ATOL))
    i = ce["dominant"] - 1
    assert i == int(np.argmax(np.abs(ce["z_star"])))
    assert ce["dominant_min"] == pytest.approx(np.delete(M[:, i], i).min())
    assert ce["max_abs"] == pytest.approx(np.abs(M).max()) and ce["max_abs"] > 1e-3
    sd = starvation_summary(a.spectrum, 0.1, sd_field)  # SD decouples: ∂z_j*/∂s_i = 0 for i ≠ j
    off = sd["matrix"] - np.diag(np.diag(sd["matrix"]))
    assert np.max(np.abs(off)) < DECOUPLED_ATOL and sd["negative_fraction_col1"] == 0.0
    no_fixed_point = starvation_summary(a.spectrum, 0.0, ce_field)
    assert set(no_fixed_point) == {"lam", "error"} and "λ = 0" in no_fixed_point["error"]
    assert ce["newton_tol"] == newton_tolerance(6) == 1e-12
    assert newton_tolerance(50_000) == pytest.approx(1e-9)
    with pytest.raises(ValueError, match="lam: the theory's λ must be finite and >= 0"):
        starvation_summary(a.spectrum, -1.0, ce_field)


@pytest.mark.parametrize("loss, field", [("ce", ce_field), ("sd", sd_field)])
def test_objective_for_lam_inverts_theory_lam(loss, field):
    objective, wd = objective_for_lam(loss, 0.06, 300)
    back_field, lam = theory_lam(objective, num_examples=300, weight_decay=wd)
    assert back_field is field and lam == pytest.approx(0.06, rel=1e-14)
    assert (wd == pytest.approx(2e-4)) if loss == "ce" else (objective.coef == pytest.approx(0.03))
    with pytest.raises(ValueError, match="loss"):
        objective_for_lam("mse", 0.06, 300)


def test_relative_error_per_time():
    ref = np.array([[0.0, 0.0], [3.0, 4.0]])
    z = np.array([[0.0, 0.0], [3.0, 3.0]])
    np.testing.assert_allclose(relative_error(z, ref), [0.0, 0.2])
    np.testing.assert_allclose(relative_error(np.ones((2, 2)), np.zeros((2, 2))), [2**0.5] * 2)


def test_spectrum_report_counts_starvation_by_the_one_threshold(key):
    """Dense and BlockKrylov reports have the same facts; counts follow −DECOUPLED_ATOL."""
    from ntkdyn.analysis import DECOUPLED_ATOL

    f, p0, x, y = _linear(key)
    arrays, facts, a = spectrum_report(f, p0, x, y, solver=Dense(), lam_ce=0.1, lam_sd=0.01, top=3)
    col = arrays["dz_ds1_ce"][1:]
    assert facts["starved_by_top_ce"] == int(np.sum(col < -DECOUPLED_ATOL))
    starved = np.abs(col[col < -DECOUPLED_ATOL])
    if starved.size:
        assert facts["starved_magnitude_ce"] == [starved.max(), starved.min()]
    assert facts["starved_by_top_sd"] == 0 and facts["starved_magnitude_sd"] is None
    assert facts["residuals"] is None and facts["iterations"] is None and facts["d"] == 6
    np.testing.assert_allclose(arrays["z_ce"], a.predictions["ce"].z_star)
    solver = BlockKrylov(3, 1e-9, key=jax.random.PRNGKey(3))
    arrays3, facts3, _ = spectrum_report(f, p0, x, y, solver=solver, lam_ce=0.1, lam_sd=0.01, top=3)
    assert set(facts3) == set(facts) and len(facts3["residuals"]) == 3 and facts3["converged"]
    np.testing.assert_allclose(arrays3["s"], arrays["s"][:3], rtol=1e-12)
