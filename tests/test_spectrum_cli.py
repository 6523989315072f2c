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
    assert (out3 / "results.json").read_text() == (out1 / "results.json").read_text()


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
