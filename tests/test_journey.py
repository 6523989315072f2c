"""The journey on grouped data: threshold-tuned baselines, what each direction carries, and the
responses of a batch-norm network measured with its statistics frozen on the sample."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from ntkdyn.journey import GroupJourney, carriers, direction_table, theory_lams
from ntkdyn.train.groups import (
    Recipe,
    Selection,
    group_metrics,
    select_epochs,
    summarize_methods,
    tune_threshold,
)

NAMES = ["y0a0", "y0a1", "y1a0", "y1a1"]


def _worst(logits, y, g, t):
    return group_metrics((logits > t).astype(int), y, g, NAMES)["worst_group_acc"]


@pytest.mark.parametrize("seed", range(6))
def test_tuned_threshold_is_the_best_of_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    y = rng.integers(0, 2, n)
    a = rng.integers(0, 2, n)
    g = 2 * y + a
    logits = np.round(rng.normal(size=n) + 0.8 * (2 * y - 1) - 0.5 * a, 1)  # ties included
    t = tune_threshold(logits, y, g, NAMES)
    # every cut that can matter: each logit itself (ŷ > t flips just above it) and beyond both ends
    brute = max(_worst(logits, y, g, c) for c in np.concatenate([logits, [-99.0, 99.0]]))
    assert _worst(logits, y, g, t) == pytest.approx(brute)
    assert _worst(logits, y, g, t) >= _worst(logits, y, g, 0.0)


def test_threshold_prefers_zero_on_ties_and_rejects_bad_input():
    logits, y = np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1])
    assert tune_threshold(logits, y, 2 * y, NAMES) == 0.0  # every cut in (−1, 1) is perfect
    with pytest.raises(ValueError, match="logits"):
        tune_threshold(np.array([np.nan, 1.0]), np.array([0, 1]), np.array([0, 2]), NAMES)
    with pytest.raises(ValueError, match="logits, y, group"):
        tune_threshold(np.array([]), np.array([]), np.array([]), NAMES)


def _epoch(val_avg, val_worst, tuned_worst, t):
    split = {"avg_acc": val_avg, "worst_group_acc": val_worst, "group_acc": {}, "group_count": {}}
    shifted = dict(split, worst_group_acc=tuned_worst)
    return {"val": split, "test": split, "threshold": {"t": t, "val": shifted, "test": shifted}}


def test_threshold_rule_selects_by_the_shifted_validation_metric():
    epochs = [_epoch(0.9, 0.2, 0.5, 0.3), _epoch(0.8, 0.4, 0.45, -0.1), _epoch(0.7, 0.3, 0.7, 1.2)]
    chosen = select_epochs(epochs)
    assert chosen["val_avg"]["epoch"] == 1
    assert chosen["val_worst"]["epoch"] == 2
    assert chosen["val_worst_threshold"]["epoch"] == 3
    assert chosen["val_worst_threshold"]["threshold"] == 1.2
    assert chosen["val_worst_threshold"]["val"]["worst_group_acc"] == 0.7
    # runs recorded before the rule existed: the rule is left out, not an error
    plain = [{k: v for k, v in e.items() if k != "threshold"} for e in epochs]
    assert set(select_epochs(plain)) == {"val_avg", "val_worst"}
    methods = summarize_methods(
        {"erm": [{"selected": select_epochs(plain)}]}, {"erm": "val_avg"}, []
    )
    assert "by_val_worst_threshold" not in methods["erm"] and "by_val_avg" in methods["erm"]
    with pytest.raises(ValueError, match="threshold"):
        Selection.VAL_WORST_THRESHOLD.view(plain[0])


def test_direction_table_closed_forms():
    rng = np.random.default_rng(0)
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    a = np.array([0, 1, 1, 0, 1, 0, 1, 0])
    g = 2 * y + a
    n = len(y)
    # a complete orthonormal basis whose first vector is the blond-men indicator, normalised
    first = (g == 3) / np.sqrt((g == 3).sum())
    q, _ = np.linalg.qr(np.column_stack([first, rng.normal(size=(n, n - 1))]))
    U = q * np.sign(q[:, :1].T @ first)  # first column +first
    table = direction_table(U, y, a, g, NAMES)
    assert table["group_cosine"]["y1a1"][0] == pytest.approx(1.0)
    assert table["group_share"]["y1a1"][0] == pytest.approx(1.0)
    for name in NAMES:  # shares over a complete basis sum to 1; cosines are unit vectors
        assert sum(table["group_share"][name]) == pytest.approx(1.0)
    assert table["label"][0] == pytest.approx(first.sum() / np.sqrt(n))
    ys, as_ = 2 * y - 1, 2 * a - 1
    assert table["attribute"][0] == pytest.approx(first @ (ys * as_) / np.sqrt(n))
    assert table["group_count"] == {"y0a0": 2, "y0a1": 2, "y1a0": 2, "y1a1": 2}
    with pytest.raises(ValueError, match="U, y, attribute, group"):
        direction_table(U[:-1], y, a, g, NAMES)


def test_carriers_hold_half_the_energy():
    assert carriers([0.1, 0.5, 0.05, 0.3]) == [2]
    assert carriers([0.2, 0.2, 0.3, 0.3]) == [3, 4]
    assert carriers([0.0, 0.0]) == []
    with pytest.raises(ValueError):
        carriers([])


class ConvBN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.Conv(3, (3, 3), strides=2)(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(1)(x.mean(axis=(1, 2)))


class _State:
    def __init__(self, variables):
        self.params, self.batch_stats = variables["params"], variables["batch_stats"]


@pytest.fixture(scope="module")
def journey():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 6, 6, 3)).astype(np.float32)
    y = np.repeat([0, 1], 12)
    a = np.tile([0, 0, 0, 1], 6)
    module = ConvBN()
    variables = module.init(jax.random.PRNGKey(0), x[:2])
    return module, variables, x, GroupJourney(module, variables, x, y, a, 2 * y + a, NAMES, k=5)


def test_journey_outputs_are_the_frozen_statistics_function(journey):
    from ntkdyn.models.frozen import freeze_batch_stats

    module, variables, x, j = journey
    apply_fn, params, _ = freeze_batch_stats(module, variables, x, batch_size=7)
    np.testing.assert_allclose(j.f0, np.asarray(apply_fn(params, x)).ravel(), rtol=1e-4, atol=1e-5)
    assert np.allclose(j.U.T @ j.U, np.eye(5), atol=1e-12)
    assert np.all(np.diff(np.asarray(j.spectrum.s)) <= 0)


def test_journey_measures_zero_at_theta0_and_the_move_of_a_trained_state(journey):
    module, variables, x, j = journey
    at0 = j.measure(_State(variables))["journey"]
    assert np.allclose(at0["z"], 0.0) and at0["outside"] == 0.0
    moved = jax.tree.map(lambda p: p * 1.1, variables["params"])
    m = j.measure(_State({"params": moved, "batch_stats": variables["batch_stats"]}))["journey"]
    f = j.outputs({"params": moved})
    r = j.signed * (f - j.f0)
    np.testing.assert_allclose(m["z"], j.U.T @ r, rtol=1e-10)
    assert 0 <= m["outside"] <= 1
    signed = 2 * j.y - 1
    for gid, name in enumerate(NAMES):
        sel = j.group == gid
        assert m["margin"][name] == pytest.approx(np.mean(signed[sel] * f[sel]))


def test_journey_describe_and_the_methods_lambdas(journey):
    *_, j = journey
    recipes = {
        "erm": Recipe("sgd", 0.01, 0.9, 1e-2, 3, balanced=False, selection="val_avg"),
        "sd": Recipe("sgd", 0.01, 0.9, 1e-4, 3, balanced=False, selection="val_avg"),
        "groupdro": Recipe("adam", 0.01, 0.9, 1e-2, 3, balanced=True, selection="val_worst"),
    }
    lams = theory_lams(recipes, (0.3, 0.1), 24)
    assert lams["erm"][1] == pytest.approx(24 * 1e-2)  # λ_CE = n·wd (coupled SGD)
    assert lams["sd"][1] == pytest.approx(2 * 0.2)  # λ_SD = 2·mean(c)
    assert lams["groupdro"][1] == 0.0  # Adam's decoupled decay is not the theory's λ
    d = j.describe({"erm": lams["erm"], "sd": lams["sd"]})
    assert d["n"] == 24 and d["k"] == 5 and len(d["directions"]["label"]) == 5
    assert set(d["carriers"]) == set(NAMES)
    assert {"z_star", "matrix"} <= set(d["prediction"]["erm"]) or "error" in d["prediction"]["erm"]
    with pytest.raises(ValueError, match="k"):
        GroupJourney(journey[0], journey[1], journey[2], j.y, j.attribute, j.group, NAMES, k=25)


def test_newton_at_the_fields_scale_when_singular_values_are_large():
    """s in the hundreds (a ResNet's): the default tolerance is below the field's rounding."""
    import jax.numpy as jnp

    from ntkdyn import sd_field
    from ntkdyn.analysis import newton_tolerance, predict_at_scale
    from ntkdyn.tangent.spectrum import FeatureSpectrum

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        q, _ = np.linalg.qr(rng.normal(size=(100, 5)))
        q = q * np.sign(q.sum(0))
        s = np.array([346.08, 297.02, 285.55, 264.47, 235.14])
        spec = FeatureSpectrum(jnp.asarray(q), jnp.asarray(s))
        p, tol = predict_at_scale(spec, 0.2, sd_field)
        assert newton_tolerance(100) <= tol <= newton_tolerance(100) * s[0] ** 2
        field = np.asarray(sd_field(p.z_star, spec.to_system(0.2)))
        assert np.max(np.abs(field)) <= 10 * tol * max(1.0, float(np.max(np.abs(p.z_star))))
        assert np.asarray(p.starvation).shape == (5, 5)


def test_the_colored_mnist_reading_follows_the_numbers():
    from ntkdyn.runs.tables import starvation_reading

    res = {
        "starvation": {
            "sd": {"max_abs": 3e-18, "negative_fraction_col1": 0.0, "col1_min": 0.0},
            "ce": {"max_abs": 2e-3, "negative_fraction_col1": 0.25, "col1_min": -4e-4},
        },
        "responses": {"ERM": {"captured": 0.31}, "SD": {"captured": 0.8}},
    }
    text = starvation_reading(res, 450)
    assert "SD predicts no starvation" in text and "starves 25 %" in text
    assert "ERM: the directions at θ₀ hold 31 %" in text and "mostly outside" in text
    assert "SD: the directions at θ₀ hold 80 %" in text and "mostly inside" in text
    assert "step 450" in text and "Commentary" in text
    res["starvation"]["sd"]["max_abs"] = 1e-3  # an SD matrix that is not round-off is reported
    assert "SD predicts no starvation" not in starvation_reading(res, 450)
    assert starvation_reading({}, 450) == ""
