"""Two-moons figures (Pezeshki et al. 2021, Fig. 1–3): arrays in, a matplotlib figure out.

* :func:`decision_panel`: one decision function on a grid — filled contours (10 levels, red for
  class −1, blue for class +1), the zero level set as a thick line, the training points on top.
* :func:`moons_main_figure`: Δ = −0.1 ERM, Δ = +0.1 ERM, Δ = +0.1 SD, and the feature responses
  z_j(t) of the top NTK directions at initialisation, ERM (dashed) against SD (solid).
* :func:`moons_regularizer_figure`: the ten-panel comparison of common regularizers with SD.
* :func:`moons_figures`: both figures of ``ntkdyn moons`` from its decision functions;
  :func:`decision_arrays` and :func:`from_decision_arrays` lay them out as the flat arrays of an
  ``.npz`` file and back, so a run's figures can be redrawn without training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float

__all__ = [
    "DecisionPanel",
    "decision_arrays",
    "decision_panel",
    "from_decision_arrays",
    "moons_figures",
    "moons_main_figure",
    "moons_regularizer_figure",
]

_POINT_COLORS = ("#C82506", "#0365C0")  # class −1, class +1
_Z_COLORS = ("#2D7F58", "#FA7F05", "#5B4FA8", "#B8336A", "#3E8EDE", "#7A6C32")


class DecisionPanel(NamedTuple):
    """One decision-function panel.

    Attributes:
        title: the panel title.
        values: (ny, nx) decision function, ``values[r, c] = f(xs[c], ys[r])``.
        X: (n, 2) training points drawn on top.
        y: (n,) labels in {−1, +1}.
    """

    title: str
    values: Float[np.ndarray, "ny nx"]
    X: Float[np.ndarray, "n 2"]
    y: Float[np.ndarray, " n"]


def decision_panel(
    ax: Any, xs: Float[np.ndarray, " nx"], ys: Float[np.ndarray, " ny"], panel: DecisionPanel
) -> Any:
    """Draw one decision function with its zero level set and the training points on ``ax``.

    Args:
        ax: a matplotlib axes.
        xs: (nx,) grid of the first coordinate.
        ys: (ny,) grid of the second coordinate.
        panel: the :class:`DecisionPanel` to draw.

    Returns:
        ``ax``.

    Raises:
        ValueError: if ``panel.values`` is not (len(ys), len(xs)).
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    values = np.asarray(panel.values, dtype=float)
    if values.shape != (len(ys), len(xs)):
        raise ValueError(f"panel.values: expected shape {(len(ys), len(xs))}, got {values.shape}")
    gx, gy = np.meshgrid(xs, ys)
    ax.contourf(gx, gy, values, 10, cmap=plt.cm.RdBu, alpha=0.8)
    ax.contour(gx, gy, values, 10, linewidths=0.2, colors="k", linestyles="solid")
    if values.min() < 0 < values.max():
        ax.contour(gx, gy, values, [0.0], linewidths=1.2, colors="k", linestyles="solid")
    X, y = np.asarray(panel.X), np.asarray(panel.y)
    ax.scatter(
        X[:, 0],
        X[:, 1],
        c=(y > 0).astype(int),
        cmap=ListedColormap(_POINT_COLORS),
        vmin=0,
        vmax=1,
        edgecolors="k",
        linewidths=0.5,
        s=14,
    )
    ax.axhline(0.0, ls="--", lw=0.7, color="k", alpha=0.5)
    ax.axvline(0.0, ls="--", lw=0.7, color="k", alpha=0.5)
    ax.set_xlim(xs[0], xs[-1])
    ax.set_ylim(ys[0], ys[-1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(panel.title, fontsize=10)
    return ax


def moons_main_figure(
    xs: Float[np.ndarray, " nx"],
    ys: Float[np.ndarray, " ny"],
    panels: Sequence[DecisionPanel],
    responses: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    *,
    directions: Sequence[int] = (0, 1, 2, 3),
) -> Any:
    """The paper's Fig. 1–2: decision functions side by side, then feature responses over training.

    Args:
        xs, ys: the grid of every panel.
        panels: the decision panels (the paper: Δ = −0.1 ERM, Δ = +0.1 ERM, Δ = +0.1 SD).
        responses: optional ``{label: (epochs (T,), z (T, d))}``; labels containing "SD" are drawn
            solid, the others dashed. z is typically the seed mean of Uᵀ Y (f_t − f_0).
        directions: which directions j (0-based, in order of decreasing singular value) to draw.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: if ``panels`` is empty or a response has inconsistent shapes.
    """
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("panels: expected at least one DecisionPanel")
    ncols = len(panels) + (1 if responses else 0)
    fig, axes = plt.subplots(1, ncols, figsize=(2.9 * ncols, 3.1), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=False):  # axes may hold an extra responses panel
        decision_panel(ax, xs, ys, panel)
    if responses:
        ax = axes[0, -1]
        for label, (t, z) in responses.items():
            t, z = np.asarray(t), np.asarray(z)
            if z.ndim != 2 or z.shape[0] != t.shape[0]:
                raise ValueError(
                    f"responses[{label!r}]: expected epochs (T,) and z (T, d), got {t.shape} and {z.shape}"
                )
            style = "-" if "SD" in label else "--"
            for j in directions:
                if j < z.shape[1]:
                    ax.plot(
                        t,
                        z[:, j],
                        ls=style,
                        lw=1.4,
                        color=_Z_COLORS[j % len(_Z_COLORS)],
                        label=f"{label}, z$_{{{j + 1}}}$",
                    )
        ax.set_xlabel("epoch")
        ax.set_ylabel("feature response z$_j$(t)")
        ax.set_title("Top NTK directions at init", fontsize=10)
        ax.set_facecolor("#F9F9F9")
        ax.grid(True, ls="--", lw=0.6, alpha=0.4)
        ax.legend(fontsize=6, ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def moons_regularizer_figure(
    xs: Float[np.ndarray, " nx"],
    ys: Float[np.ndarray, " ny"],
    panels: Sequence[DecisionPanel],
    *,
    ncols: int = 5,
) -> Any:
    """The paper's regularizer comparison (appendix figure): one decision panel per configuration.

    Args:
        xs, ys: the grid of every panel.
        panels: the decision panels, in reading order (the paper: nine regularizers, then SD).
        ncols: panels per row.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: if ``panels`` is empty or ``ncols`` < 1.
    """
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("panels: expected at least one DecisionPanel")
    if ncols < 1:
        raise ValueError(f"ncols: must be >= 1, got {ncols}")
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.7 * ncols, 3.0 * nrows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_axis_off()
    for ax, panel in zip(axes.flat, panels, strict=False):  # spare axes are switched off above
        decision_panel(ax, xs, ys, panel)
    fig.tight_layout()
    return fig


def moons_figures(
    xs: Float[np.ndarray, " nx"],
    ys: Float[np.ndarray, " ny"],
    values: Mapping[str, np.ndarray],
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    responses: Mapping[str, tuple[np.ndarray, np.ndarray]],
    titles: Mapping[str, str],
    *,
    main: Sequence[str] = ("erm_delta_minus", "erm", "sd"),
    others: Sequence[str] = (),
    sd: str = "sd",
    erm: str = "erm",
) -> dict[str, Any]:
    """The main figure (when every ``main`` configuration is present) and the regularizer figure.

    Args:
        xs, ys: the grid of the decision functions.
        values: configuration → (ny, nx) decision function.
        data: configuration → ``(X (n, 2), y (n,))`` drawn on its panel.
        responses: configuration → ``(epochs, z)``; ``erm``'s and ``sd``'s go under the main
            figure as "ERM" and "SD".
        titles: configuration → panel title.
        main: the main figure's configurations, in order.
        others: the regularizer panels, in order (those present are drawn).
        sd, erm: the configurations whose responses are compared.

    Returns:
        ``{"moons_main": figure, "moons_regularizers": figure}``, each only when it has panels.
    """
    figures: dict[str, Any] = {}

    def panels(names):
        return [DecisionPanel(titles[c], values[c], *data[c]) for c in names]

    if main and all(c in values for c in main):
        resp = {("ERM" if c == erm else "SD"): responses[c] for c in (erm, sd) if c in responses}
        figures["moons_main"] = moons_main_figure(xs, ys, panels(main), resp)
    present = [c for c in others if c in values]
    if present:
        figures["moons_regularizers"] = moons_regularizer_figure(xs, ys, panels(present))
    return figures


def decision_arrays(
    xs: Float[np.ndarray, " nx"],
    ys: Float[np.ndarray, " ny"],
    values: Mapping[str, np.ndarray],
    data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    responses: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """The inputs of :func:`moons_figures` as flat named arrays (for ``numpy.savez``).

    Returns:
        ``xs``, ``ys``, ``names`` (the configurations), ``values`` (C, ny, nx), ``X_<c>``,
        ``y_<c>`` per configuration and ``epochs_<c>``, ``z_<c>`` per response.
    """
    arrays = {"xs": xs, "ys": ys, "names": np.array(list(values))}
    arrays["values"] = np.stack([values[c] for c in values])
    for c in values:
        arrays[f"X_{c}"], arrays[f"y_{c}"] = data[c]
    for c, (epochs, z) in responses.items():
        arrays[f"epochs_{c}"], arrays[f"z_{c}"] = epochs, z
    return arrays


def from_decision_arrays(arrays: Mapping[str, np.ndarray]) -> tuple[dict, dict, dict]:
    """``(values, data, responses)`` back from :func:`decision_arrays`' layout (e.g. a loaded npz)."""
    names = [str(c) for c in arrays["names"]]
    values = {c: arrays["values"][i] for i, c in enumerate(names)}
    data = {c: (arrays[f"X_{c}"], arrays[f"y_{c}"]) for c in names}
    responses = {c: (arrays[f"epochs_{c}"], arrays[f"z_{c}"]) for c in names if f"z_{c}" in arrays}
    return values, data, responses
