"""Figures of the tangent-feature spectrum and of feature responses: arrays in, a matplotlib figure out.

* :func:`spectrum_figure`: singular values s_j of YΦ (log scale) beside the label alignment |u_jᵀ1|
  of each direction (Pezeshki et al. 2021, Sec. 3: strong features are learned first and starve
  the weaker ones).
* :func:`responses_figure`: feature responses z_j(t) of real training, linearized training and the
  theory's prediction on one set of axes (Sec. 4, Fig. 5 style).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from ntkdyn.plots.style import S1_COLORS as _COLORS
from ntkdyn.plots.style import style_axes

__all__ = ["spectrum_figure", "responses_figure"]


def spectrum_figure(
    s: Float[np.ndarray, " d"],
    alignment: Float[np.ndarray, " d"],
    *,
    title: str = "",
    top: int = 20,
    n: int | None = None,
):
    """Singular values of YΦ (left, log scale) and the label alignment |u_jᵀ1| of the top directions (right).

    Args:
        s: (d,) singular values in decreasing order.
        alignment: (d,) |u_jᵀ1| for each direction.
        title: figure title.
        top: how many leading directions the right panel shows.
        n: number of examples; when given, the right panel marks √n = ‖1‖, the alignment of a
            direction that carries every margin equally (an upper bound of |u_jᵀ1|).

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ValueError: naming ``s`` or ``alignment`` for mismatched or non-1-D arrays, or ``top`` < 1.
    """
    import matplotlib.pyplot as plt

    s = np.asarray(s, dtype=float)
    alignment = np.asarray(alignment, dtype=float)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(
            f"s: expected a non-empty 1-D array of singular values, got shape {s.shape}"
        )
    if alignment.shape != s.shape:
        raise ValueError(f"alignment: expected shape {s.shape} like s, got {alignment.shape}")
    if top < 1:
        raise ValueError(f"top: must be >= 1, got {top}")
    if n is not None and n < s.size:
        raise ValueError(f"n: the number of examples must be >= d = {s.size} directions, got {n}")
    k = min(top, s.size)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    idx = np.arange(1, s.size + 1)
    ax1.semilogy(idx, s, ".-", color=_COLORS[0], ms=3, lw=1)
    ax1.set_xlabel("index j")
    ax1.set_ylabel("singular value $s_j$ of $Y\\Phi$")
    style_axes(ax1)
    ax2.bar(np.arange(1, k + 1), alignment[:k], color=_COLORS[1])
    if n is not None:
        ax2.axhline(np.sqrt(n), color="k", lw=0.8, ls=":", label=f"$\\sqrt{{n}}$, n = {n}")
    ax2.set_xlabel("index j")
    ax2.set_ylabel("label alignment $|u_j^\\top 1|$")
    if n is not None:
        ax2.legend(frameon=False, fontsize=8)
    style_axes(ax2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _marks(run: int, T: int) -> dict:
    # Runs after the second get sparse open markers, so a curve that coincides with an earlier one
    # (linearized training vs the theory) stays visible.
    if run < 2:
        return {}
    return {"marker": "os^"[(run - 2) % 3], "mfc": "none", "ms": 4, "markevery": max(1, T // 12)}


def responses_figure(
    curves: Sequence[tuple[str, Float[np.ndarray, " T"], Float[np.ndarray, "T d"]]],
    *,
    features: Sequence[int] = (0, 1, 2, 3),
    xlabel: str = "gradient-flow time $\\eta k$",
    title: str = "",
):
    """Feature responses z_j(t) of several runs on one set of axes.

    Colour marks the feature j, line style the run (solid, dashed, dotted, dash-dot in order; from
    the third run on, with sparse open markers), so that e.g. ("network", t, z),
    ("linearized", t, z), ("theory", t, z) overlay and stay distinguishable where they coincide.

    Args:
        curves: (label, t (T,), z (T, d)) for each run; the runs may have different T.
        features: indices j of the responses to draw.
        xlabel: x-axis label.
        title: figure title.

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ValueError: naming ``curves`` for empty input or mismatched shapes, ``features`` for an
            index out of range.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not curves:
        raise ValueError("curves: pass at least one (label, t, z) run")
    styles = ("-", "--", ":", "-.")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r, (label, t, z) in enumerate(curves):
        t, z = np.asarray(t, dtype=float), np.asarray(z, dtype=float)
        if z.ndim != 2 or t.shape != (z.shape[0],):
            raise ValueError(
                f"curves: run {label!r} needs t (T,) and z (T, d), got {t.shape} and {z.shape}"
            )
        for c, j in enumerate(features):
            if not 0 <= j < z.shape[1]:
                raise ValueError(
                    f"features: index {j} out of range for d={z.shape[1]} in run {label!r}"
                )
            ax.plot(
                t,
                z[:, j],
                styles[r % len(styles)],
                color=_COLORS[c % len(_COLORS)],
                lw=1.6 if r == 0 else 1.3,
                **_marks(r, t.size),
            )
    handles = [
        Line2D([], [], color=_COLORS[c % len(_COLORS)], label=f"$z_{{{j + 1}}}$")
        for c, j in enumerate(features)
    ]
    handles += [
        Line2D([], [], color="k", ls=styles[r % len(styles)], label=lab, **_marks(r, 1))
        for r, (lab, _, _) in enumerate(curves)
    ]
    ax.legend(handles=handles, frameon=False, fontsize=8, ncol=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("feature response $z_j = u_j^\\top Y (f_t - f_0)$")
    style_axes(ax)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
