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


def _split(y, a):
    from ntkdyn.data.images import ImageSplit

    y, a = np.asarray(y), np.asarray(a)
    return ImageSplit("test", tuple(f"{i}.jpg" for i in range(len(y))), y, a, 2 * y + a)


NAMES = ["y=0,a=0", "y=0,a=1", "y=1,a=0", "y=1,a=1"]


def test_group_evaluator_thresholds_logits_at_zero_in_the_order_predict_gives():
    from ntkdyn.train.groups import group_evaluator

    split = _split([0, 0, 1, 1, 1], [0, 1, 0, 1, 1])
    # predictions arrive permuted: index says which example each logit belongs to
    index = np.array([4, 3, 2, 1, 0])
    logits = np.array([2.0, -1.0, 0.5, 0.1, -3.0])  # examples 4..0: pred 1, 0, 1, 1, 0

    evaluate = group_evaluator(lambda state, name: (index, logits), {"test": split}, NAMES)
    got = evaluate(None)["test"]
    # by hand: example 0 (g0) right, 1 (g1) wrong, 2 (g2) right, 3 (g3) wrong, 4 (g3) right
    assert got["group_acc"] == {"y=0,a=0": 1.0, "y=0,a=1": 0.0, "y=1,a=0": 1.0, "y=1,a=1": 0.5}
    assert got["avg_acc"] == pytest.approx(3 / 5) and got["worst_group_acc"] == 0.0


def _epoch(val_avg, val_worst, test_avg):
    m = {"avg_acc": val_avg, "worst_group_acc": val_worst, "group_acc": {}, "group_count": {}}
    t = {"avg_acc": test_avg, "worst_group_acc": test_avg / 2, "group_acc": {"g": test_avg}}
    return {"val": m, "test": t}


def test_select_epochs_and_summarize_methods_keep_both_rules_and_a_headline():
    from ntkdyn.train.groups import select_epochs, summarize_methods

    epochs = [
        {"epoch": 1, **_epoch(0.9, 0.1, 0.8)},
        {"epoch": 2, **_epoch(0.7, 0.6, 0.6)},
    ]
    sel = select_epochs(epochs)
    assert sel["val_avg"]["epoch"] == 1 and sel["val_worst"]["epoch"] == 2
    runs = {"erm": [{"selected": sel}], "groupdro": [{"selected": sel}]}
    out = summarize_methods(
        runs, {"erm": "val_avg", "groupdro": "val_worst"}, ["g"], extra={"erm": {"training": 1}}
    )
    assert out["erm"]["avg_acc"] == 0.8 and out["groupdro"]["avg_acc"] == 0.6
    assert out["erm"]["by_val_worst"]["avg_acc"] == 0.6 and out["erm"]["training"] == 1
    assert out["groupdro"]["selection"]["rule"] == "val_worst"
    assert [p["seed"] for p in out["erm"]["per_seed"]] == [0]  # no run seed: the index
    two = summarize_methods({"erm": [{"selected": sel, "seed": 7}, {"selected": sel, "seed": 8}]},
                            {"erm": "val_avg"}, ["g"])  # fmt: skip
    assert [p["seed"] for p in two["erm"]["by_val_worst"]["per_seed"]] == [7, 8]
    with pytest.raises(ValueError, match="headline"):
        summarize_methods(runs, {"erm": "val_avg"}, ["g"])


def test_check_group_training_names_the_flag():
    from ntkdyn.errors import InputError
    from ntkdyn.train.groups import check_group_training

    full = _split([0, 0, 1, 1] * 4, [0, 1, 0, 1] * 4)
    check_group_training(full, NAMES, batch_size=8, devices=2)
    with pytest.raises(InputError, match=r"--data-dir: .*group\(s\) y=1,a=1"):
        check_group_training(_split([0, 0, 1], [0, 1, 0]), NAMES, batch_size=1, devices=1)
    with pytest.raises(InputError, match="--batch-size: 32 exceeds the 16"):
        check_group_training(full, NAMES, batch_size=32, devices=1)
    with pytest.raises(InputError, match="--batch-size: 6 is not divisible by the 4 devices"):
        check_group_training(full, NAMES, batch_size=6, devices=4)


def test_group_objective_and_recipe():
    from ntkdyn.objectives import ERM, ClassConditionalSD, GroupDRO
    from ntkdyn.settings import ConfigError
    from ntkdyn.train.groups import DRO, SD, Recipe, group_objective

    kw = dict(sd=SD(coef=(0.1, 0.2)), dro=DRO())
    with pytest.raises(ConfigError, match="momentum: expected a number in"):
        DRO(momentum=1.0)
    with pytest.raises(ConfigError, match="coef"):
        SD(coef=(-1.0, 0.1))
    assert isinstance(group_objective("erm", [1, 1, 1, 1], **kw), ERM)
    sd = group_objective("sd", [1, 1, 1, 1], **kw)
    assert isinstance(sd, ClassConditionalSD) and tuple(sd.coef) == (0.1, 0.2)
    dro = group_objective("groupdro", [5, 0, 3, 2], **kw)
    assert isinstance(dro, GroupDRO) and tuple(dro.group_counts) == (5, 1, 3, 2)
    with pytest.raises(ValueError, match="method"):
        group_objective("irm", [1, 1, 1, 1], **kw)
    r = Recipe("sgd", 0.01, 0.9, 1e-4, 20, True, "val_worst")
    assert r.describe() == (
        "sgd lr 0.01 momentum 0.9, weight decay 0.0001, 20 epochs, group-balanced sampling, "
        "epoch by val_worst"
    )


def test_group_accuracy_table_and_summary():
    from ntkdyn.runs.report import group_accuracy_table, group_headlines, group_summary_markdown

    block = {
        "avg_acc": 0.9, "avg_acc_std": 0.01, "worst_group_acc": 0.4, "worst_group_acc_std": 0.02,
        "group_acc": {"a": 0.95, "b": 0.4}, "selection": {"rule": "val_avg"},
    }  # fmt: skip
    lines = group_accuracy_table({"erm": block}, ["a", "b", "c"], published={})
    assert lines[2] == "| erm | 90.00 ± 1.00 | 40.00 ± 2.00 | 95.0 | 40.0 | – | — | — |"
    text = group_summary_markdown(
        "T", ["setup"], {"erm": {"by_val_avg": block, "by_val_worst": block}}, ["a", "b"], "N",
        note="synthetic",
    )  # fmt: skip
    assert text.startswith("# T\n\nsetup\n\n**synthetic**\n")
    assert text.count("| erm |") == 2 and "```\nN\n```" in text
    assert group_headlines(
        {"erm": block}, {"erm": {"avg": (94.61, 0.67), "worst": (40.35, 1.68)}}
    ) == ["      erm: test avg 90.0%  worst-group 40.0%  [val_avg] (published 94.6% / 40.4%)"]
