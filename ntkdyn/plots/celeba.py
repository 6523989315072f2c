"""CelebA figures: per-group test accuracy of each method, and validation accuracy over epochs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = ["plot_group_accuracy", "plot_validation_curves"]


def plot_group_accuracy(
    group_acc: Mapping[str, Mapping[str, float]],
    group_names: Sequence[str],
    worst: Mapping[str, float] | None = None,
    title: str = "",
    std: Mapping[str, Mapping[str, float]] | None = None,
) -> plt.Figure:
    """Grouped bars: accuracy of every group for every method (Pezeshki et al. 2021, Table 2).

    Args:
        group_acc: method → (group name → accuracy in [0, 1]).
        group_names: the groups, in display order.
        worst: method → worst-group accuracy, drawn as a dashed line per method.
        title: figure title.
        std: method → (group name → standard deviation in [0, 1]) over seeds, drawn as error bars.

    Returns:
        The figure.
    """
    methods = list(group_acc)
    fig, ax = plt.subplots(figsize=(1.6 + 1.9 * len(group_names), 3.4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(group_names))
    for i, m in enumerate(methods):
        vals = [100 * group_acc[m].get(g, np.nan) for g in group_names]
        err = None if std is None else [100 * std[m].get(g, np.nan) for g in group_names]
        bars = ax.bar(
            x + (i - (len(methods) - 1) / 2) * width, vals, width, label=m, yerr=err, capsize=2
        )
        if worst is not None and m in worst:
            ax.axhline(100 * worst[m], color=bars[0].get_facecolor(), ls="--", lw=1)
    ax.set_xticks(x, [g.replace(",", "\n") for g in group_names], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=8, loc="upper center", ncol=max(len(methods), 1), frameon=False)
    ax.set_title(title or "Per-group test accuracy (dashed: worst group)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_validation_curves(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> plt.Figure:
    """Validation average and worst-group accuracy per epoch, one line per method.

    Args:
        curves: method → {"avg": [...], "worst": [...]} (fractions, one value per epoch, mean over seeds).

    Returns:
        The figure.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), sharey=True)
    for m, c in curves.items():
        for ax, key in zip(axes, ("avg", "worst"), strict=True):
            ep = np.arange(1, len(c[key]) + 1)
            ax.plot(ep, 100 * np.asarray(c[key], float), marker="o", label=m)
    axes[0].set_title("validation average accuracy", fontsize=10)
    axes[1].set_title("validation worst-group accuracy", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 100)
    axes[0].set_ylabel("%")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
