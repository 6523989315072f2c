"""Colored MNIST figures (Pezeshki et al. 2021, Fig. 4, the feature responses and the starvation
matrix of the measured spectrum): arrays in, figure out."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "PROBE_INPUTS",
    "cmnist_figures",
    "probe_figure",
    "feature_response_figure",
    "starvation_figure",
    "render_inputs",
]

#: The four probe inputs in figure order: rows digit/blank, columns grayscale/coloured.
PROBE_INPUTS: tuple[str, ...] = ("digit_gray", "digit_color", "blank_gray", "blank_color")


def render_inputs(images: np.ndarray, *, gray: bool) -> np.ndarray:
    """A 2 × 2 mosaic (28 × 28 × 3 RGB) of four two-channel 14 × 14 inputs.

    Channel 0 is drawn red and channel 1 green (the two colours of Colored MNIST); with ``gray`` the
    channel sum is drawn in gray.

    Args:
        images: (4, 2, 14, 14) inputs in [0, 1].
        gray: draw the channel sum in grayscale.

    Returns:
        (28, 28, 3) float RGB image in [0, 1].

    Raises:
        ValueError: if ``images`` is not (4, 2, 14, 14).
    """
    images = np.asarray(images, dtype=float)
    if images.shape != (4, 2, 14, 14):
        raise ValueError(f"images: expected shape (4, 2, 14, 14), got {images.shape}")
    if gray:
        s = images.sum(1)
        rgb = np.stack([s, s, s], axis=-1)
    else:
        rgb = np.stack([images[:, 0], images[:, 1], np.zeros_like(images[:, 0])], axis=-1)
    rgb = np.clip(rgb, 0.0, 1.0)
    top = np.concatenate([rgb[0], rgb[1]], axis=1)
    bottom = np.concatenate([rgb[2], rgb[3]], axis=1)
    return np.concatenate([top, bottom], axis=0)


def _heatmap(ax, data, cmap, vmin, vmax, fmt, title=None, ylabels=True):
    im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks([0, 1], ["grayscale", "colored"])
    ax.set_yticks([0, 1], ["digit", "blank"] if ylabels else ["", ""])
    ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xticks(np.arange(3) - 0.5, minor=True)
    ax.set_yticks(np.arange(3) - 0.5, minor=True)
    ax.grid(which="minor", color="w", linestyle="-", linewidth=3)
    ax.tick_params(which="minor", top=False, left=False, bottom=False)
    for i in range(2):
        for j in range(2):
            r, g, b, _ = im.cmap(im.norm(data[i, j]))
            color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"
            ax.text(
                j, i, fmt.format(data[i, j]), ha="center", va="center", color=color, fontsize=11
            )
    if title:
        ax.set_title(title, pad=22)
    return im


def probe_figure(
    probe: Mapping[str, Mapping[str, Mapping[str, float]]],
    examples: Mapping[str, np.ndarray] | None = None,
):
    """Fig. 4 of Pezeshki et al. 2021: accuracy (top) and mean binary entropy (bottom) on the four inputs.

    Args:
        probe: method name → input name (:data:`PROBE_INPUTS`) → ``{"acc": fraction, "entropy": nats}``.
        examples: optional input name → (4, 2, 14, 14) example inputs, drawn on the left.

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: if a method lacks one of the four inputs, or ``probe`` is empty.
    """
    import matplotlib.pyplot as plt

    if not probe:
        raise ValueError("probe: got no methods; pass {method: {input: {'acc', 'entropy'}}}")
    for name, p in probe.items():
        missing = [k for k in PROBE_INPUTS if k not in p]
        if missing:
            raise ValueError(
                f"probe[{name!r}]: missing inputs {missing}; expected {list(PROBE_INPUTS)}"
            )
    methods = list(probe)
    ncols = len(methods) + (1 if examples is not None else 0)
    fig, axes = plt.subplots(
        2, ncols, figsize=(2.6 * ncols + 1.2, 5.6), squeeze=False, gridspec_kw={"wspace": 0.3}
    )
    col0 = 0
    if examples is not None:
        ax = axes[0, 0]
        grid = np.ones((58, 58, 3))
        for (i, j), name in zip(((0, 0), (0, 1), (1, 0), (1, 1)), PROBE_INPUTS, strict=True):
            grid[i * 30 : i * 30 + 28, j * 30 : j * 30 + 28] = render_inputs(
                examples[name], gray=name.endswith("gray")
            )
        ax.imshow(grid)
        ax.set_xticks([14, 44], ["grayscale", "colored"])
        ax.set_yticks([14, 44], ["digit", "blank"])
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False, length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        axes[1, 0].axis("off")
        col0 = 1
    im_acc = im_ent = None
    for c, name in enumerate(methods):
        p = probe[name]
        acc = 100 * np.array(
            [[p[k]["acc"] for k in PROBE_INPUTS[:2]], [p[k]["acc"] for k in PROBE_INPUTS[2:]]]
        )
        ent = np.array(
            [
                [p[k]["entropy"] for k in PROBE_INPUTS[:2]],
                [p[k]["entropy"] for k in PROBE_INPUTS[2:]],
            ]
        )
        im_acc = _heatmap(
            axes[0, col0 + c], acc, "RdBu", 0.0, 100.0, "{:.1f} %", title=name, ylabels=c == 0
        )
        im_ent = _heatmap(
            axes[1, col0 + c], ent, "YlGn_r", 0.0, float(np.log(2.0)), "{:.2f}", ylabels=c == 0
        )
    fig.colorbar(im_acc, ax=axes[0, col0:].tolist(), fraction=0.025, pad=0.02, label="Accuracy (%)")
    fig.colorbar(
        im_ent, ax=axes[1, col0:].tolist(), fraction=0.025, pad=0.02, label="Entropy (nats)"
    )
    return fig


def feature_response_figure(
    curves: Mapping[str, Mapping[str, np.ndarray]], *, max_lines: int = 100
):
    """Feature responses z(t), loss and accuracy over training, one column per method.

    Args:
        curves: method name → arrays: ``steps`` (R,), ``z`` (R, k) responses of the top-k NTK
            directions, ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc`` (R,) each.
        max_lines: plot at most this many responses (the top ones).

    Returns:
        The matplotlib figure (rows: z, BCE loss, accuracy).

    Raises:
        ValueError: on a missing array or mismatched lengths.
    """
    import matplotlib.pyplot as plt

    need = ("steps", "z", "train_loss", "test_loss", "train_acc", "test_acc")
    for name, c in curves.items():
        missing = [k for k in need if k not in c]
        if missing:
            raise ValueError(f"curves[{name!r}]: missing {missing}")
        r = np.shape(c["steps"])[0]
        if any(np.shape(c[k])[0] != r for k in need):
            raise ValueError(
                f"curves[{name!r}]: every array needs {r} records (the length of steps)"
            )
    fig, axes = plt.subplots(
        3, len(curves), figsize=(6.0 * len(curves), 8.0), squeeze=False, sharex="col"
    )
    for j, (name, c) in enumerate(curves.items()):
        steps = np.asarray(c["steps"])
        z = np.asarray(c["z"])[:, :max_lines]
        axes[0, j].plot(steps, z, lw=1.0)
        axes[0, j].set_title(name)
        axes[1, j].plot(steps, c["train_loss"], label="Train loss", lw=2)
        axes[1, j].plot(steps, c["test_loss"], label="Test loss", lw=2)
        axes[2, j].plot(steps, c["train_acc"], label="Train accuracy", lw=2)
        axes[2, j].plot(steps, c["test_acc"], label="Test accuracy", lw=2)
        axes[1, j].legend()
        axes[2, j].legend()
        axes[2, j].set_xlabel("Steps (full batch)")
    axes[0, 0].set_ylabel("z (feature responses)")
    axes[1, 0].set_ylabel("BCE loss")
    axes[2, 0].set_ylabel("Accuracy")
    fig.tight_layout()
    return fig


def starvation_figure(matrices: Mapping[str, np.ndarray], *, max_abs: float | None = None):
    """Starvation matrices M[j, i] = ∂z_j*/∂s_i side by side, on one diverging scale centred at 0.

    Feature i starves feature j where M[j, i] < 0 (Pezeshki et al. 2021, Sec. 3.2): blue below 0,
    red above, white at 0. One colour scale for every panel, so a decoupled loss (SD: M = 0) shows
    as a blank panel beside a coupled one (CE); each title gives its own max |M|.

    Args:
        matrices: panel title → (k, k) matrix (rows j, columns i, directions in order of s).
        max_abs: half-width of the colour scale (default the largest |M| of all panels).

    Returns:
        The matplotlib figure.

    Raises:
        ValueError: if ``matrices`` is empty, a matrix is not square or has non-finite entries,
            or ``max_abs`` is not > 0.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.ticker import MaxNLocator

    if not matrices:
        raise ValueError("matrices: got no panels; pass {title: (k, k) matrix}")
    arrays = {t: np.asarray(m, dtype=float) for t, m in matrices.items()}
    for title, m in arrays.items():
        if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.all(np.isfinite(m)):
            raise ValueError(
                f"matrices[{title!r}]: expected a finite square (k, k) matrix, got shape {m.shape}"
            )
    if max_abs is not None and not max_abs > 0:
        raise ValueError(f"max_abs: expected a number > 0, got {max_abs!r}")
    scale = max_abs or max(float(np.max(np.abs(m))) for m in arrays.values()) or 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
    fig, axes = plt.subplots(1, len(arrays), figsize=(4.6 * len(arrays) + 1.0, 4.4), squeeze=False)
    im = None
    for ax, (title, m) in zip(axes[0], arrays.items(), strict=True):
        k = m.shape[0]
        im = ax.imshow(m, cmap="RdBu_r", norm=norm, extent=(0.5, k + 0.5, k + 0.5, 0.5))
        ax.set_title(f"{title}\nmax |∂z*/∂s| = {np.max(np.abs(m)):.2g}", fontsize=10)
        ax.set_xlabel("i (direction whose s_i grows)")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=6, integer=True, min_n_ticks=1))
    axes[0, 0].set_ylabel("j (response z_j*)")
    fig.colorbar(im, ax=axes[0].tolist(), fraction=0.03, pad=0.03, label="∂z_j* / ∂s_i")
    return fig


def cmnist_figures(
    probe: Mapping[str, Mapping[str, Mapping[str, float]]],
    examples: Mapping[str, np.ndarray],
    curves: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    starvation: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, object]:
    """A Colored MNIST run's figures by file stem: the probe, and z(t) and starvation when given.

    Args:
        probe, examples: as :func:`probe_figure`.
        curves: as :func:`feature_response_figure` (``None`` or empty: no such figure).
        starvation: objective name → its entry with ``lam`` and ``matrix`` (results.json's
            ``starvation``); drawn only with ``curves`` and when every entry has a matrix.

    Returns:
        ``{"cmnist_probe": fig, ...}``: also ``cmnist_feature_responses_over_training`` and
        ``cmnist_starvation_matrix`` when drawn.
    """
    figures: dict[str, object] = {}
    if curves:
        figures["cmnist_feature_responses_over_training"] = feature_response_figure(curves)
    figures["cmnist_probe"] = probe_figure(probe, examples)
    if curves and starvation and all("matrix" in v for v in starvation.values()):
        panels = {f"{k.upper()}, λ = {v['lam']:.3g}": v["matrix"] for k, v in starvation.items()}
        figures["cmnist_starvation_matrix"] = starvation_figure(panels)
    return figures
