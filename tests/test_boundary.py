"""Decision-boundary metrics on hand-made boundaries with closed-form answers."""

import numpy as np
import pytest

from ntkdyn.boundary import (
    boundary_distances,
    boundary_metrics,
    grid,
    line_residual,
    seed_metrics,
    zero_level_set,
)

G = np.linspace(-2.0, 2.0, 401)
X1, X2 = np.meshgrid(G, G)  # values[r, c] = f(G[c], G[r])


def _points(seed, n=200, scale=1.5):
    return np.random.default_rng(seed).uniform(-scale, scale, size=(n, 2))


def test_tilted_line_is_exact():
    alpha, c = 0.3, 0.25
    normal = np.array([np.cos(alpha), np.sin(alpha)])
    values = normal[0] * X1 + normal[1] * X2 - c
    pts = _points(0)
    m = boundary_metrics(G, G, values, pts)
    d = np.abs(pts @ normal - c)
    np.testing.assert_allclose(boundary_distances(zero_level_set(G, G, values), pts), d, atol=1e-12)
    assert m["boundary_min_distance"] == pytest.approx(d.min(), abs=1e-12)
    assert m["boundary_mean10_distance"] == pytest.approx(np.sort(d)[:10].mean(), abs=1e-12)
    assert m["boundary_line_residual"] == pytest.approx(0.0, abs=1e-9)


def test_full_circle():
    R, centre = 1.2, np.array([0.2, -0.1])
    values = R - np.hypot(X1 - centre[0], X2 - centre[1])
    pts = _points(1)
    segs = zero_level_set(G, G, values)
    np.testing.assert_allclose(
        boundary_distances(segs, pts), np.abs(np.linalg.norm(pts - centre, axis=1) - R), atol=2e-4
    )
    # Band covering the whole circle: every line through the centre fits equally badly, r = R/√2.
    assert line_residual(segs, (-2.0, 2.0)) == pytest.approx(R / np.sqrt(2), rel=1e-4)


@pytest.mark.parametrize("half_height", [0.5, 1.0, 1.5])
def test_circular_arc_closed_form(half_height):
    R, cx = 2.0, 2.5  # only the left arc x1 = cx - R cos(theta) lies on the grid
    values = np.hypot(X1 - cx, X2) - R
    phi = np.arcsin(half_height / R)
    expected = R * np.sqrt((1 + np.sin(2 * phi) / (2 * phi)) / 2 - (np.sin(phi) / phi) ** 2)
    got = line_residual(zero_level_set(G, G, values), (-half_height, half_height))
    assert got == pytest.approx(expected, rel=2e-3)
    # The band is the points' vertical range in boundary_metrics.
    pts = np.array([[-1.0, -half_height], [-1.5, half_height], [-1.2, 0.0]] * 4)
    assert boundary_metrics(G, G, values, pts)["boundary_line_residual"] == pytest.approx(got)


def test_curvier_boundary_has_larger_residual():
    straight = X1 - 0.1
    bent = X1 - 0.1 - 0.4 * np.cos(2 * X2)
    pts = _points(2)
    r0 = boundary_metrics(G, G, straight, pts)["boundary_line_residual"]
    r1 = boundary_metrics(G, G, bent, pts)["boundary_line_residual"]
    assert r0 < 1e-9 < 0.05 < r1


def test_no_sign_change_is_nan():
    m = boundary_metrics(G, G, np.ones_like(X1), _points(3))
    assert all(np.isnan(v) for v in m.values())


def test_custom_k_key():
    m = boundary_metrics(G, G, X1, _points(4), k=3)
    assert set(m) == {"boundary_min_distance", "boundary_mean3_distance", "boundary_line_residual"}


@pytest.mark.parametrize(
    "args, match",
    [
        ((G, G, np.zeros((3, 3)), np.zeros((12, 2))), "values"),
        ((G, G[::-1], X1, np.zeros((12, 2))), "increasing"),
        ((G, G, X1 * np.nan, np.zeros((12, 2))), "non-finite"),
        ((G, G, X1, np.zeros((12, 3))), "points"),
    ],
)
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        boundary_metrics(*args)
    with pytest.raises(ValueError, match="k"):
        boundary_metrics(G, G, X1, np.zeros((4, 2)), k=5)
    with pytest.raises(ValueError, match="y_range"):
        line_residual(np.zeros((1, 2, 2)), (1.0, 0.0))


def test_grid_is_meshgrid_ordered():
    xs, ys, pts = grid(5, 2.0)
    np.testing.assert_array_equal(xs, np.linspace(-2.0, 2.0, 5))
    np.testing.assert_array_equal(ys, xs)
    assert xs is not ys and pts.shape == (25, 2) and pts.dtype == np.float32
    # f evaluated at the points and reshaped (size, size) is values[r, c] = f(xs[c], ys[r])
    f = pts[:, 0] + 10 * pts[:, 1]
    np.testing.assert_allclose(f.reshape(5, 5), xs[None, :] + 10 * ys[:, None], atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        grid(1, 2.0)
    with pytest.raises(ValueError, match="lim"):
        grid(5, 0.0)


def test_seed_metrics_are_mean_and_population_std_of_each_seed():
    """Vertical lines x₁ = c_s: each seed's min distance is minᵢ |x_{s,i,1} − c_s|."""
    shifts = np.array([-0.3, 0.1, 0.4])
    values = np.stack([X1 - c for c in shifts])
    pts = np.stack([_points(s, n=50) for s in range(3)])
    m = seed_metrics(G, G, values, pts, k=5)
    mins = np.array([np.abs(p[:, 0] - c).min() for p, c in zip(pts, shifts, strict=True)])
    assert m["boundary_min_distance"] == pytest.approx(mins.mean(), abs=1e-12)
    assert m["boundary_min_distance_std"] == pytest.approx(mins.std(), abs=1e-12)
    assert m["boundary_line_residual"] == pytest.approx(0.0, abs=1e-9)
    per_seed = [boundary_metrics(G, G, v, p, k=5) for v, p in zip(values, pts, strict=True)]
    assert list(m) == [k for key in per_seed[0] for k in (key, f"{key}_std")]
    for key in per_seed[0]:
        assert m[key] == np.mean([r[key] for r in per_seed])
    # one seed without a boundary: its metrics are NaN, and so are the means
    assert np.isnan(
        seed_metrics(G, G, np.stack([values[0], 1 + 0 * X1]), pts[:2])["boundary_min_distance"]
    )
    with pytest.raises(ValueError, match="values, points"):
        seed_metrics(G, G, values, pts[:2])


def test_seed_report_of_linear_classifiers():
    """f_s(x) = x₁ − c_s: a straight boundary at x₁ = c_s; accuracy and means by hand."""
    from ntkdyn.boundary import seed_report

    cs = np.array([0.0, 0.5])
    rng = np.random.default_rng(0)
    points = rng.uniform(-1.5, 1.5, size=(2, 50, 2))
    labels = np.where(points[..., 0] > 0, 1.0, -1.0)

    def decision(pts):
        return np.stack([pts[:, 0] - c for c in cs])

    train_logits = np.stack([points[s, :, 0] - cs[s] for s in range(2)])
    metrics, values = seed_report(
        decision, train_logits, points, labels, grid_size=11, metric_grid_size=41
    )
    acc = [np.mean(train_logits[s] * labels[s] > 0) for s in range(2)]
    assert metrics["train_accuracy"] == pytest.approx(np.mean(acc))
    assert metrics["train_accuracy_std"] == pytest.approx(np.std(acc))
    assert metrics["boundary_line_residual"] == pytest.approx(0.0, abs=1e-9)
    dmin = [np.min(np.abs(points[s, :, 0] - cs[s])) for s in range(2)]
    assert metrics["boundary_min_distance"] == pytest.approx(np.mean(dmin), abs=1e-6)
    xs, _, _ = grid(11, 2.0)
    np.testing.assert_allclose(values, np.broadcast_to(xs - cs.mean(), (11, 11)), atol=1e-6)
    assert metrics["averaged"]["boundary_line_residual"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="train_logits, labels"):
        seed_report(decision, train_logits[:, :3], points, labels)
