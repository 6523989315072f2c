"""The two-moons data of the paper's opening experiment (Pezeshki et al. 2021, §3, Fig. 1–3).

Construction (the authors' protocol, built on scikit-learn's ``make_moons`` — re-implemented here
with the same random stream, so no scikit-learn dependency):

1. ``make_moons``: n//2 points on the outer moon (cos t, sin t), t ∈ [0, π], label 0; the other
   n − n//2 on the inner moon (1 − cos t, 1 − sin t − 0.5), label 1; shuffled; Gaussian noise of
   standard deviation ``noise`` added to both coordinates. With ``numpy.random.RandomState(seed)``
   this reproduces ``sklearn.datasets.make_moons(n, noise=noise, random_state=seed)`` exactly.
2. y± = 2y − 1; X ← X − [0.5, 0.3·y±]; X₂ ← X₂ − mean(X₂).
3. Fold each point so that class +1 lies at X₂ ≤ 0 and class −1 at X₂ ≥ 0: X₂ ← −y±·|X₂|.
4. Open (Δ > 0) or close (Δ < 0) the gap: X₂ ← X₂ − y±·Δ. Δ = +0.1 makes the classes separable
   by a margin of about 2Δ; Δ = −0.1 makes them overlap.
5. Swap the columns (the classes are then separated along the first, horizontal, coordinate) and
   optionally rotate: X ← X·R(θ) with R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]].
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

__all__ = ["make_moons", "two_moons"]


def _check(n: int, noise: float) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(
            f"n: expected an integer number of points >= 2 (one per moon at least), got {n!r}"
        )
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise: expected a finite standard deviation >= 0, got {noise!r}")


def make_moons(
    n: int = 100, *, noise: float = 0.0, seed: int
) -> tuple[Float[np.ndarray, "n 2"], np.ndarray]:
    """Two interleaving half circles, identical to scikit-learn's ``make_moons(n, noise=noise, random_state=seed)``.

    Outer moon: (cos t, sin t), t = linspace(0, π, n//2), label 0. Inner moon: (1 − cos t,
    1 − sin t − 0.5), t = linspace(0, π, n − n//2), label 1. The points are shuffled and
    N(0, noise²) noise is added to each coordinate, both drawn from ``RandomState(seed)``.

    Args:
        n: number of points, ≥ 2.
        noise: standard deviation of the Gaussian noise, ≥ 0.
        seed: seed of the ``numpy.random.RandomState`` stream.

    Returns:
        ``(X, y)``: X (n, 2) float64 and y (n,) int64 labels in {0, 1}.

    Raises:
        ValueError: naming ``n`` or ``noise`` when out of range.
    """
    _check(n, noise)
    rng = np.random.RandomState(seed)
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    X = np.vstack(
        [
            np.append(np.cos(t_out), 1.0 - np.cos(t_in)),
            np.append(np.sin(t_out), 1.0 - np.sin(t_in) - 0.5),
        ]
    ).T
    y = np.hstack([np.zeros(n_out, dtype=np.int64), np.ones(n_in, dtype=np.int64)])
    order = np.arange(n)
    rng.shuffle(order)
    X, y = X[order], y[order]
    X = X + rng.normal(scale=noise, size=X.shape)
    return X, y


def two_moons(
    *,
    n: int = 300,
    noise: float = 0.1,
    delta: float = 0.1,
    rotation_deg: float = 0.0,
    seed: int,
) -> tuple[Float[np.ndarray, "n 2"], Float[np.ndarray, " n"]]:
    """The paper's two-moons dataset with gap Δ (see the module docstring for the construction).

    Args:
        n: number of points, ≥ 2 (the paper: 300).
        noise: standard deviation of the ``make_moons`` noise, ≥ 0 (the paper: 0.1).
        delta: Δ; each class is moved away from the other by Δ (the paper: ±0.1).
        rotation_deg: rotation θ of the final data in degrees (the appendix: 45).
        seed: seed of the data (the paper uses the training seed).

    Returns:
        ``(X, y)``: X (n, 2) float32 and signed labels y (n,) float32 in {−1, +1}; class +1 lies
        at X₁ ≤ −Δ and class −1 at X₁ ≥ Δ before the rotation.

    Raises:
        ValueError: naming ``n``, ``noise``, ``delta`` or ``rotation_deg`` when invalid.
    """
    _check(n, noise)
    for name, value in (("delta", delta), ("rotation_deg", rotation_deg)):
        if not np.isfinite(value):
            raise ValueError(f"{name}: expected a finite number, got {value!r}")
    X, y01 = make_moons(n, noise=noise, seed=seed)
    y = 2.0 * y01 - 1.0
    X = X - np.stack([np.full(n, 0.5), 0.3 * y], axis=1)
    X[:, 1] -= X[:, 1].mean()
    X[:, 1] = -y * np.abs(X[:, 1])
    X[:, 1] -= y * delta
    X = X[:, ::-1].copy()
    if rotation_deg != 0.0:
        theta = np.radians(rotation_deg)
        c, s = np.cos(theta), np.sin(theta)
        X = X @ np.array([[c, -s], [s, c]])
    return X.astype(np.float32), y.astype(np.float32)
