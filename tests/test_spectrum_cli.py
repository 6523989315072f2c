"""The ``ntkdyn spectrum`` command: any data and model, files written, spectrum consistent with the
library, SD closed form, the report's contract, bad input before any work."""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkdyn.cli import build_parser, main
from ntkdyn.data.registry import load_dataset
from ntkdyn.models.registry import build_model
from ntkdyn.tangent import tangent_features

#: results.json keys of the command on the moons before the data/model registries (0.2).
MOONS_KEYS_0_2 = {
    "dataset", "model", "n", "d", "method", "method_chosen_by", "model_dtype", "seconds",
    "converged", "residuals", "residual_tol", "iterations", "matvecs", "ntk_method",
    "ntk_method_chosen_by", "lam_ce", "lam_sd", "s", "alignment", "s1_over_s2", "top",
    "newton_tol", "starved_by_top_ce", "starved_by_top_sd", "max_abs_dz_ds1_sd", "seconds_total",
}  # fmt: skip


def _run(tmp_path, *extra):
    out = tmp_path / "run"
    rc = main(["spectrum", "--n", "24", "--hidden", "32", "--top", "5", "--out", str(out), *extra])
    return rc, out


def _results(out):
    return json.loads((out / "results.json").read_text())


def test_moons_run_writes_consistent_results(tmp_path):
    rc, out = _run(tmp_path, "--train-steps", "40", "--save-every", "20", "--eta", "1e-3")
    assert rc == 0
    names = {"config.json", "results.json", "metrics.jsonl", "spectrum.npz", "summary.md"}
    names |= {"spectrum.png", "spectrum.pdf", "responses.npz", "responses.json"}
    names |= {"responses.png", "responses.pdf", "checkpoints"}  # the training's: resumable
    assert {p.name for p in out.iterdir()} == names
    # linearized training reproduces the theory's GD in z exactly (full-rank U); the network is close
    track = json.loads((out / "responses.json").read_text())
    assert track["rel_err_linearized_vs_theory"] < 1e-8
    assert track["rel_err_network_vs_theory"] < 0.2
    z = np.load(out / "responses.npz")
    assert z["z_network"].shape == z["z_theory"].shape == (3, 24)
    res = _results(out)
    s = np.asarray(res["s"])
    assert res["d"] == 24 == s.size  # p = 129 > n: full rank
    assert set(res) >= MOONS_KEYS_0_2
    # the singular values are those of YΦ of the same (float64-evaluated) network
    data = load_dataset("moons", n=24, seed=0)
    model = build_model("mlp", jax.random.fold_in(jax.random.PRNGKey(0), 1), data.x, hidden=[32])
    params = jax.tree.map(lambda a: a.astype(jnp.float64), model.params)
    phi = tangent_features(model.apply_fn, params, jnp.asarray(data.x, jnp.float64))
    y = np.asarray(data.signed_y)
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
    assert res["max_abs_dz_ds1_sd"] < 1e-8 and res["starved_by_top_sd"] == 0
    # the CE count is the threshold rule on the recorded column
    col = arrays["dz_ds1_ce"][1:]
    assert res["starved_by_top_ce"] == int(np.sum(col < res["starvation_threshold"]))
    assert res["starvation_threshold"] == -1e-8
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["j"] == 1


def test_summary_reads_like_a_table(tmp_path):
    _, out = _run(tmp_path)
    text = (out / "summary.md").read_text()
    res = _results(out)
    assert "r_j" not in text.split("| j |")[1].splitlines()[0]  # no empty residual column
    assert "not computed by eigh" in text
    assert "Data: 24 two-moons points" in text and "Model: mlp 2 → 32 → 1" in text
    assert "∂z_j*/∂s_1 < −1e-08" in text
    assert f"CE starves {res['starved_by_top_ce']} of 23 directions" in text
    assert "largest ∂z_j*/∂s_1 magnitude" in text
    assert "s_1/s_2 = " + format(res["s1_over_s2"], ".4g") in text
    assert str(res["s1_over_s2"]) not in text  # rounded, not the full float


def test_same_seed_same_results(tmp_path):
    _, out1 = _run(tmp_path / "a")
    _, out2 = _run(tmp_path / "b")
    r1, r2 = _results(out1), _results(out2)
    timings = ("seconds", "seconds_total")
    assert all(r1[key] > 0 and r2[key] > 0 for key in timings)
    assert {k: v for k, v in r2.items() if k not in timings} == {
        k: v for k, v in r1.items() if k not in timings
    }


@pytest.mark.e2e
def test_mnist_mlp_runs_with_the_deprecated_dataset_flag(tmp_path):
    out = tmp_path / "mnist"
    args = ["--dataset", "mnist", "--hidden", "8", "--n", "12", "--top", "3"]
    assert main(["spectrum", *args, "--out", str(out)]) == 0
    res = _results(out)
    assert res["d"] == 12 and res["dataset"] == "mnist" and set(res) >= MOONS_KEYS_0_2


_FACTORY = """
import jax, jax.numpy as jnp

def factory(key, x):
    d = x.reshape(x.shape[0], -1).shape[1]
    params = {"w": jax.random.normal(key, (d, 6)) / d**0.5, "v": jnp.ones(6) / 6**0.5}
    return (lambda p, x: jnp.tanh(x.reshape(x.shape[0], -1) @ p["w"]) @ p["v"]), params

def three_outputs(key, x):
    return (lambda p, x: x.reshape(x.shape[0], -1) @ p), jnp.ones((x.reshape(x.shape[0], -1).shape[1], 3))
"""


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """A user's module on sys.path and an .npz of 30 examples with 5 features."""
    (tmp_path / "mymod_spec.py").write_text(textwrap.dedent(_FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, y=(x[:, 0] > 0).astype(int))
    return tmp_path


@pytest.mark.e2e
def test_npz_and_user_factory_end_to_end(user_files):
    out = user_files / "out"
    data = str(user_files / "data.npz")
    rc = main(["spectrum", "--data", data, "--model", "mymod_spec:factory", "--n", "30", "--top",
               "4", "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = _results(out)
    assert set(res) >= MOONS_KEYS_0_2 and res["ntk_method"] == "jacobian"
    assert res["frozen_batch_stats"] is False and res["d"] == 30  # p = 36 > n
    # the same spectrum by hand: YΦ of the user's function in float64
    import mymod_spec

    z = np.load(user_files / "data.npz")
    f, p = mymod_spec.factory(jax.random.fold_in(jax.random.PRNGKey(0), 1), z["x"])
    p = jax.tree.map(lambda a: a.astype(jnp.float64), p)
    phi = np.asarray(tangent_features(f, p, jnp.asarray(z["x"], jnp.float64)))
    y = 2.0 * z["y"] - 1.0
    np.testing.assert_allclose(res["s"], np.linalg.svd(y[:, None] * phi, compute_uv=False)[:30],
                               rtol=1e-8)  # fmt: skip
    # matrix-free on the same user model agrees on the top 4
    out2 = user_files / "out2"
    rc = main(["spectrum", "--data", data, "--model", "mymod_spec:factory", "--n", "30", "--top",
               "4", "--solver", "krylov", "--model-dtype", "float64", "--out", str(out2)])  # fmt: skip
    free = _results(out2)
    assert rc == 0 and free["converged"] and len(free["residuals"]) == 4
    assert set(free) == set(res)  # the same keys whatever the solver
    np.testing.assert_allclose(free["s"], res["s"][:4], rtol=1e-6)
    assert "| r_j |" in (out2 / "summary.md").read_text().replace("| s_j | r_j |", "| r_j |")
    # dense with the tangent features kept in memory: the same spectrum
    out3 = user_files / "out3"
    rc = main(["spectrum", "--data", data, "--model", "mymod_spec:factory", "--n", "30", "--top",
               "4", "--cache-features", "--out", str(out3)])  # fmt: skip
    cached = _results(out3)
    assert rc == 0 and "kept in memory" in cached["solver"]
    np.testing.assert_allclose(cached["s"], res["s"], rtol=1e-8)


@pytest.mark.e2e
def test_batch_norm_resnet_matrix_free(tmp_path):
    """resnet10 (width 4, 32 px RGB): batch norm frozen at θ₀, top 3 by JVP/VJP products."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 32, 32, 3)).astype(np.float32)
    np.savez(tmp_path / "img.npz", x=x, y=np.arange(12) % 2)
    out = tmp_path / "bn"
    rc = main(["spectrum", "--data", str(tmp_path / "img.npz"), "--model", "resnet10", "--width",
               "4", "--n", "12", "--top", "3", "--solver", "krylov", "--out", str(out)])  # fmt: skip
    assert rc == 0
    res = _results(out)
    assert res["frozen_batch_stats"] is True and "batch norm frozen" in res["model_description"]
    assert res["method"] == "krylov" and res["d"] == 3 and len(res["residuals"]) == 3
    assert set(res) >= MOONS_KEYS_0_2
    assert "statistics frozen at θ₀" in (out / "summary.md").read_text()


def test_help_shows_one_default_per_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser(only="spectrum").parse_args(["spectrum", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--top", "--n", "--data", "--model", "--solver", "--lam-ce", "--lam-sd"):
        chunk = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
        assert chunk.count("default") == 1, (flag, chunk)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args, match",
    [
        (["--n", "1"], "--n"),
        (["--n", "30", "--top", "31"], "--top"),
        (["--top", "0"], "--top"),
        (["--lam-ce", "-1"], "--lam-ce"),
        (["--solver", "lanczos"], "--solver"),
        (["--data", "cifar"], "moons"),  # lists the registered datasets
        (["--model", "transformer"], "resnet10"),  # lists the registered models
        (["--model", "nosuchmodule_xyz:factory"], "--model"),
        (["--data", "mnist", "--n", "100000"], "--n"),
        (["--data", "moons", "--data-dir", "/tmp"], "--data-dir"),
        (["--train-steps", "30", "--save-every", "7"], "--save-every"),
        (["--eta", "0"], "--eta"),
        (["--seed", "-1"], "--seed"),
        (["--residual-tol", "2"], "--residual-tol"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, args, match):
    rc = main(["spectrum", "--out", str(tmp_path / "x"), *args])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_bad_user_inputs_name_the_flag(user_files, capsys):
    data = str(user_files / "data.npz")
    cases = [
        (["--data", data, "--n", "31", "--top", "3"], "--n"),  # more than the file holds
        (["--data", data, "--model", "mymod_spec:three_outputs", "--n", "10"], "--model"),
    ]
    for args, match in cases:
        assert main(["spectrum", *args, "--out", str(user_files / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(match) or f" {match}" in err, err
        assert "\n" not in err and not (user_files / "x").exists()
    (user_files / "taken").write_text("a file")
    assert main(["spectrum", "--quick", "--out", str(user_files / "taken")]) == 2
    assert "--out" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Colored MNIST (embedded 5k subset): dense and matrix-free spectra, truncated theory


def _cmnist(tmp_path, name, *extra):
    out = tmp_path / name
    rc = main(["spectrum", "--data", "cmnist", "--quick", "--hidden", "32", "32", "--out",
               str(out), *extra])  # fmt: skip
    assert rc == 0
    return _results(out), out


def test_cmnist_quick_results_contract(tmp_path):
    res, out = _cmnist(tmp_path, "dense")
    assert res["dataset"] == "cmnist" and res["n"] == 40
    assert res["method"] == "dense" and res["method_chosen_by"].startswith("auto")
    assert res["model_dtype"] == "float64" and res["ntk_method"] == "structured"
    assert res["residuals"] is None and res["converged"] is True
    assert res["seconds"] > 0 and res["seconds_total"] >= res["seconds"]
    assert len(res["s"]) == res["d"] and np.all(np.diff(res["s"]) <= 0)
    assert res["examples_per_environment"] == [20, 20]
    assert "embedded" in res["data_source"] and "Xavier-uniform" in res["model_description"]
    assert set(res) >= MOONS_KEYS_0_2


def test_cmnist_matrix_free_agrees_with_dense_in_float64(tmp_path):
    dense, _ = _cmnist(tmp_path, "dense", "--n", "60")
    free, out = _cmnist(
        tmp_path, "free", "--n", "60", "--solver", "krylov", "--model-dtype", "float64"
    )
    assert free["method"] == "krylov" and free["method_chosen_by"] == "--solver"
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
    res, out = _cmnist(tmp_path, "train", "--n", "60", "--solver", "krylov", "--model-dtype",
                       "float64", "--train-steps", "3", "--save-every", "1")  # fmt: skip
    z = np.load(out / "responses.npz")
    track = json.loads((out / "responses.json").read_text())
    for key in ("z_network", "z_linearized", "z_theory"):
        assert z[key].shape == (4, 5), key
        np.testing.assert_array_equal(z[key][0], 0.0)
    assert track["max_abs_z_at_step_0"] == 0.0
    eta = track["eta"]
    s, r = np.asarray(res["s"]), np.asarray(res["residuals"])
    np.testing.assert_allclose(eta, 1 / s[0] ** 2)  # the default step
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
    res, out = _cmnist(tmp_path, "full", "--n", "24", "--top", "24", "--solver", "krylov",
                       "--model-dtype", "float64", "--train-steps", "20", "--save-every", "10")  # fmt: skip
    assert res["d"] == 24 and res["converged"] is True
    assert res["train"]["theory_truncated"] is False
    assert res["train"]["rel_err_linearized_vs_theory"] < 1e-8


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
