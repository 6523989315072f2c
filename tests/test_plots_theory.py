"""Theory figures: they draw what they are given and reject mismatched shapes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ntkdyn.plots.theory import (  # noqa: E402
    sensitivity_figure,
    slider_figure,
    starvation_map_figure,
    trajectory_figure,
    z2_vs_z1_figure,
)


def _paths(k, T):
    t = np.linspace(0, 1, T)
    return np.stack([np.stack([(i + 2) * t, t**2], axis=1) for i in range(k)])


def test_z2_vs_z1_draws_three_styles_and_end_points():
    ce, dual, sd = _paths(3, 50), _paths(3, 40), _paths(3, 30)
    fig = z2_vs_z1_figure([2, 3, 4], ce, dual, sd)
    left, right = fig.axes
    styles_left = {line.get_linestyle() for line in left.lines}
    styles_right = {line.get_linestyle() for line in right.lines}
    assert {"-", ":"} <= styles_left and {"-", "--"} <= styles_right
    # End points are marked at the last sample of each CE path.
    markers = [line for line in left.lines if line.get_marker() == "o"]
    np.testing.assert_allclose(sorted(m.get_xdata()[0] for m in markers), ce[:, -1, 0])
    plt.close(fig)
    with pytest.raises(ValueError, match="dual"):
        z2_vs_z1_figure([2, 3, 4], ce, dual[:2], sd)


def test_other_figures_and_shape_errors():
    t = np.linspace(0, 100, 20)
    fig = slider_figure(t, [2, 4], _paths(2, 20), _paths(2, 20))
    assert len(fig.axes) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="t"):
        slider_figure(t[:5], [2, 4], _paths(2, 20), _paths(2, 20))
    s1 = np.linspace(1, 8, 9)
    fig = sensitivity_figure(s1, s1, -s1, s1, 0 * s1, s2=2.0, fd_s1=s1[:3], fd_dz2=-s1[:3])
    plt.close(fig)
    with pytest.raises(ValueError, match="sd_dz2"):
        sensitivity_figure(s1, s1, -s1, s1, s1[:3])
    x, y = np.linspace(1, 8, 5), np.linspace(1, 8, 4)
    fig = starvation_map_figure(x, y, np.subtract.outer(y, x), np.zeros((4, 5)))
    plt.close(fig)
    with pytest.raises(ValueError, match="ce"):
        starvation_map_figure(x, y, np.zeros((5, 4)), np.zeros((4, 5)))
    fig = trajectory_figure(t, _paths(1, 20)[0], z_star=np.array([2.0, 1.0]), title="x")
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="z"):
        trajectory_figure(t, np.zeros((3, 2)))


def test_theory_figures_picks_the_rows_of_each_figure():
    from ntkdyn.plots.theory import theory_figures

    traj_s1 = np.array([2.0, 3.0, 8.0])
    paths = _paths(3, 21)
    sweep = np.linspace(1, 8, 5)
    z = np.stack([sweep, 1 / sweep], axis=1)
    m1, m2 = np.linspace(1, 8, 4), np.linspace(1, 8, 3)
    kw = dict(
        s2=2.0,
        slider_samples=11,
        traj_s1=traj_s1,
        t=np.linspace(0, 1, 21),
        ce=paths,
        sd=paths,
        ce_dense=paths,
        sd_dense=paths,
        dual=paths,
        sweep_s1=sweep,
        sweep_ce_z=z,
        sweep_ce_dz2=-sweep,
        sweep_sd_z=z,
        sweep_sd_dz2=0 * sweep,
        fd_s1=sweep[:2],
        fd_dz2=-sweep[:2],
        map_s1=m1,
        map_s2=m2,
        map_ce=-np.ones((3, 4)),
        map_sd=np.zeros((3, 4)),
    )
    figs = theory_figures(figure_s1=[3.0, 8.0], slider_s1=[2.0], **kw)
    assert list(figs) == [
        "theory_z2_vs_z1",
        "theory_slider",
        "theory_sensitivity",
        "theory_starvation_map",
    ]
    # two s₁ per panel of the z₂-vs-z₁ figure; the slider shows its first 11 samples only
    left = figs["theory_z2_vs_z1"].axes[0]
    assert len([ln for ln in left.lines if len(ln.get_xdata()) > 1]) == 4
    slider_lines = [ln for ax in figs["theory_slider"].axes for ln in ax.lines]
    assert slider_lines and all(len(ln.get_xdata()) == 11 for ln in slider_lines)
    for fig in figs.values():
        plt.close(fig)
    with pytest.raises(ValueError, match="not among traj_s1"):
        theory_figures(figure_s1=[5.0], slider_s1=[2.0], **kw)
