"""The ``ntkdyn spectrum`` command: files written, spectrum consistent with the library, SD closed form, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.cli import main
from ntkdyn.commands.spectrum import build_model, load_data
from ntkdyn.tangent import tangent_features


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    rc = main(["spectrum", "--n", "24", "--hidden", "32", "--top", "5", "--out", str(out), *extra])
    return rc, out


def test_moons_run_writes_consistent_results(tmp_path):
    rc, out = _run(tmp_path, "--train-steps", "40", "--save-every", "20", "--eta", "1e-3")
    assert rc == 0
    for name in (
        "config.json",
        "results.json",
        "metrics.jsonl",
        "spectrum.npz",
        "spectrum.png",
        "spectrum.pdf",
        "summary.md",
        "responses.npz",
        "responses.json",
        "responses.png",
        "responses.pdf",
    ):
        assert (out / name).is_file(), name
    # linearized training reproduces the theory's GD in z exactly (full-rank U); the network is close
    track = json.loads((out / "responses.json").read_text())
    assert track["rel_err_linearized_vs_theory"] < 1e-8
    assert track["rel_err_network_vs_theory"] < 0.2
    z = np.load(out / "responses.npz")
    assert z["z_network"].shape == z["z_theory"].shape == (3, 24)
    res = json.loads((out / "results.json").read_text())
    s = np.asarray(res["s"])
    assert res["d"] == 24 == s.size  # p = 129 > n: full rank
    # the singular values are those of YΦ of the same (float64-evaluated) network
    x, y = load_data("moons", 24, 0)
    apply_fn, params = build_model("mlp", "moons", [32], 0)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    phi = tangent_features(apply_fn, params, jnp.asarray(x, jnp.float64))
    np.testing.assert_allclose(
        s, np.linalg.svd(y[:, None] * np.asarray(phi), compute_uv=False), rtol=1e-8
    )
    # Σ_j (u_jᵀ1)² = n when U is square
    np.testing.assert_allclose(np.sum(np.asarray(res["alignment"]) ** 2), 24, rtol=1e-10)
    # SD with square U: every margin equals a with σ(−a) = λa, so z* = a Uᵀ1 and |z_j*| = a |u_jᵀ1|
    arrays = np.load(out / "spectrum.npz")
    lam = res["lam_sd"]
    a = np.abs(arrays["z_sd"]) / arrays["alignment"]
    big = arrays["alignment"] > 1e-3
    np.testing.assert_allclose(a[big], a[big][0], rtol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(a[big][0])), lam * a[big][0], rtol=1e-8)
    assert res["max_abs_dz_ds1_sd"] < 1e-8
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["j"] == 1


def test_same_seed_same_results_and_methods_agree(tmp_path):
    _, out1 = _run(tmp_path / "a")
    _, out2 = _run(tmp_path / "b", "--method", "jacobian", "--batch-size", "7")
    r1 = json.loads((out1 / "results.json").read_text())
    r2 = json.loads((out2 / "results.json").read_text())
    np.testing.assert_allclose(r1["s"], r2["s"], rtol=1e-9)
    _, out3 = _run(tmp_path / "c")
    r3 = json.loads((out3 / "results.json").read_text())
    # same seed, same numbers: everything but the wall times is identical
    timings = ("seconds", "seconds_total")
    assert all(r1[key] > 0 and r3[key] > 0 for key in timings)
    assert {k: v for k, v in r3.items() if k not in timings} == {
        k: v for k, v in r1.items() if k not in timings
    }


def test_mnist_mlp_runs(tmp_path):
    out = tmp_path / "mnist"
    rc = main(
        [
            "spectrum",
            "--dataset",
            "mnist",
            "--hidden",
            "8",
            "--n",
            "12",
            "--top",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["d"] == 12 and res["dataset"] == "mnist"


@pytest.mark.slow
def test_mnist_cnn_runs(tmp_path):
    out = tmp_path / "mnist"
    rc = main(
        [
            "spectrum",
            "--dataset",
            "mnist",
            "--model",
            "cnn",
            "--hidden",
            "4",
            "8",
            "--n",
            "12",
            "--top",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["d"] == 12 and res["model"] == "cnn"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--n", "1"], "--n"),
        (["--model", "cnn"], "--model"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--top", "0"], "--top"),
        (["--dataset", "cifar"], "--dataset"),
        (["--train-steps", "30", "--save-every", "7"], "--save-every"),
        (["--eta", "0"], "--eta"),
        (["--dataset", "mnist", "--model", "cnn", "--method", "structured"], "--method"),
        (["--batch-size", "0"], "--batch-size"),
        (["--noise", "-1"], "--noise"),
        (["--seed", "-1"], "--seed"),
        (["--dataset", "mnist", "--n", "100000"], "--n"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, match):
    rc = main(["spectrum", "--out", str(tmp_path / "x"), *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err


def test_spectrum_figure_marks_sqrt_n_not_sqrt_d():
    import matplotlib

    matplotlib.use("Agg")
    from ntkdyn.plots.spectrum import spectrum_figure

    s = np.array([3.0, 2.0, 1.0])
    fig = spectrum_figure(s, np.array([2.0, 1.0, 0.5]), n=16)
    ys = [line.get_ydata()[0] for line in fig.axes[1].get_lines()]
    assert ys == [4.0]
    with pytest.raises(ValueError, match="n: the number of examples"):
        spectrum_figure(s, np.ones(3), n=2)


def test_quick_writes_every_output_and_reports_the_ntk_method(tmp_path, capsys):
    out = tmp_path / "quick"
    assert main(["spectrum", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {
        "config.json",
        "results.json",
        "metrics.jsonl",
        "spectrum.npz",
        "spectrum.png",
        "spectrum.pdf",
        "summary.md",
    }
    res = json.loads((out / "results.json").read_text())
    assert res["n"] == 40 and len(res["top"]["s"]) == 5
    assert res["ntk_method"] == "structured"
    assert res["ntk_method_chosen_by"] == "default for --model mlp"
    summary = (out / "summary.md").read_text()
    assert "NTK method: structured (default for --model mlp)" in summary
    assert "NTK method: structured" in printed


def test_explicit_method_is_reported(tmp_path):
    _, out = _run(tmp_path, "--method", "vector-products")
    res = json.loads((out / "results.json").read_text())
    assert res["ntk_method"] == "vector-products" and res["ntk_method_chosen_by"] == "--method"


def test_cnn_default_method_is_jacobian_not_a_silent_swap():
    import argparse

    from ntkdyn.commands.spectrum import _resolve, configure

    parser = argparse.ArgumentParser()
    configure(parser)
    args = _resolve(parser.parse_args(["--dataset", "mnist", "--model", "cnn"]))
    assert args.method == "jacobian" and args.method_chosen_by == "default for --model cnn"


# --------------------------------------------------------------------------------------------------
# Colored MNIST (embedded 5k subset): dense and matrix-free spectra, truncated theory


def _cmnist(tmp_path, name, *extra):
    out = tmp_path / name
    rc = main(["spectrum", "--dataset", "cmnist", "--quick", "--out", str(out), *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text()), out


def test_cmnist_quick_results_contract(tmp_path):
    res, out = _cmnist(tmp_path, "dense")
    assert res["dataset"] == "cmnist" and res["n"] == 40
    assert res["method"] == "dense" and res["method_chosen_by"].startswith("auto")
    assert res["model_dtype"] == "float64"
    assert res["residuals"] is None and res["converged"] is True
    assert res["seconds"] > 0 and res["seconds_total"] >= res["seconds"]
    assert len(res["s"]) == res["d"] and np.all(np.diff(res["s"]) <= 0)
    assert res["examples_per_environment"] == [20, 20]
    assert res["mnist"] == "embedded 5k subset"
    # the pooled examples: 392 inputs, both environments alternate, labels ±1
    x, y = load_data("cmnist", 40, 0)
    assert x.shape == (40, 392) and x.dtype == np.float32 and set(np.unique(y)) <= {-1.0, 1.0}
    # the Colored MNIST MLP: Xavier-uniform kernels |W| <= sqrt(6 / (fan_in + fan_out)), zero biases
    apply_fn, params = build_model("mlp", "cmnist", [32, 32], 0)
    leaves = jax.tree.leaves(params)
    kernels = [a for a in leaves if a.ndim == 2]
    assert [k.shape for k in kernels] == [(392, 32), (32, 32), (32, 1)]
    for k in kernels:
        limit = np.sqrt(6.0 / sum(k.shape))
        assert 0.9 * limit < float(jnp.max(jnp.abs(k))) <= limit
    assert all(float(jnp.max(jnp.abs(a))) == 0.0 for a in leaves if a.ndim == 1)
    assert apply_fn(params, jnp.asarray(x)).shape[0] == 40


def test_cmnist_matrix_free_agrees_with_dense_in_float64(tmp_path):
    dense, _ = _cmnist(tmp_path, "dense", "--n", "60")
    free, out = _cmnist(
        tmp_path, "free", "--n", "60", "--spectrum", "matrix-free", "--model-dtype", "float64"
    )
    assert free["method"] == "matrix-free" and free["method_chosen_by"] == "--spectrum"
    assert free["model_dtype"] == "float64" and free["residual_tol"] == 1e-4
    assert free["converged"] is True and free["d"] == 5
    assert len(free["residuals"]) == 5 and max(free["residuals"]) <= 1e-4
    assert free["iterations"] >= 1 and free["matvecs"] > 0
    # |s_j² − σ²| ≤ r_j s_j²: with r_j ≤ 1e-4 the leading values agree to far better than 1e-4
    np.testing.assert_allclose(free["s"], dense["s"][:5], rtol=1e-4)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["residual"] for m in lines] == free["residuals"]


def test_cmnist_train_steps_truncated_theory_invariants(tmp_path):
    """What holds exactly when the theory keeps only the top k directions.

    z(0) = 0 for all three runs (centred outputs). The first GD step from θ₀ is θ₁ − θ₀ =
    (η/2)ΦᵀY1 (σ(0) = 1/2, no weight-decay pull at θ₀), so the linearized model's
    z_j(1) = (η/2) u_jᵀYΘY1 = (η/2) s_j² u_jᵀ1 + (η/2)(YΘYu_j − s_j²u_j)ᵀ1, which is the truncated
    theory's first step (η/2) s_j² u_jᵀ1 up to |·| ≤ (η/2) r_j s_j² √n: the solver's residual
    bounds the disagreement. Later steps differ by the coupling through the dropped directions.
    """
    res, out = _cmnist(
        tmp_path,
        "train",
        "--n",
        "60",
        "--spectrum",
        "matrix-free",
        "--model-dtype",
        "float64",
        "--train-steps",
        "3",
        "--save-every",
        "1",
    )
    z = np.load(out / "responses.npz")
    track = json.loads((out / "responses.json").read_text())
    for key in ("z_network", "z_linearized", "z_theory"):
        assert z[key].shape == (4, 5), key
        np.testing.assert_array_equal(z[key][0], 0.0)
    assert track["max_abs_z_at_step_0"] == 0.0
    eta = track["eta"]
    s, r = np.asarray(res["s"]), np.asarray(res["residuals"])
    np.testing.assert_allclose(eta, 1 / s[0] ** 2)  # the cmnist default step
    np.testing.assert_allclose(z["t"], eta * np.arange(4), rtol=1e-12)
    assert track["theory_truncated"] is True and track["directions"] == 5
    bound = 0.5 * eta * r * s**2 * np.sqrt(60)
    assert np.all(np.abs(z["z_linearized"][1] - z["z_theory"][1]) <= 1.01 * bound + 1e-12)
    np.testing.assert_allclose(
        z["z_theory"][1], 0.5 * eta * s**2 * np.asarray(res["alignment"]), rtol=1e-10
    )
    assert res["train"]["steps"] == 3 and len(res["train"]["rel_err_linearized_vs_theory_t"]) == 4
    assert (out / "responses.png").is_file()


@pytest.mark.slow
def test_cmnist_matrix_free_with_every_direction_is_exact(tmp_path):
    # k = n: U is square, nothing is truncated, and linearized GD is the theory's GD to rounding
    res, out = _cmnist(
        tmp_path,
        "full",
        "--n",
        "24",
        "--top",
        "24",
        "--spectrum",
        "matrix-free",
        "--model-dtype",
        "float64",
        "--train-steps",
        "20",
        "--save-every",
        "10",
    )
    assert res["d"] == 24 and res["converged"] is True
    assert res["train"]["theory_truncated"] is False
    assert res["train"]["rel_err_linearized_vs_theory"] < 1e-8


@pytest.mark.parametrize(
    "args, match",
    [
        (["--n", "5000"], "--n"),
        (["--n", "30", "--top", "31"], "--top"),
        (["--top", "-1"], "--top"),
        (["--residual-tol", "2"], "--residual-tol"),
        (["--max-iters", "0"], "--max-iters"),
        (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    ],
)
def test_cmnist_bad_arguments_name_the_flag(tmp_path, capsys, args, match):
    rc = main(["spectrum", "--dataset", "cmnist", "--out", str(tmp_path / "x"), *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args, match",
    [
        (["--dataset", "mnist", "--model", "cnn", "--spectrum", "matrix-free"], "--spectrum"),
        (["--data-dir", "/tmp"], "--data-dir"),
    ],
)
def test_spectrum_flags_that_do_not_fit_name_the_flag(tmp_path, capsys, args, match):
    rc = main(["spectrum", "--out", str(tmp_path / "x"), *args])
    assert rc == 2
    assert match in capsys.readouterr().err
