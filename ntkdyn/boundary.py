"""Decision-boundary geometry of a 2-D classifier: how close to the data and how straight it is.

Gradient starvation shows on the two-moons toy (Pezeshki et al. 2021, §3, Fig. 1–3) as a decision
boundary that is nearly a straight line hugging the data, while Spectral Decoupling bends it around
the moons. These functions turn that picture into numbers from the decision function f sampled on a
grid (``values[r, c] = f(xs[c], ys[r])``, the ``numpy.meshgrid`` / matplotlib convention).

Definitions
-----------
* **Boundary** B: the zero level set {x : f(x) = 0}, approximated by the marching-squares polylines
  of the grid (linear interpolation along cell edges, ``contourpy``), as a set of segments. A
  function linear in x is represented exactly.
* **Distance** of a point p to the boundary: d(p) = min over segments [a, b] of ‖p − proj_[a,b](p)‖
  (the exact Euclidean distance to the polyline).
* ``boundary_min_distance`` = minᵢ d(xᵢ) over the training points;
  ``boundary_mean10_distance`` = mean of the 10 smallest d(xᵢ).
* ``boundary_line_residual``: let B' be the part of B whose second coordinate lies in the data's
  vertical range [minᵢ xᵢ₂, maxᵢ xᵢ₂] (segments clipped exactly at the band's edges). Fit the straight
  line ℓ that minimises the arc-length integral of the squared orthogonal distance (total least
  squares with exact per-segment moments, so the result does not depend on how finely the curve is
  sampled), and report the root mean square distance
  r = sqrt( ∫_{B'} dist(s, ℓ)² ds / ∫_{B'} ds ).
  r = 0 for a straight boundary; for a circular arc of radius R and half-angle φ (symmetric about
  the line's normal) r² = R²[(1 + sin 2φ/(2φ))/2 − (sin φ/φ)²]; for a full circle r = R/√2.
  The fit is orientation-free, so a rotated dataset's diagonal boundary is as "straight" as a
  vertical one.

Quantities that do not exist (no sign change on the grid: the classifier predicts one class
everywhere) are NaN, written as ``null`` in JSON.

:func:`grid` lays out the square grid the decision function is sampled on,
:func:`seed_metrics` reports the metrics of several seeds (each its own boundary against its own
data) as mean and std, :func:`seed_report` adds the training accuracy, the metrics of the
seed-averaged decision function and that function on a figure grid, and :func:`stacked_report`
does all that for trained networks stacked over seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import contourpy
import numpy as np
from jaxtyping import Float

__all__ = [
    "zero_level_set",
    "boundary_distances",
    "line_residual",
    "boundary_metrics",
    "grid",
    "seed_metrics",
    "seed_report",
    "stacked_decision_fn",
    "stacked_report",
]


def _check_grid(xs, ys, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if xs.ndim != 1 or ys.ndim != 1 or xs.size < 2 or ys.size < 2:
        raise ValueError(
            f"xs, ys: expected two 1-D grids of >= 2 coordinates, got shapes {xs.shape} and {ys.shape}"
        )
    if np.any(np.diff(xs) <= 0) or np.any(np.diff(ys) <= 0):
        raise ValueError("xs, ys: grid coordinates must be strictly increasing")
    if values.shape != (ys.size, xs.size):
        raise ValueError(
            f"values: expected shape (len(ys), len(xs)) = {(ys.size, xs.size)} (values[r, c] = f(xs[c], ys[r])), "
            f"got {values.shape}; transpose an 'ij'-indexed grid"
        )
    if not np.all(np.isfinite(values)):
        raise ValueError(
            "values: the decision function has non-finite entries (NaN/inf); check the model output"
        )
    return xs, ys, values


def zero_level_set(
    xs: Float[np.ndarray, " nx"], ys: Float[np.ndarray, " ny"], values: Float[np.ndarray, "ny nx"]
) -> Float[np.ndarray, "m 2 2"]:
    """Segments of the zero level set of a gridded function (marching squares, linear interpolation).

    Args:
        xs: (nx,) increasing first-coordinate grid.
        ys: (ny,) increasing second-coordinate grid.
        values: (ny, nx) samples, ``values[r, c] = f(xs[c], ys[r])``.

    Returns:
        (m, 2, 2) array of segments ``[[a₁, a₂], [b₁, b₂]]`` (m = 0 when f does not change sign).

    Raises:
        ValueError: naming ``xs``/``ys``/``values`` on wrong shapes, unsorted grids or non-finite values.
    """
    xs, ys, values = _check_grid(xs, ys, values)
    lines = contourpy.contour_generator(xs, ys, values, line_type="Separate").lines(0.0)
    segs = [np.stack([line[:-1], line[1:]], axis=1) for line in lines if len(line) >= 2]
    if not segs:
        return np.zeros((0, 2, 2))
    segs = np.concatenate(segs, axis=0)
    return segs[np.linalg.norm(segs[:, 1] - segs[:, 0], axis=1) > 0]


def boundary_distances(
    segments: Float[np.ndarray, "m 2 2"], points: Float[np.ndarray, "n 2"]
) -> Float[np.ndarray, " n"]:
    """Euclidean distance of each point to the nearest segment of the boundary.

    d(p) = min_k ‖p − (a_k + t*(b_k − a_k))‖ with t* = clip(⟨p − a_k, b_k − a_k⟩ / ‖b_k − a_k‖², 0, 1).

    Args:
        segments: (m, 2, 2) boundary segments (from :func:`zero_level_set`).
        points: (n, 2) points.

    Returns:
        (n,) distances; all NaN if there are no segments.

    Raises:
        ValueError: naming ``points`` or ``segments`` on wrong shapes.
    """
    points = np.asarray(points, dtype=np.float64)
    segments = np.asarray(segments, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points: expected shape (n, 2), got {points.shape}")
    if segments.ndim != 3 or segments.shape[1:] != (2, 2):
        raise ValueError(f"segments: expected shape (m, 2, 2), got {segments.shape}")
    if segments.shape[0] == 0:
        return np.full(points.shape[0], np.nan)
    a, b = segments[:, 0], segments[:, 1]
    ab = b - a
    out = np.empty(points.shape[0])
    for start in range(0, points.shape[0], 256):  # bounded memory: 256 × m at a time
        p = points[start : start + 256, None, :]
        t = np.clip(np.sum((p - a) * ab, axis=-1) / np.sum(ab * ab, axis=-1), 0.0, 1.0)
        d = np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)
        out[start : start + 256] = d.min(axis=1)
    return out


def _clip_band(segments: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Clip segments to the band lo ≤ x₂ ≤ hi (exactly, by linear interpolation)."""
    a, b = segments[:, 0].copy(), segments[:, 1].copy()
    # Orient every segment upwards in x₂, then cut at the band edges.
    flip = a[:, 1] > b[:, 1]
    a[flip], b[flip] = segments[flip, 1], segments[flip, 0]
    keep = (b[:, 1] >= lo) & (a[:, 1] <= hi)
    a, b = a[keep], b[keep]
    dy = b[:, 1] - a[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        t_lo = np.where(dy > 0, (lo - a[:, 1]) / dy, 0.0)
        t_hi = np.where(dy > 0, (hi - a[:, 1]) / dy, 1.0)
    t0 = np.clip(t_lo, 0.0, 1.0)
    t1 = np.clip(t_hi, 0.0, 1.0)
    a2 = a + t0[:, None] * (b - a)
    b2 = a + t1[:, None] * (b - a)
    out = np.stack([a2, b2], axis=1)
    return out[np.linalg.norm(out[:, 1] - out[:, 0], axis=1) > 0]


def line_residual(segments: Float[np.ndarray, "m 2 2"], y_range: tuple[float, float]) -> float:
    """RMS orthogonal distance of the boundary within a horizontal band to its best straight line.

    The line minimises ∫ dist(s, ℓ)² ds over the clipped boundary (arc length s), computed from the
    exact first and second moments of each segment: for a segment [a, b] of length L,
    ∫ x ds = L (a + b)/2 and ∫ x xᵀ ds = L (a aᵀ + b bᵀ + (a bᵀ + b aᵀ)/2)/3. The best line passes
    through the centroid along the principal direction; the residual² is the smallest eigenvalue of
    the arc-length covariance.

    Args:
        segments: (m, 2, 2) boundary segments.
        y_range: (lo, hi), the band of second coordinates kept (the data's vertical range).

    Returns:
        The residual r ≥ 0 (NaN if no boundary lies in the band).

    Raises:
        ValueError: naming ``y_range`` if lo > hi, or ``segments`` on a wrong shape.
    """
    segments = np.asarray(segments, dtype=np.float64)
    if segments.ndim != 3 or segments.shape[1:] != (2, 2):
        raise ValueError(f"segments: expected shape (m, 2, 2), got {segments.shape}")
    lo, hi = float(y_range[0]), float(y_range[1])
    if not lo <= hi:
        raise ValueError(f"y_range: expected (lo, hi) with lo <= hi, got {y_range!r}")
    segs = _clip_band(segments, lo, hi) if segments.shape[0] else segments
    if segs.shape[0] == 0:
        return float("nan")
    a, b = segs[:, 0], segs[:, 1]
    length = np.linalg.norm(b - a, axis=1)
    total = length.sum()
    mean = (length[:, None] * (a + b) / 2).sum(0) / total
    a, b = a - mean, b - mean  # centred moments: no cancellation for nearly straight boundaries
    cov = (
        length[:, None, None]
        * (
            a[:, :, None] * a[:, None, :]
            + b[:, :, None] * b[:, None, :]
            + (a[:, :, None] * b[:, None, :] + b[:, :, None] * a[:, None, :]) / 2
        )
        / 3
    ).sum(0) / total
    return float(np.sqrt(max(np.linalg.eigvalsh(cov)[0], 0.0)))


def boundary_metrics(
    xs: Float[np.ndarray, " nx"],
    ys: Float[np.ndarray, " ny"],
    values: Float[np.ndarray, "ny nx"],
    points: Float[np.ndarray, "n 2"],
    *,
    k: int = 10,
) -> dict[str, float]:
    """``boundary_min_distance``, ``boundary_mean{k}_distance`` and ``boundary_line_residual``.

    See the module docstring for the definitions. The band of the line fit is the vertical range of
    ``points``.

    Args:
        xs: (nx,) grid of the first coordinate.
        ys: (ny,) grid of the second coordinate.
        values: (ny, nx) decision function, ``values[r, c] = f(xs[c], ys[r])``.
        points: (n, 2) training points.
        k: how many closest points the mean distance averages (the paper-style metric uses 10).

    Returns:
        dict with float values (NaN where the boundary does not exist).

    Raises:
        ValueError: naming the argument on wrong shapes, non-finite values or k outside [1, n].
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        raise ValueError(f"points: expected shape (n, 2) with n >= 1, got {points.shape}")
    if not 1 <= k <= points.shape[0]:
        raise ValueError(f"k: expected 1 <= k <= n = {points.shape[0]}, got {k}")
    segs = zero_level_set(xs, ys, values)
    d = np.sort(boundary_distances(segs, points))
    return {
        "boundary_min_distance": float(d[0]),
        f"boundary_mean{k}_distance": float(d[:k].mean()),
        "boundary_line_residual": line_residual(segs, (points[:, 1].min(), points[:, 1].max())),
    }


def grid(
    size: int, lim: float
) -> tuple[Float[np.ndarray, " size"], Float[np.ndarray, " size"], Float[np.ndarray, "m 2"]]:
    """A square evaluation grid over [−lim, lim]²: its axes and its m = size² points.

    ``points[r * size + c] = (xs[c], ys[r])`` (``numpy.meshgrid`` order), so the decision function
    at ``points`` reshaped to (size, size) is the ``values`` of :func:`boundary_metrics`.

    Args:
        size: points per axis, ≥ 2.
        lim: half-width of the square, > 0.

    Returns:
        ``(xs, ys, points)``: xs = ys = linspace(−lim, lim, size) (float64, separate arrays) and
        the (size², 2) float32 points.

    Raises:
        ValueError: naming ``size`` or ``lim`` when out of range.
    """
    if int(size) != size or size < 2:
        raise ValueError(f"size: expected an integer >= 2 points per axis, got {size!r}")
    if not (np.isfinite(lim) and lim > 0):
        raise ValueError(f"lim: expected a finite half-width > 0, got {lim!r}")
    xs = np.linspace(-lim, lim, int(size))
    gx, gy = np.meshgrid(xs, xs)
    return xs, xs.copy(), np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def seed_metrics(
    xs: Float[np.ndarray, " nx"],
    ys: Float[np.ndarray, " ny"],
    values: Float[np.ndarray, "S ny nx"],
    points: Float[np.ndarray, "S n 2"],
    *,
    k: int = 10,
) -> dict[str, float]:
    """Mean and std over S seeds of :func:`boundary_metrics`, seed s's boundary on seed s's data.

    For every metric m of :func:`boundary_metrics`: ``m`` = (1/S) Σ_s m_s and ``m_std`` =
    √((1/S) Σ_s (m_s − m)²) (population std); a seed without a boundary makes both NaN.

    Args:
        xs: (nx,) grid of the first coordinate.
        ys: (ny,) grid of the second coordinate.
        values: (S, ny, nx) decision functions, ``values[s, r, c] = f_s(xs[c], ys[r])``.
        points: (S, n, 2) training points of each seed.
        k: as :func:`boundary_metrics`.

    Returns:
        ``{"boundary_min_distance", "boundary_min_distance_std", ...}`` in the order of
        :func:`boundary_metrics`, each metric followed by its std.

    Raises:
        ValueError: naming ``values`` or ``points`` when their seed axes differ or are empty, and
            as :func:`boundary_metrics`.
    """
    values = np.asarray(values)
    points = np.asarray(points)
    if values.ndim != 3 or points.ndim != 3 or values.shape[0] != points.shape[0]:
        raise ValueError(
            f"values, points: expected (S, ny, nx) and (S, n, 2) with one S, got {values.shape} "
            f"and {points.shape}"
        )
    if values.shape[0] == 0:
        raise ValueError("values: expected at least one seed, got S = 0")
    per_seed = [boundary_metrics(xs, ys, v, p, k=k) for v, p in zip(values, points, strict=True)]
    out: dict[str, float] = {}
    for key in per_seed[0]:
        arr = np.asarray([m[key] for m in per_seed], np.float64)
        out[key], out[f"{key}_std"] = float(arr.mean()), float(arr.std())
    return out


def seed_report(
    decision_fn: Callable[[np.ndarray], np.ndarray],
    train_logits: Float[np.ndarray, "S n"],
    points: Float[np.ndarray, "S n 2"],
    labels: Float[np.ndarray, "S n"],
    *,
    lim: float = 2.0,
    grid_size: int = 100,
    metric_grid_size: int = 201,
    k: int = 10,
) -> tuple[dict[str, Any], Float[np.ndarray, "grid_size grid_size"]]:
    """The boundary report of S seeds' classifiers, and their mean decision function for figures.

    ``train_accuracy`` = mean over seeds of the fraction of yᵢ f_s(xᵢ) > 0 (with its population
    std ``train_accuracy_std``); :func:`seed_metrics` on a ``metric_grid_size``² grid over
    [−lim, lim]² (each seed's boundary against its own data); under ``averaged``,
    :func:`boundary_metrics` of the seed-mean decision function against seed 0's data.

    Args:
        decision_fn: ``points (m, 2) -> (S, m)``, every seed's decision function at the points.
        train_logits: (S, n) every seed's f on its own training points.
        points: (S, n, 2) the training points.
        labels: (S, n) labels in {−1, +1}.
        lim: half-width of the grids.
        grid_size: points per axis of the figure grid.
        metric_grid_size: points per axis of the (finer) metric grid.
        k: as :func:`boundary_metrics`.

    Returns:
        ``(metrics, mean_values)``: mean_values (grid_size, grid_size) on :func:`grid`'s layout.

    Raises:
        ValueError: naming ``train_logits`` or ``labels`` when their shape is not (S, n) of
            ``points``, and as :func:`seed_metrics`.
    """
    points, labels = np.asarray(points), np.asarray(labels)
    train_logits = np.asarray(train_logits)
    if train_logits.shape != points.shape[:2] or labels.shape != points.shape[:2]:
        raise ValueError(
            f"train_logits, labels: expected shape {points.shape[:2]} (S, n) of points, got "
            f"{train_logits.shape} and {labels.shape}"
        )
    S = points.shape[0]
    acc = np.mean(train_logits * labels > 0, axis=1).astype(np.float64)
    metrics: dict[str, Any] = {
        "train_accuracy": float(acc.mean()),
        "train_accuracy_std": float(acc.std()),
    }
    m = metric_grid_size
    mxs, mys, mpts = grid(m, lim)
    fine = np.asarray(decision_fn(mpts)).reshape(S, m, m)
    metrics.update(seed_metrics(mxs, mys, fine, points, k=k))
    metrics["averaged"] = boundary_metrics(mxs, mys, fine.mean(0), points[0], k=k)
    _, _, pts = grid(grid_size, lim)
    values = np.asarray(decision_fn(pts)).reshape(S, grid_size, grid_size).mean(0)
    return metrics, values


def stacked_decision_fn(
    forward: Callable[..., Any], params: Any, model_state: Any
) -> Callable[[np.ndarray], np.ndarray]:
    """``points (m, 2) -> (S, m)`` float64: every seed's ``forward(params, model_state, x)``.

    One ``jit(vmap(forward))`` over the seed axis of the stacked ``params`` and ``model_state``.
    """
    import jax
    import jax.numpy as jnp

    def at(points):
        pts = jnp.asarray(points)
        fn = jax.jit(jax.vmap(lambda p, s: forward(p, s, pts)))
        return np.asarray(fn(params, model_state), dtype=np.float64)

    return at


def stacked_report(
    forward: Callable[..., Any],
    params: Any,
    model_state: Any,
    points: Float[np.ndarray, "S n 2"],
    labels: Float[np.ndarray, "S n"],
    **options: Any,
) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`seed_report` of S trained networks stacked over seeds.

    Args:
        forward: ``forward(params, model_state, x (m, 2)) -> (m,)`` logits of one seed (eval mode).
        params, model_state: stacked over seeds (leading axis S; ``model_state`` may be ``None``).
        points, labels: (S, n, 2) each seed's training points, (S, n) labels in {−1, +1}.
        **options: :func:`seed_report`'s ``lim``, ``grid_size``, ``metric_grid_size``, ``k``.

    Returns:
        As :func:`seed_report`.

    Raises:
        ValueError: as :func:`seed_report`.
    """
    import jax
    import jax.numpy as jnp

    train_logits = jax.vmap(forward)(params, model_state, jnp.asarray(points))
    decision = stacked_decision_fn(forward, params, model_state)
    return seed_report(decision, np.asarray(train_logits), points, labels, **options)
