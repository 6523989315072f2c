"""Group-balanced sampling (against the reference's weights), group metrics and epoch selection."""

import numpy as np
import pytest

from ntkdyn.train.groups import (
    Selection,
    group_balanced_order,
    group_metrics,
    select_epoch,
    summarize_selected,
)

# CelebA-10k's training split: 2206 / 2068 / 687 / 41 images per group
GROUPS = np.repeat(np.arange(4), [2206, 2068, 687, 41])


def test_balanced_order_draws_groups_equally_with_replacement():
    order = group_balanced_order(GROUPS, seed=0, epoch=0)
    assert order.shape == (len(GROUPS),)  # an epoch is the dataset size in draws
    share = np.bincount(GROUPS[order], minlength=4) / len(order)
    # every group 1/4 in expectation; binomial std sqrt(p(1-p)/n) = 0.006
    np.testing.assert_allclose(share, 0.25, atol=0.025)
    assert len(np.unique(order[GROUPS[order] == 3])) <= 41  # the rare group repeats
    # within a group, examples are equally likely (weight 1/n_g each)
    rare = np.concatenate([group_balanced_order(GROUPS, seed=1, epoch=e) for e in range(40)])
    counts = np.bincount(rare[GROUPS[rare] == 3] - 4961, minlength=41)
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.6 * counts.mean()


def test_balanced_order_is_fixed_by_seed_and_epoch():
    a = group_balanced_order(GROUPS, seed=3, epoch=2)
    np.testing.assert_array_equal(a, group_balanced_order(GROUPS, seed=3, epoch=2))
    assert not np.array_equal(a, group_balanced_order(GROUPS, seed=3, epoch=3))
    assert not np.array_equal(a, group_balanced_order(GROUPS, seed=4, epoch=2))
    assert group_balanced_order(GROUPS, seed=3, epoch=2, num_draws=100).shape == (100,)


def test_balanced_order_matches_the_reference_weights():
    """WeightedRandomSampler(len/n_g): P(i) = 1/(G n_g); with a missing group, over those present."""
    g = np.array([0, 0, 0, 2, 2, 5])
    draws = np.concatenate([group_balanced_order(g, seed=0, epoch=e) for e in range(4000)])
    freq = np.bincount(draws, minlength=len(g)) / len(draws)
    weights = len(g) / np.bincount(g)[g]
    np.testing.assert_allclose(freq, weights / weights.sum(), atol=0.01)


def test_balanced_order_errors():
    with pytest.raises(ValueError, match="group"):
        group_balanced_order(np.array([]), seed=0, epoch=0)
    with pytest.raises(ValueError, match="group"):
        group_balanced_order(np.array([0.5, 1.0]), seed=0, epoch=0)
    with pytest.raises(ValueError, match=">= 0"):
        group_balanced_order(np.array([0, -1]), seed=0, epoch=0)
    with pytest.raises(ValueError, match="num_draws"):
        group_balanced_order(np.array([0, 1]), seed=0, epoch=0, num_draws=0)


def test_group_metrics_hand_computed():
    pred = np.array([1, 0, 1, 1, 0, 0, 1])
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    g = np.array([3, 0, 1, 2, 0, 3, 3])
    m = group_metrics(pred, y, g, ["a", "b", "c", "d"])
    assert m["avg_acc"] == pytest.approx(5 / 7)
    assert m["group_acc"] == {"a": 1.0, "b": 0.0, "c": 1.0, "d": pytest.approx(2 / 3)}
    assert m["worst_group_acc"] == 0.0 and m["group_count"] == {"a": 2, "b": 1, "c": 1, "d": 3}
    absent = group_metrics(pred, y, np.where(g == 1, 0, g), ["a", "b", "c", "d"])
    assert "b" not in absent["group_acc"] and absent["group_count"]["b"] == 0
    with pytest.raises(ValueError, match="pred, y, group"):
        group_metrics(pred, y[:-1], g, ["a"])


def test_select_epoch_by_rule_earliest_on_ties():
    def ep(avg, worst):
        return {"val": {"avg_acc": avg, "worst_group_acc": worst}}

    epochs = [ep(0.90, 0.2), ep(0.95, 0.5), ep(0.93, 0.7), ep(0.95, 0.7)]
    assert select_epoch(epochs, "val_avg") == 1
    assert select_epoch(epochs, Selection.VAL_WORST) == 2
    assert Selection("val_worst").metric == "worst_group_acc"
    with pytest.raises(ValueError, match="rule"):
        select_epoch(epochs, "val_loss")
    with pytest.raises(ValueError, match="epochs"):
        select_epoch([], "val_avg")


def _selected(epoch, avg, worst, groups, val=(0.5, 0.25)):
    test = {"avg_acc": avg, "worst_group_acc": worst, "group_acc": groups}
    return {"epoch": epoch, "val": {"avg_acc": val[0], "worst_group_acc": val[1]}, "test": test}


def test_summarize_selected_is_the_mean_and_sample_std_over_seeds():
    names = ["a", "b", "c"]
    chosen = [
        _selected(2, 0.9, 0.4, {"a": 0.9, "b": 0.4}, val=(0.8, 0.3)),
        _selected(3, 0.8, 0.6, {"a": 0.7, "b": 0.6, "c": 1.0}, val=(0.6, 0.5)),
    ]
    r = summarize_selected(chosen, "val_worst", names)
    assert r["avg_acc"] == pytest.approx(0.85) and r["worst_group_acc"] == pytest.approx(0.5)
    # sample std (ddof 1): |x₁ − x₂| / √2
    assert r["avg_acc_std"] == pytest.approx(0.1 / np.sqrt(2))
    assert r["worst_group_acc_std"] == pytest.approx(0.2 / np.sqrt(2))
    # a group's mean runs over the seeds whose split holds it
    assert r["group_acc"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 1.0})
    assert r["val_avg_acc"] == pytest.approx(0.7) and r["val_worst_group_acc"] == pytest.approx(0.4)
    assert r["selection"] == {
        "rule": "val_worst",
        "metric": "val worst_group_acc",
        "epochs": [2, 3],
    }
    assert [(p["seed"], p["epoch"]) for p in r["per_seed"]] == [(0, 2), (1, 3)]
    one = summarize_selected(chosen[:1], Selection.VAL_AVG, names)
    assert one["avg_acc_std"] == 0.0 and "c" not in one["group_acc"]
    assert one["selection"]["metric"] == "val avg_acc"
    with pytest.raises(ValueError, match="chosen"):
        summarize_selected([], "val_avg", names)
    with pytest.raises(ValueError, match="rule"):
        summarize_selected(chosen, "val_best", names)
