"""CelebA figures: bar heights are the accuracies given, error bars the standard deviations."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from ntkdyn.plots.celeba import plot_group_accuracy  # noqa: E402

GROUPS = ["g0", "g1"]


def test_group_bars_have_the_given_heights_and_error_bars():
    acc = {"erm": {"g0": 0.9, "g1": 0.3}, "sd": {"g0": 0.8, "g1": 0.7}}
    std = {"erm": {"g0": 0.01, "g1": 0.1}, "sd": {"g0": 0.02, "g1": 0.05}}
    fig = plot_group_accuracy(acc, GROUPS, worst={"erm": 0.3, "sd": 0.7}, std=std)
    ax = fig.axes[0]
    heights = [b.get_height() for b in ax.patches]
    np.testing.assert_allclose(heights, [90, 30, 80, 70])
    caps = [c for c in ax.containers if getattr(c, "errorbar", None) is not None]
    spans = []
    for c in caps:
        (lines,) = c.errorbar.lines[2]
        spans += [seg[1, 1] - seg[0, 1] for seg in lines.get_segments()]
    np.testing.assert_allclose(spans, [2, 20, 4, 10])  # ±std, in points of accuracy
    without = plot_group_accuracy(acc, GROUPS)
    assert all(getattr(c, "errorbar", None) is None for c in without.axes[0].containers)
