"""Theory figures (Pezeshki et al. 2021, Sec. 3–4, two-feature example figure): arrays in, a matplotlib figure out.

* :func:`z2_vs_z1_figure`: z₂ against z₁ for several s₁ — left CE (solid) vs the dual flow (dotted),
  right CE (solid) vs SD (dashed); colour by s₁, end points marked (the paper's theory figure).
* :func:`slider_figure`: z₁(t) and z₂(t) for a few s₁, CE beside SD (the blog's slider view).
* :func:`sensitivity_figure`: z₂* and ∂z₂*/∂s₁ against s₁, CE and SD (finite differences as markers).
* :func:`starvation_map_figure`: ∂z₂*/∂s₁ over a grid of (s₁, s₂) (or (s₁, δ)), CE beside SD.
* :func:`trajectory_figure`: one trajectory z_j(t) (and z₂ against z₁ for two features).
* :func:`theory_figures`: the four figures of ``ntkdyn theory`` from its arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from ntkdyn.plots.style import S1_COLORS, style_axes

__all__ = [
    "S1_COLORS",
    "z2_vs_z1_figure",
    "slider_figure",
    "sensitivity_figure",
    "starvation_map_figure",
    "trajectory_figure",
    "theory_figures",
]


def _check_paths(name: str, arr, k: int | None = None) -> np.ndarray:
    arr = np.asarray(arr, dtype=float)
    if arr.ndim != 3 or arr.shape[-1] != 2 or (k is not None and arr.shape[0] != k):
        want = f"({k}, T, 2)" if k is not None else "(k, T, 2)"
        raise ValueError(f"{name}: expected trajectories of shape {want}, got {arr.shape}")
    return arr


def _endpoint(ax: Any, path: np.ndarray, color: str, marker: str) -> None:
    ax.plot(path[-1, 0], path[-1, 1], marker=marker, color=color, ms=6, mec="k", mew=0.6, zorder=5)


def z2_vs_z1_figure(
    s1: Sequence[float],
    ce: Float[np.ndarray, "k T 2"],
    dual: Float[np.ndarray, "k T2 2"],
    sd: Float[np.ndarray, "k T3 2"],
    *,
    xlim: tuple[float, float] = (-0.5, 10.5),
    ylim: tuple[float, float] = (-0.1, 1.75),
) -> Any:
    """The paper's two-panel theory figure: z₂ against z₁ for each s₁.

    Left: CE (solid) and the dual flow (dotted); right: CE (solid) and SD (dashed). CE end points
    fall as s₁ grows (starvation); SD end points coincide. End points are marked (circle: CE,
    square: SD, triangle: dual).

    Args:
        s1: (k,) the values of s₁ (legend).
        ce: (k, T, 2) CE trajectories.
        dual: (k, T', 2) dual-flow trajectories, mapped to z.
        sd: (k, T'', 2) SD trajectories.
        xlim, ylim: axis limits (default: the paper's).

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: naming the argument whose shape is wrong.
    """
    import matplotlib.pyplot as plt

    k = len(s1)
    ce, dual, sd = (_check_paths(n, a, k) for n, a in (("ce", ce), ("dual", dual), ("sd", sd)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.8))
    for i, v in enumerate(s1):
        c = S1_COLORS[i % len(S1_COLORS)]
        ax1.plot(dual[i, :, 0], dual[i, :, 1], lw=2, ls=":", color=c)
        for ax in (ax1, ax2):
            ax.plot(
                ce[i, :, 0],
                ce[i, :, 1],
                lw=2,
                alpha=0.9,
                color=c,
                label=f"$s_1={v:g}$" if ax is ax1 else None,
            )
            _endpoint(ax, ce[i], c, "o")
        _endpoint(ax1, dual[i], c, "^")
        ax2.plot(sd[i, :, 0], sd[i, :, 1], lw=2, ls="--", color=c)
        _endpoint(ax2, sd[i], c, "s")
    ax1.set_title("CE (solid) vs dual flow (dotted)", fontsize=10)
    ax2.set_title("CE (solid) vs SD (dashed)", fontsize=10)
    for ax in (ax1, ax2):
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        ax.set_xlabel("$z_1$")
        style_axes(ax)
    ax1.set_ylabel("$z_2$")
    ax1.legend(loc="upper left", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def slider_figure(
    t: Float[np.ndarray, " T"],
    s1: Sequence[float],
    ce: Float[np.ndarray, "k T 2"],
    sd: Float[np.ndarray, "k T 2"],
) -> Any:
    """The slider view: z₁(t) (solid) and z₂(t) (dashed) for each s₁, CE (left) beside SD (right).

    One row per s₁. Under CE a larger s₁ speeds up z₁ and lowers z₂ (starvation); under SD z₂(t)
    reaches the same value for every s₁.

    Args:
        t: (T,) times (η × steps).
        s1: (k,) values of s₁, one row each.
        ce: (k, T, 2) CE trajectories.
        sd: (k, T, 2) SD trajectories.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: naming the argument whose shape is wrong.
    """
    import matplotlib.pyplot as plt

    t = np.asarray(t, dtype=float)
    k = len(s1)
    ce, sd = _check_paths("ce", ce, k), _check_paths("sd", sd, k)
    if ce.shape[1] != t.shape[0] or sd.shape[1] != t.shape[0]:
        raise ValueError(
            f"t: has {t.shape[0]} samples but the trajectories have {ce.shape[1]} and {sd.shape[1]}"
        )
    top = 1.05 * max(np.nanmax(ce), np.nanmax(sd))
    fig, axes = plt.subplots(
        k, 2, figsize=(8, 1.9 * k + 0.6), sharex=True, sharey=True, squeeze=False
    )
    for i, v in enumerate(s1):
        for j, (name, z) in enumerate((("CE", ce), ("SD", sd))):
            ax = axes[i, j]
            ax.plot(t, z[i, :, 0], lw=2, color=S1_COLORS[0], label="$z_1$")
            ax.plot(t, z[i, :, 1], lw=2, ls="--", color=S1_COLORS[1], label="$z_2$")
            ax.annotate(
                f"{z[i, -1, 1]:.2f}",
                (t[-1], z[i, -1, 1]),
                textcoords="offset points",
                xytext=(-4, 4),
                ha="right",
                fontsize=8,
                color=S1_COLORS[1],
            )
            ax.set_ylim(-0.2, top)
            ax.set_title(f"{name}, $s_1={v:g}$", fontsize=9)
            style_axes(ax)
        axes[i, 0].set_ylabel("$z$")
    for ax in axes[-1]:
        ax.set_xlabel(r"$t$ ($\eta\,\times$ steps)")
    axes[0, 0].legend(loc="center right", fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def sensitivity_figure(
    s1: Float[np.ndarray, " m"],
    ce_z2: Float[np.ndarray, " m"],
    ce_dz2: Float[np.ndarray, " m"],
    sd_z2: Float[np.ndarray, " m"],
    sd_dz2: Float[np.ndarray, " m"],
    *,
    s2: float | None = None,
    fd_s1: Float[np.ndarray, " q"] | None = None,
    fd_dz2: Float[np.ndarray, " q"] | None = None,
) -> Any:
    """z₂* (left) and ∂z₂*/∂s₁ (right) against s₁, CE (solid) and SD (dashed).

    Args:
        s1: (m,) increasing s₁ values.
        ce_z2, ce_dz2: (m,) CE fixed point z₂* and its implicit derivative.
        sd_z2, sd_dz2: (m,) the same under SD.
        s2: draws a vertical line at s₁ = s₂.
        fd_s1, fd_dz2: finite-difference derivatives (markers), optional.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: naming an array whose length differs from ``s1``'s.
    """
    import matplotlib.pyplot as plt

    s1 = np.asarray(s1, dtype=float)
    arrays = {"ce_z2": ce_z2, "ce_dz2": ce_dz2, "sd_z2": sd_z2, "sd_dz2": sd_dz2}
    arrays = {k: np.asarray(v, dtype=float) for k, v in arrays.items()}
    for name, arr in arrays.items():
        if arr.shape != s1.shape:
            raise ValueError(f"{name}: expected shape {s1.shape} like s1, got {arr.shape}")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(8, 3.4))
    ax1.plot(s1, arrays["ce_z2"], lw=2, color=S1_COLORS[0], label="CE")
    ax1.plot(s1, arrays["sd_z2"], lw=2, ls="--", color=S1_COLORS[3], label="SD")
    ax2.plot(s1, arrays["ce_dz2"], lw=2, color=S1_COLORS[0], label="CE (implicit)")
    ax2.plot(s1, arrays["sd_dz2"], lw=2, ls="--", color=S1_COLORS[3], label="SD (implicit)")
    if fd_s1 is not None and fd_dz2 is not None:
        ax2.plot(fd_s1, fd_dz2, "o", ms=5, mfc="none", color="k", label="CE (finite diff.)")
    ax2.axhline(0.0, color="k", lw=0.8)
    for ax in (ax1, ax2):
        if s2 is not None:
            ax.axvline(s2, color="k", lw=0.8, ls=":")
        ax.set_xlabel("$s_1$")
        style_axes(ax)
        ax.legend(fontsize=8, frameon=False)
    ax1.set_ylabel("$z_2^*$")
    ax2.set_ylabel(r"$\partial z_2^* / \partial s_1$")
    ax1.set_title("weak feature's fixed point", fontsize=10)
    ax2.set_title("starvation: derivative < 0", fontsize=10)
    fig.tight_layout()
    return fig


def starvation_map_figure(
    x: Float[np.ndarray, " nx"],
    y: Float[np.ndarray, " ny"],
    ce: Float[np.ndarray, "ny nx"],
    sd: Float[np.ndarray, "ny nx"],
    *,
    xlabel: str = "$s_1$",
    ylabel: str = "$s_2$",
    diagonal: bool = True,
) -> Any:
    """Phase map of ∂z₂*/∂s₁ over a grid, CE (left) beside SD (right), on one diverging colour scale.

    Blue: starvation (∂z₂*/∂s₁ < 0); the zero contour is drawn; with ``diagonal`` the line s₁ = s₂.

    Args:
        x: (nx,) grid of the horizontal parameter (s₁).
        y: (ny,) grid of the vertical parameter (s₂ or δ).
        ce: (ny, nx) CE derivative, ``ce[r, c]`` at (x[c], y[r]).
        sd: (ny, nx) SD derivative.
        xlabel, ylabel: axis labels.
        diagonal: draw x = y.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: naming ``ce`` or ``sd`` if its shape is not (len(y), len(x)).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ce, sd = np.asarray(ce, dtype=float), np.asarray(sd, dtype=float)
    for name, arr in (("ce", ce), ("sd", sd)):
        if arr.shape != (y.shape[0], x.shape[0]):
            raise ValueError(f"{name}: expected shape {(y.shape[0], x.shape[0])}, got {arr.shape}")
    vmax = float(np.nanmax(np.abs(np.concatenate([ce.ravel(), sd.ravel()])))) or 1.0
    norm = TwoSlopeNorm(vmin=-vmax, vcenter=0.0, vmax=vmax)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, arr, name in zip(axes, (ce, sd), ("CE", "SD"), strict=False):
        mesh = ax.pcolormesh(x, y, arr, cmap="RdBu_r", norm=norm, shading="nearest")
        if np.nanmin(arr) < 0 < np.nanmax(arr):
            ax.contour(x, y, arr, levels=[0.0], colors="k", linewidths=1.0)
        if diagonal:
            lo, hi = max(x.min(), y.min()), min(x.max(), y.max())
            ax.plot([lo, hi], [lo, hi], color="k", ls=":", lw=1)
        ax.set_title(
            f"{name}: " + r"$\partial z_2^*/\partial s_1$" + f" (min {np.nanmin(arr):.2g})",
            fontsize=10,
        )
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    fig.colorbar(mesh, ax=list(axes), shrink=0.9, label=r"$\partial z_2^*/\partial s_1$")
    return fig


def trajectory_figure(
    t: Float[np.ndarray, " T"],
    z: Float[np.ndarray, "T d"],
    *,
    title: str = "",
    z_star: Float[np.ndarray, " d"] | None = None,
    max_lines: int = 8,
) -> Any:
    """One trajectory: z_j(t) for the first ``max_lines`` features (with z* dotted if given), and
    z₂ against z₁ beside it when d ≥ 2.

    Args:
        t: (T,) times.
        z: (T, d) feature responses.
        title: figure title.
        z_star: (d,) fixed point, drawn as dotted horizontal lines.
        max_lines: at most this many features are drawn.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: naming ``z`` if it is not (len(t), d).
    """
    import matplotlib.pyplot as plt

    t, z = np.asarray(t, dtype=float), np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[0] != t.shape[0]:
        raise ValueError(f"z: expected shape ({t.shape[0]}, d), got {z.shape}")
    d = z.shape[1]
    ncols = 2 if d >= 2 else 1
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4), squeeze=False)
    ax = axes[0, 0]
    for j in range(min(d, max_lines)):
        c = S1_COLORS[j % len(S1_COLORS)]
        ax.plot(t, z[:, j], lw=2, color=c, label=f"$z_{{{j + 1}}}$")
        if z_star is not None:
            ax.axhline(float(np.asarray(z_star)[j]), color=c, ls=":", lw=1)
    ax.set_xlabel("$t$")
    ax.set_ylabel("$z$")
    ax.legend(fontsize=8, frameon=False)
    style_axes(ax)
    if ncols == 2:
        ax = axes[0, 1]
        ax.plot(z[:, 0], z[:, 1], lw=2, color=S1_COLORS[0])
        _endpoint(ax, z, S1_COLORS[0], "o")
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        style_axes(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def theory_figures(
    *,
    s2: float,
    figure_s1: Sequence[float],
    slider_s1: Sequence[float],
    slider_samples: int,
    traj_s1: Float[np.ndarray, " B"],
    t: Float[np.ndarray, " T"],
    ce: Float[np.ndarray, "B T 2"],
    sd: Float[np.ndarray, "B T 2"],
    ce_dense: Float[np.ndarray, "B T1 2"],
    sd_dense: Float[np.ndarray, "B T1 2"],
    dual: Float[np.ndarray, "B P 2"],
    sweep_s1: Float[np.ndarray, " K"],
    sweep_ce_z: Float[np.ndarray, "K 2"],
    sweep_ce_dz2: Float[np.ndarray, " K"],
    sweep_sd_z: Float[np.ndarray, "K 2"],
    sweep_sd_dz2: Float[np.ndarray, " K"],
    fd_s1: Float[np.ndarray, " q"],
    fd_dz2: Float[np.ndarray, " q"],
    map_s1: Float[np.ndarray, " nx"],
    map_s2: Float[np.ndarray, " ny"],
    map_ce: Float[np.ndarray, "ny nx"],
    map_sd: Float[np.ndarray, "ny nx"],
) -> dict[str, Any]:
    """The four figures of ``ntkdyn theory``, by file stem.

    Args:
        s2: the weak feature's singular value (marked on the sensitivity figure).
        figure_s1, slider_s1: the s₁ of the z₂-vs-z₁ figure and of the slider view (each in
            ``traj_s1``).
        slider_samples: how many samples of ``t`` the slider view shows.
        traj_s1: (B,) the s₁ of the trajectories' rows.
        t, ce, sd: sampled GD trajectories; ``ce_dense``, ``sd_dense``: densely sampled ones.
        dual: the dual flow's z.
        sweep_*: the s₁ sweep (fixed points (K, 2), ∂z₂*/∂s₁ (K,)); ``fd_*``: finite differences.
        map_*: the phase map's axes and ∂z₂*/∂s₁.

    Returns:
        ``{"theory_z2_vs_z1", "theory_slider", "theory_sensitivity", "theory_starvation_map"}``
        → matplotlib figures.

    Raises:
        ValueError: an s₁ of ``figure_s1``/``slider_s1`` missing from ``traj_s1``, or a bad shape.
    """
    rows = [float(v) for v in np.asarray(traj_s1)]
    missing = [v for v in (*figure_s1, *slider_s1) if float(v) not in rows]
    if missing:
        raise ValueError(f"figure_s1/slider_s1: {missing[0]} is not among traj_s1 = {rows}")
    fig_idx = [rows.index(float(v)) for v in figure_s1]
    sl_idx = [rows.index(float(v)) for v in slider_s1]
    k = slider_samples
    return {
        "theory_z2_vs_z1": z2_vs_z1_figure(
            figure_s1, ce_dense[fig_idx], dual[fig_idx], sd_dense[fig_idx]
        ),
        "theory_slider": slider_figure(t[:k], slider_s1, ce[sl_idx, :k], sd[sl_idx, :k]),
        "theory_sensitivity": sensitivity_figure(
            sweep_s1,
            sweep_ce_z[:, 1],
            sweep_ce_dz2,
            sweep_sd_z[:, 1],
            sweep_sd_dz2,
            s2=s2,
            fd_s1=fd_s1,
            fd_dz2=fd_dz2,
        ),
        "theory_starvation_map": starvation_map_figure(map_s1, map_s2, map_ce, map_sd),
    }
