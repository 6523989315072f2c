"""The two-moons experiment: model/optimizer semantics against PyTorch, feature responses, the command."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ntkdyn.experiments import moons

from ntkdyn import cli
from ntkdyn.boundary import stacked_decision_fn
from ntkdyn.models.mlp import DenseApply, init_mlp_uniform, mlp_apply
from ntkdyn.objectives import SpectralDecoupling


def _one_seed(tree, s=0):
    return jax.tree_util.tree_map(lambda a: a[s], tree)


def test_settings_follow_the_authors_files():
    """Main figure (moon_fig_2.py): weight decay 2e-4; panels (moon_fig_3.py): none but its own."""
    for name in moons.MAIN_FIGURE:
        assert moons.SETTINGS[name].weight_decay == 2e-4 and not moons.SETTINGS[name].adam
    assert moons.REGULARIZERS[0] == "no_regularization" and moons.REGULARIZERS[-1] == "sd_no_decay"
    assert len(moons.REGULARIZERS) == 10
    for name in moons.REGULARIZERS:
        s = moons.SETTINGS[name]
        assert s.weight_decay == (0.01 if name == "weight_decay" else 0.0), name
        assert s.delta == 0.1
    assert moons.SETTINGS["sd_no_decay"].objective == SpectralDecoupling(coef=0.003)
    assert moons.SETTINGS["sd"].objective == SpectralDecoupling(coef=0.003)
    assert moons.SETTINGS["five_layers"].hidden_layers == 4
    assert moons.SETTINGS["train_longer"].epoch_factor == 10
    assert [moons.SETTINGS[c].lr for c in ("adam_small_lr", "adam_large_lr")] == [1e-4, 3e-3]


@pytest.mark.parametrize("name", ["sd", "adam_large_lr", "batch_norm"])
def test_training_matches_a_pytorch_loop(name):
    """Same init, same data: our scanned training equals the authors' eager PyTorch loop."""
    torch = pytest.importorskip("torch")
    setting = moons.SETTINGS[name]
    steps, hidden = 30, 32
    config = moons.Config(seeds=1, epochs=steps, n=60, hidden=hidden, seed=3, unroll=4)
    data = moons.setting_data(setting, config)
    tr = moons.train_setting(setting, config, *data, records=3)
    p0 = _one_seed(moons.initial_state(setting, config)[1])
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
        torch.from_numpy(data[0][0].astype(np.float64)),
        torch.from_numpy(data[1][0].astype(np.float64)),
    )
    for _ in range(steps):
        out = net(X)[:, 0]
        coef = getattr(setting.objective, "coef", 0.0)
        loss = torch.nn.functional.softplus(-out * y).mean() + coef * (out**2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ours = _one_seed(tr.state.params)
    np.testing.assert_allclose(
        ours["linears"][0]["kernel"], lin1.weight.detach().numpy().T, rtol=2e-4, atol=2e-5
    )
    np.testing.assert_allclose(
        ours["linears"][1]["kernel"][:, 0], lin2.weight.detach().numpy()[0], rtol=2e-4, atol=2e-5
    )
    if setting.batch_norm:
        bn = layers[1]
        np.testing.assert_allclose(
            _one_seed(tr.state.model_state)["norms"][0]["mean"],
            bn.running_mean.numpy(),
            rtol=2e-4,
            atol=2e-5,
        )
        np.testing.assert_allclose(
            _one_seed(tr.state.model_state)["norms"][0]["var"],
            bn.running_var.numpy(),
            rtol=2e-4,
            atol=2e-5,
        )
    net.eval()

    def forward(params, stats, x):
        return moons.logits(setting, params, stats, x)[0]

    with torch.no_grad():
        np.testing.assert_allclose(
            stacked_decision_fn(forward, tr.state.params, tr.state.model_state)(data[0][0])[0],
            net(X)[:, 0].numpy(),
            rtol=1e-3,
            atol=1e-4,
        )


def test_feature_responses_match_the_tangent_library():
    from ntkdyn.tangent import feature_responses, feature_spectrum

    config = moons.Config(seeds=2, epochs=40, n=40, hidden=24)
    setting = moons.SETTINGS["sd"]
    X, Y = moons.setting_data(setting, config)
    hook = moons.response_hook(setting, config, X, Y, moons.record_every(setting, config, 4), k=5)
    tr = moons.train_setting(setting, config, X, Y, records=4, hooks=[hook])
    epochs, z = hook.mean_curve()
    np.testing.assert_array_equal(epochs, [0, 10, 20, 30, 40])
    assert z.shape == (5, 5) and np.all(z[0] == 0)
    params0 = moons.initial_state(setting, config)[1]
    expected = []
    for s in range(2):
        x, y = jnp.asarray(X[s]), jnp.asarray(Y[s])
        U = feature_spectrum(DenseApply(), _one_seed(params0, s), x, y).U[:, :5]
        expected.append(
            feature_responses(
                DenseApply(), _one_seed(params0, s), _one_seed(tr.state.params, s), x, y, U
            )
        )
    np.testing.assert_allclose(z[-1], np.mean(expected, axis=0), rtol=1e-4, atol=1e-5)


def test_run_writes_nothing_and_report_writes_the_run(tmp_path, monkeypatch):
    """run(config) -> Results of plain values, no file; report(results, dir) writes the run."""
    monkeypatch.chdir(tmp_path)
    config = moons.Config(
        config=("erm", "sd_no_decay", "dropout"), seeds=1, epochs=20, n=40, hidden=8
    )
    results = moons.run(config, progress_every=None)
    assert list(tmp_path.iterdir()) == []
    assert list(results.configs) == ["erm", "dropout", "sd_no_decay"]
    assert results.values["erm"].shape == (moons.GRID_SIZE, moons.GRID_SIZE)
    assert "erm" in results.responses and results.verdict["compared_with"] == ["dropout"]
    written = moons.report(results, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (
        on_disk["configs"]["erm"]["train_accuracy"] == written["configs"]["erm"]["train_accuracy"]
    )
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "one seed (n = 1)" in summary and "±" not in summary


def test_objectives_that_need_the_params_train(monkeypatch):
    """The objective gets the params (an l2 term needs them): the loss is the objective's."""
    import dataclasses

    from ntkdyn.objectives import ERM

    seen = {}

    @dataclasses.dataclass(frozen=True)
    class WithParams(ERM):
        def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
            seen["params"] = params
            value, aux = super().loss(logits, y01, step=step, state=state)
            l2 = sum(jnp.sum(p**2) for p in jax.tree_util.tree_leaves(params))
            return value + 0.5 * l2, aux

    setting = dataclasses.replace(moons.SETTINGS["no_regularization"], objective=WithParams())
    params, _ = init_mlp_uniform(jax.random.key(0), 2, [8])
    x = jax.random.normal(jax.random.key(1), (10, 2))
    y01 = (x[:, 0] > 0).astype(jnp.float32)
    loss, _ = moons.make_loss(setting)(params, None, (x, y01), jnp.int32(0), jax.random.key(2))
    plain, _ = moons.make_loss(moons.SETTINGS["no_regularization"])(
        params, None, (x, y01), jnp.int32(0), jax.random.key(2)
    )
    l2 = sum(float(jnp.sum(p**2)) for p in jax.tree_util.tree_leaves(params))
    assert seen["params"] is params
    np.testing.assert_allclose(loss - plain, 0.5 * l2, rtol=1e-5)


ARGS = ["--seeds", "2", "--epochs", "60", "--hidden", "16", "--n", "80"]


@pytest.mark.e2e
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
        "--config",
        "sd_no_decay",
        "--seed-layout",
        "map@1",
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
    assert set(results["configs"]) == {"erm_delta_minus", "erm", "dropout", "sd", "sd_no_decay"}
    config = json.loads((out / "config.json").read_text())
    assert config["layout"] == {"axis": "map", "chunk": None, "devices": 1}
    assert config["seed_layout"] == "map@1" and config["seeds"] == 2 and not config["quick"]
    assert config["config"] == ["erm_delta_minus", "erm", "sd", "dropout", "sd_no_decay"]
    for r in results["configs"].values():
        for key in (
            "train_accuracy",
            "boundary_min_distance",
            "boundary_mean10_distance",
            "boundary_line_residual",
        ):
            assert isinstance(r[key], float), key
        assert r["boundary_mean10_distance"] >= r["boundary_min_distance"] >= 0
    assert results["verdict"]["compared_with"] == ["dropout"]
    summary = (out / "summary.md").read_text()
    assert "| sd |" in summary and "boundary_line_residual" in summary
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["config"] for r in records} == set(results["configs"])
    npz = np.load(out / "decision_functions.npz")
    assert (
        npz["values"].shape == (5, 100, 100) and npz["z_sd"].shape[1] == moons.RESPONSE_DIRECTIONS
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


@pytest.mark.e2e
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
        (["--config", ","], "--config"),
        (["--seed-layout", "diagonal"], "--seed-layout"),
        (["--seed-layout", "vmap:0"], "--seed-layout"),
        (["--hidden", "0"], "--hidden"),
    ],
)
def test_bad_input_is_one_line_naming_the_argument(tmp_path, capsys, extra, match):
    out = tmp_path / "bad"
    assert cli.main(["moons", "--out", str(out), "--quick", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()  # validation happens before anything is written


@pytest.mark.e2e
def test_help_lists_the_configurations(capsys):
    with pytest.raises(SystemExit):
        cli.main(["moons", "--help"])
    text = capsys.readouterr().out
    for name in moons.SETTINGS:
        assert name in text


@pytest.mark.e2e
@pytest.mark.slow
def test_quick_mode_runs_all_configurations(tmp_path):
    assert cli.main(["moons", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["configs"]) == set(moons.SETTINGS)


@pytest.mark.parametrize("name", ["erm", "sd"])
def test_training_loss_gradient_equals_the_generic_forward(name):
    """One hidden layer without dropout/batch norm trains through shallow_relu: same loss and gradient."""
    setting = moons.SETTINGS[name]
    params, _ = init_mlp_uniform(jax.random.key(0), 2, [64])
    x = jax.random.normal(jax.random.key(1), (40, 2))
    y01 = (x[:, 1] + 0.2 > 0).astype(jnp.float32)

    def generic(params):
        f = mlp_apply(params, x, train=True)[0][:, 0]
        return setting.objective.loss(f, y01)[0]

    loss_fn = moons.make_loss(setting)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, None, (x, y01), jnp.int32(0), jax.random.key(2)
    )
    ref_loss, ref_grads = jax.value_and_grad(generic)(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_progress_lines_do_not_change_the_numbers(capsys):
    config = moons.Config(seeds=3, epochs=50, n=40, hidden=16)
    setting = moons.SETTINGS["dropout"]
    data = moons.setting_data(setting, config)
    quiet = moons.train_setting(setting, config, *data, records=10)
    assert capsys.readouterr().err == ""
    loud = moons.train_setting(setting, config, *data, records=10, progress_every=0.0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10  # one per record, whole lines (a progress hook)
    assert lines[0].strip().startswith("dropout: step 5/50, loss ")
    assert lines[-1].strip().startswith("dropout: step 50/50, loss ")
    leaves = [jax.tree.leaves(r.state.params) for r in (quiet, loud)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(quiet.history["loss"], loud.history["loss"])


def test_config_names_the_field_and_quick_keeps_given_flags():
    from ntkdyn.settings import ConfigError

    with pytest.raises(ConfigError, match="^lr: "):
        moons.Config(lr=0.0)
    with pytest.raises(ConfigError, match="seed_layout"):
        moons.Config(seed_layout="sideways").layout()
    assert moons.Config(config=("sd,erm", "erm")).config == ("erm", "sd")
    quick = moons.resolve(
        cli.build_parser("moons").parse_args(["moons", "--quick", "--seeds", "3"])
    )
    assert (quick.seeds, quick.epochs, quick.hidden) == (3, 200, 64)
