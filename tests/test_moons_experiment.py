"""The two-moons experiment: model/optimizer semantics against PyTorch, feature responses, the command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntkdyn.experiments import moons

from ntkdyn import cli
from ntkdyn.models.mlp import DenseApply


def _one_seed(tree, s=0):
    return jax.tree_util.tree_map(lambda a: a[s], tree)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_forward_matches_mlp_layout(batch_norm):
    params, stats = moons.init_params(
        jax.random.key(1), hidden=16, hidden_layers=2, batch_norm=batch_norm
    )
    x = jax.random.normal(jax.random.key(2), (7, 2))
    f, _ = moons.forward(params, stats, x, train=False)
    if not batch_norm:
        np.testing.assert_allclose(f, DenseApply()(params, x)[:, 0], rtol=1e-6, atol=1e-6)
    # PyTorch's default nn.Linear init: W, b ~ U(±1/sqrt(fan_in)).
    W0, b1 = params["linears"][0]["kernel"], params["linears"][1]["bias"]
    assert float(jnp.abs(W0).max()) <= 1 / np.sqrt(2) and float(jnp.abs(W0).max()) > 0.5
    assert float(jnp.abs(b1).max()) <= 1 / np.sqrt(16)


@pytest.mark.parametrize("name", ["sd", "adam_large_lr", "batch_norm"])
def test_training_matches_a_pytorch_loop(name):
    """Same init, same data: our scanned training equals the authors' eager PyTorch loop."""
    torch = pytest.importorskip("torch")
    setting = moons.SETTINGS[name]
    steps, hidden = 30, 32
    tr = moons.train_setting(
        setting,
        seeds=1,
        epochs=steps,
        lr=1e-2,
        n=60,
        noise=0.1,
        hidden=hidden,
        seed=3,
        records=3,
        unroll=4,
    )
    p0 = _one_seed(tr.params0)
    torch.manual_seed(0)
    lin1, lin2 = torch.nn.Linear(2, hidden).double(), torch.nn.Linear(hidden, 1).double()
    with torch.no_grad():
        for lin, i in ((lin1, 0), (lin2, 1)):
            lin.weight.copy_(torch.from_numpy(np.asarray(p0["linears"][i]["kernel"], np.float64).T))
            lin.bias.copy_(torch.from_numpy(np.asarray(p0["linears"][i]["bias"], np.float64)))
    layers = (
        [lin1]
        + ([torch.nn.BatchNorm1d(hidden).double()] if setting.batch_norm else [])
        + [torch.nn.ReLU(), lin2]
    )
    net = torch.nn.Sequential(*layers)
    wd = setting.weight_decay
    opt = (
        torch.optim.Adam(net.parameters(), lr=setting.lr, weight_decay=wd)
        if setting.adam
        else torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=wd)
    )
    X, y = (
        torch.from_numpy(tr.X[0].astype(np.float64)),
        torch.from_numpy(tr.y[0].astype(np.float64)),
    )
    for _ in range(steps):
        out = net(X)[:, 0]
        loss = torch.nn.functional.softplus(-out * y).mean() + setting.sd_coef * (out**2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ours = _one_seed(tr.params)
    np.testing.assert_allclose(
        ours["linears"][0]["kernel"], lin1.weight.detach().numpy().T, rtol=2e-4, atol=2e-5
    )
    np.testing.assert_allclose(
        ours["linears"][1]["kernel"][:, 0], lin2.weight.detach().numpy()[0], rtol=2e-4, atol=2e-5
    )
    if setting.batch_norm:
        bn = layers[1]
        np.testing.assert_allclose(
            _one_seed(tr.stats)["mean"][0], bn.running_mean.numpy(), rtol=2e-4, atol=2e-5
        )
        np.testing.assert_allclose(
            _one_seed(tr.stats)["var"][0], bn.running_var.numpy(), rtol=2e-4, atol=2e-5
        )
    net.eval()
    with torch.no_grad():
        np.testing.assert_allclose(
            moons.decision_functions(tr, tr.X[0])[0], net(X)[:, 0].numpy(), rtol=1e-3, atol=1e-4
        )


def test_feature_responses_match_the_tangent_library():
    from ntkdyn.tangent import feature_responses, feature_spectrum

    tr = moons.train_setting(
        moons.SETTINGS["sd"],
        seeds=2,
        epochs=40,
        lr=1e-2,
        n=40,
        noise=0.1,
        hidden=24,
        seed=0,
        records=4,
        record_outputs=True,
    )
    epochs, z = moons.feature_responses_over_training(tr, k=5)
    np.testing.assert_array_equal(epochs, [0, 10, 20, 30, 40])
    assert z.shape == (5, 5) and np.all(z[0] == 0)
    expected = []
    for s in range(2):
        x, y = jnp.asarray(tr.X[s]), jnp.asarray(tr.y[s])
        U = feature_spectrum(DenseApply(), _one_seed(tr.params0, s), x, y).U[:, :5]
        expected.append(
            feature_responses(
                DenseApply(), _one_seed(tr.params0, s), _one_seed(tr.params, s), x, y, U
            )
        )
    np.testing.assert_allclose(z[-1], np.mean(expected, axis=0), rtol=1e-4, atol=1e-5)


ARGS = ["--seeds", "2", "--epochs", "60", "--hidden", "16", "--n", "80"]


def test_command_writes_a_complete_run(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "moons",
        "--out",
        str(out),
        *ARGS,
        "--config",
        "erm_delta_minus,erm",
        "--config",
        "sd",
        "--config",
        "dropout",
    ]
    assert cli.main(argv) == 0
    for name in (
        "config.json",
        "metrics.jsonl",
        "results.json",
        "summary.md",
        "decision_functions.npz",
        "moons_main.png",
        "moons_main.pdf",
        "moons_regularizers.png",
        "moons_regularizers.pdf",
    ):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert set(results["configs"]) == {"erm_delta_minus", "erm", "dropout", "sd"}
    for r in results["configs"].values():
        for key in (
            "train_accuracy",
            "boundary_min_distance",
            "boundary_mean10_distance",
            "boundary_line_residual",
        ):
            assert isinstance(r[key], float), key
        assert r["boundary_mean10_distance"] >= r["boundary_min_distance"] >= 0
    assert results["verdict"]["compared_with"] == ["erm", "dropout"]
    summary = (out / "summary.md").read_text()
    assert "| sd |" in summary and "boundary_line_residual" in summary
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["config"] for r in records} == set(results["configs"])
    npz = np.load(out / "decision_functions.npz")
    assert (
        npz["values"].shape == (4, 100, 100) and npz["z_sd"].shape[1] == moons.RESPONSE_DIRECTIONS
    )
    # The figures can be redrawn from the saved arrays, without training.
    before = (out / "moons_main.png").read_bytes()
    (out / "moons_main.png").unlink()
    assert cli.main(["moons", "--out", str(out), "--replot"]) == 0
    assert (out / "moons_main.png").read_bytes() == before
    assert cli.main(["moons", "--out", str(tmp_path / "missing"), "--replot"]) == 2
    assert "--replot" in capsys.readouterr().err
    # Same seed, same numbers.
    out2 = tmp_path / "run2"
    assert cli.main(["moons", "--out", str(out2), *ARGS, "--config", "dropout"]) == 0
    again = json.loads((out2 / "results.json").read_text())
    assert again["configs"]["dropout"] == results["configs"]["dropout"]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--n", "1"], "--n"),
        (["--noise", "-0.1"], "--noise"),
        (["--config", "mixup"], "--config"),
        (["--lr", "0"], "--lr"),
        (["--lr", "-1e-2"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--seeds", "0"], "--seeds"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(tmp_path, capsys, extra, match):
    out = tmp_path / "bad"
    assert cli.main(["moons", "--out", str(out), "--quick", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()  # validation happens before anything is written


def test_help_lists_the_configurations(capsys):
    with pytest.raises(SystemExit):
        cli.main(["moons", "--help"])
    text = capsys.readouterr().out
    for name in moons.SETTINGS:
        assert name in text


@pytest.mark.slow
def test_quick_mode_runs_all_configurations(tmp_path):
    assert cli.main(["moons", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["configs"]) == set(moons.SETTINGS)


@pytest.mark.parametrize("name", ["erm", "sd"])
def test_training_loss_gradient_equals_the_generic_forward(name):
    """One hidden layer without dropout/batch norm trains through shallow_relu: same loss and gradient."""
    setting = moons.SETTINGS[name]
    params, stats = moons.init_params(
        jax.random.key(0), hidden=64, hidden_layers=1, batch_norm=False
    )
    x = jax.random.normal(jax.random.key(1), (40, 2))
    y = jnp.sign(x[:, 1] + 0.2)

    def generic(params):
        f, _ = moons.forward(params, stats, x, train=True)
        return jnp.mean(jax.nn.softplus(-y * f)) + setting.sd_coef * jnp.mean(f**2)

    loss_fn = moons.make_loss(setting)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, stats, (x, y), jnp.int32(0), jax.random.key(2)
    )
    ref_loss, ref_grads = jax.value_and_grad(generic)(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
