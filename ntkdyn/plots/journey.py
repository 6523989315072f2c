"""Figures of the journey on grouped data (:mod:`ntkdyn.journey`): what each tangent direction
carries, and the measured responses and group margins over training, method beside method."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ntkdyn.plots.style import style_axes

__all__ = ["direction_groups_figure", "journey_responses_figure"]


def direction_groups_figure(
    share: Mapping[str, Sequence[float]], s: Sequence[float], *, title: str = ""
) -> plt.Figure:
    """Heat map, directions × groups: the share of each group's margin energy along u_j.

    Args:
        share: group → (k,) shares (:func:`ntkdyn.journey.direction_table`'s ``group_share``).
        s: (≥ k,) singular values, for the row labels.
        title: figure title.

    Returns:
        The figure (log colour scale; a random direction would hold 1/n of each group).
    """
    groups = list(share)
    data = np.array([share[g] for g in groups]).T  # (k, groups)
    k = data.shape[0]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(groups), 1.2 + 0.28 * k))
    shown = np.log10(np.maximum(data, 1e-6))
    im = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=-4, vmax=0)
    for j in range(k):
        for i in range(len(groups)):
            ax.text(i, j, f"{100 * data[j, i]:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if shown[j, i] < -1.5 else "black")  # fmt: skip
    ax.set_xticks(range(len(groups)), [g.replace(",", ",\n") for g in groups], fontsize=8)
    ax.set_yticks(range(k), [f"u{j + 1} (s={s[j]:.0f})" for j in range(k)], fontsize=7)
    fig.colorbar(im, ax=ax, label="log10 share of the group's margin energy")
    ax.set_title(title or "share of each group's margin energy along u_j (%)", fontsize=9)
    fig.tight_layout()
    return fig


def journey_responses_figure(
    epochs: Mapping[str, Sequence[Mapping[str, object]]],
    highlight: Sequence[int],
    *,
    top: int = 10,
    group: str | None = None,
) -> plt.Figure:
    """Measured z_j per epoch (top row) and each group's mean margin (bottom row), one column per
    method (e.g. ERM beside SD beside Group DRO), as the Colored MNIST figure.

    Args:
        epochs: method → per epoch ``{"z": (k,), "margin": {group: value}}`` (one seed).
        highlight: 1-based directions drawn thick (e.g. those that carry the rarest group).
        top: the first ``top`` directions are drawn (the highlighted ones always).
        group: the group drawn thick in the margin row.

    Returns:
        The figure.
    """
    methods = list(epochs)
    fig, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 6.0), squeeze=False)
    for c, m in enumerate(methods):
        rows = epochs[m]
        z = np.array([r["z"] for r in rows])
        t = np.arange(1, len(rows) + 1)
        ax = axes[0, c]
        shown = sorted(set(range(min(top, z.shape[1]))) | {j - 1 for j in highlight})
        for j in shown:
            thick = (j + 1) in highlight
            ax.plot(t, z[:, j], lw=2.2 if thick else 0.9, alpha=1.0 if thick else 0.6,
                    label=f"u{j + 1}" if thick or j < 3 else None)  # fmt: skip
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(f"{m}: z_j = u_jᵀY(f_t − f_0)", fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7, ncol=2)
        style_axes(ax)
        ax = axes[1, c]
        names = list(rows[0]["margin"])
        for name in names:
            ax.plot(t, [r["margin"][name] for r in rows], lw=2.2 if name == group else 1.0,
                    label=name)  # fmt: skip
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(f"{m}: mean margin y±·f per group", fontsize=9)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        style_axes(ax)
    fig.tight_layout()
    return fig
