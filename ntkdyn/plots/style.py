"""The look shared by every figure: the paper's palette and the axes style (face colour, grid)."""

from __future__ import annotations

from typing import Any

__all__ = ["S1_COLORS", "FACE", "style_axes"]

# The paper's palette for s₁ = 2, 3, 4, 5, 6 (then matplotlib's cycle).
S1_COLORS = ("#3B75AF", "#EF8636", "#529D3E", "#C53932", "#85584E", "#8D69B8", "#D57DBF", "#7F7F7F")

#: Axes face colour of the paper's figures.
FACE = "#F9F9F9"


def style_axes(ax: Any) -> None:
    """Give a matplotlib axes the paper's look: light face and a dashed major grid.

    Args:
        ax: a ``matplotlib.axes.Axes``.
    """
    ax.set_facecolor(FACE)
    ax.grid(True, which="major", linestyle="--", lw=0.7, color="k", alpha=0.3)
