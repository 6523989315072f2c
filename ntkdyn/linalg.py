"""Leading singular triplets of a linear operator known only through block products.

For an operator A (n × p) given by ``matmat(V) = A V`` and ``rmatmat(U) = Aᵀ U`` on blocks of
vectors, :func:`truncated_svd` returns the k largest singular triplets A v_j = s_j u_j without
ever forming A (or AᵀA, AAᵀ). It is the solver behind the matrix-free feature spectrum of
:func:`ntkdyn.feature_spectrum` (A = YΦ: ``matmat`` is a block of JVPs, ``rmatmat`` a block of
VJPs), but knows nothing about networks.

Method: thick-restarted block Lanczos with full reorthogonalisation and Rayleigh–Ritz, run on AAᵀ
in the n-space from a randomized start (Halko, Martinsson & Tropp 2011, Alg. 4.4/5.1; Musco &
Musco 2015, Alg. 2; Golub & Van Loan 2013, §10.3; Wu & Simon 2000 for the thick restart). It
tracks t = k + oversampling Ritz pairs and grows the basis by blocks of b ≤ t vectors:

    Q₀ = orth(A Ω)                    Ω ~ N(0, 1)^{p×b}
    K  = [Q₀, Q₁, …],  W = AAᵀK       one ``rmatmat`` then one ``matmat`` per new block
    KᵀAAᵀK = G Θ Gᵀ,  u_j = K g_j,  s_j = √θ_j,  v_j = Aᵀu_j / s_j
    Q_{i+1} = b dominant directions of (I − KKᵀ) R,  R = AAᵀ[u_1 … u_t] − [u_1 … u_t] Θ_t

The Ritz residuals R span (I − KKᵀ) AAᵀ Q_i, so Q_{i+1} is the next block Lanczos block. Since
AAᵀK = W is kept beside K, the Rayleigh–Ritz step and every residual cost no product: the
residual reported for direction j is

    r_j = ‖A v_j − s_j u_j‖ / s_j = ‖AAᵀu_j − s_j² u_j‖ / s_j²,

with v_j = Aᵀu_j / s_j, for which Aᵀu_j − s_j v_j = 0 holds exactly; so r_j bounds the whole
residual of the triplet and |s_j² − σ²| ≤ r_j s_j² for some singular value σ of A. V is the same
combination of the stored blocks Aᵀ Q_i (no extra pass). Converged Ritz vectors are locked (their
residuals are not expanded; the block shrinks once fewer than b are unconverged). When the basis
reaches t + b·depth columns it is restarted from the top-t Ritz vectors, whose products are known.
The block products run in the operator's dtype (a float32 model stays float32); the basis,
Rayleigh–Ritz matrix, orthogonalisation and the small eigenproblem are NumPy float64 on the host
(n × (t + b·depth) doubles: 75 MB at n = 50,000, k = 50, b = 8, depth = 16).

Cost model and defaults. With a network's tangent features every product is a pass over the data,
matrix–matrix even for one vector (a JVP of a dense layer is X·dW), so the cost is the number of
products (``matvecs``, counted per column); the float64 host bookkeeping, O(n·m·t) per iteration
for a basis of m columns, is small beside it. Measured on the Colored MNIST MLP
392 → 300 → 300 → 1 (p = 208,501) at initialisation, A = YΦ, n = 4,000 (the first examples of
the Colored MNIST training environments from full MNIST), oversampling 10 (t = k + 10), products
until every top-k residual is under the tolerance; two start keys where both were run:

    k = 20                                               f32 1e-3   f32 1e-4   f64 1e-6
    b = t = 30 (previous default), depth 8                 332–344    384–392        456
    b = 16, depth 8                                        260–264    294–296    356–360
    b = 12, depth 16                                           228        252        300
    b = 8, depth 16 (default)                              184–200    200–216        248
    b = 8, depth 4 (restarts)                              184–200        216    280–296
    b = 8, depth 2 (restarts)                              200–216    232–248    312–344
    b = 4, depth 16                                        140–148        156    180–188
    k = 50 (n = 4,000)
    b = t = 60 (previous default), depth 8                 650–654    738–740    914–916
    b = 8, depth 16 (default)                              312–328        344    376–392
    b = 8, depth 8                                             328    344–360    408–424

For reference ARPACK (``scipy.sparse.linalg.svds``, single-vector implicitly restarted Lanczos)
needs about 170 products at k = 20, tol 1e-4. Smaller blocks reach a higher Krylov degree for the
same number of products (block Lanczos with b ≪ k converges like single-vector Lanczos once b
exceeds the multiplicity of the wanted values), so b = 8 halves the products of b = k + 10;
b = 4 needs fewer still, but the matrix-free tangent operator pads blocks to multiples of 8
columns, so there b = 8 does the same work per block. Restarting more often (a smaller depth)
costs products; keeping more Ritz vectors at a restart (2t instead of t), weighting the residuals
by 1/θ_j and expanding only the wanted k changed nothing measurable (b = 8: the residuals of any
b unconverged Ritz vectors span the same Lanczos block until locking sets in). ``block_size=None``
gives the previous method (b = t). The counts above are on the Gram matrix's symmetric square
root G^{1/2}, G = YΘY from the float64 dense path (the iteration sees only AAᵀ = G, and a
Gaussian start has the same law), in float64 and in float32; they reproduce the 456 (float64)
and 384 (float32) products of the previous default on the network's operator, where the
default b = 8 took 200, 216 and 248 products (float32 1e-3, 1e-4; float64 1e-6; key 1). One block product
ran at 60–80 GFLOP/s in float32 on two cores (30 ms per JVP column, 41 ms per VJP column at
n = 4,000), i.e. matrix-multiply bound. A float32 operator resolves residuals down to ≈ 5e-8 on
the top directions there, and its singular values agreed with the float64 eigh of the Gram matrix
to 5e-9 relatively.

References:
    N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness", SIAM Review 53
    (2011). C. Musco, C. Musco, "Randomized block Krylov methods for stronger and faster
    approximate singular value decomposition", NeurIPS 2015. G. H. Golub, C. F. Van Loan,
    "Matrix Computations", 4th ed. (2013), §10.3 (block Lanczos). K. Wu, H. Simon, "Thick-restart
    Lanczos method for large symmetric eigenvalue problems", SIAM J. Matrix Anal. Appl. 22 (2000).
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = [
    "BlockOperator",
    "KrylovCheckpoint",
    "KrylovState",
    "OnUnconverged",
    "SVDNotConvergedError",
    "SVDNotConvergedWarning",
    "TruncatedSVD",
    "truncated_svd",
]


class BlockOperator(NamedTuple):
    """A linear operator A (n × p) given by its products with blocks of vectors.

    Attributes:
        matmat: ``V (p, b) -> A V (n, b)``.
        rmatmat: ``U (n, b) -> Aᵀ U (p, b)``.
        shape: ``(n, p)``.
        dtype: the dtype the blocks are passed in (e.g. the model's float32); the outputs may be
            any float dtype.
    """

    matmat: Callable[[Float[Array, "p b"]], Float[Array, "n b"]]
    rmatmat: Callable[[Float[Array, "n b"]], Float[Array, "p b"]]
    shape: tuple[int, int]
    dtype: Any

    @staticmethod
    def from_dense(a: Float[ArrayLike, "n p"]) -> BlockOperator:
        """The operator of an explicit (n, p) matrix (a reference for tests and examples).

        Args:
            a: (n, p) matrix.

        Returns:
            :class:`BlockOperator` with ``matmat = a @ V`` and ``rmatmat = aᵀ @ U``.
        """
        a = jnp.asarray(a)
        if a.ndim != 2:
            raise ValueError(f"a: expected an (n, p) matrix, got shape {a.shape}")
        return BlockOperator(lambda v: a @ v, lambda u: a.T @ u, tuple(a.shape), a.dtype)


class OnUnconverged(enum.Enum):
    """What :func:`truncated_svd` does when the iteration budget ends before the residuals reach tol.

    Attributes:
        WARN: return the result (``converged=False``) and emit a :class:`SVDNotConvergedWarning`.
        RAISE: raise :class:`SVDNotConvergedError` (its ``result`` attribute holds the result).
        IGNORE: return the result flagged ``converged=False``; the caller checks it.
    """

    WARN = "warn"
    RAISE = "raise"
    IGNORE = "ignore"


class SVDNotConvergedWarning(RuntimeWarning):
    """The leading singular triplets did not reach the requested residual tolerance."""


class SVDNotConvergedError(RuntimeError):
    """The leading singular triplets did not reach the requested residual tolerance.

    Attributes:
        result: the unconverged :class:`TruncatedSVD`.
    """

    def __init__(self, message: str, result: TruncatedSVD):
        super().__init__(message)
        self.result = result


class TruncatedSVD(NamedTuple):
    """The k leading singular triplets A v_j ≈ s_j u_j of :func:`truncated_svd` (NumPy float64).

    Attributes:
        U: (n, k) orthonormal left singular vectors, s decreasing (signs arbitrary).
        s: (k,) singular values s₁ ≥ … ≥ s_k.
        V: (p, k) right singular vectors v_j = Aᵀu_j / s_j, or ``None`` unless requested.
        residuals: (k,) r_j = ‖A v_j − s_j u_j‖ / s_j = ‖AAᵀu_j − s_j²u_j‖ / s_j²
            (Aᵀu_j − s_j v_j is exactly zero for this v_j).
        iterations: block applications of AAᵀ performed.
        converged: whether every r_j ≤ tol.
        matvecs: products with A or Aᵀ, counted per vector (a block of b counts b).
    """

    U: Float[np.ndarray, "n k"]
    s: Float[np.ndarray, " k"]
    V: Float[np.ndarray, "p k"] | None
    residuals: Float[np.ndarray, " k"]
    iterations: int
    converged: bool
    matvecs: int


class KrylovState(NamedTuple):
    """The state of :func:`truncated_svd` at the top of a block iteration (NumPy; resumable).

    The random start is used only before the first iteration, so this state (with the same
    operator and settings) continues the iteration exactly as an uninterrupted run would.

    Attributes:
        K: (n, m) orthonormal basis; W: (n, m) AAᵀK; T: (m, m) KᵀAAᵀK.
        Z: (p, m) AᵀK when V is returned, else ``None``.
        new: (n, c) the next block to apply AAᵀ to.
        iterations: block iterations done; matvecs: products done.
    """

    K: np.ndarray
    W: np.ndarray
    T: np.ndarray
    Z: np.ndarray | None
    new: np.ndarray
    iterations: int
    matvecs: int


class KrylovCheckpoint(Protocol):
    """Where :func:`truncated_svd` saves and finds its :class:`KrylovState`.

    ``load()`` returns the state to continue from (``None``: start afresh); ``save(state,
    final)`` is called at the top of every block iteration (``final=False``; it decides how often
    to write) and, with ``final=True``, with the state at the top of the last iteration once the
    iteration stops (a run resumed from it repeats that one iteration and stops).
    """

    def load(self) -> KrylovState | None: ...  # pragma: no cover

    def save(self, state: KrylovState, final: bool) -> None: ...  # pragma: no cover


def _host(out: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """Operator output as float64 NumPy, shape- and finiteness-checked."""
    arr = np.asarray(out, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(
            f"op.{name}: returned shape {arr.shape} for a block that needs {shape}; the operator "
            "must map (p, b) -> (n, b) (matmat) and (n, b) -> (p, b) (rmatmat)"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            f"op.{name}: the model produced non-finite outputs (NaN or inf) in a product; check "
            "the inputs and params for overflow or invalid values"
        )
    return arr


def _check_finite_device(out: Array, shape: tuple[int, int], name: str) -> Array:
    if tuple(out.shape) != shape:
        raise ValueError(
            f"op.{name}: returned shape {tuple(out.shape)} for a block that needs {shape}; the "
            "operator must map (p, b) -> (n, b) (matmat) and (n, b) -> (p, b) (rmatmat)"
        )
    if not bool(jnp.all(jnp.isfinite(out))):
        raise ValueError(
            f"op.{name}: the model produced non-finite outputs (NaN or inf) in a product; check "
            "the inputs and params for overflow or invalid values"
        )
    return out


def _orth(r: np.ndarray, basis: np.ndarray | None, floor: float, limit: int) -> np.ndarray:
    """Orthonormal basis of the part of span(r) orthogonal to ``basis`` (classical Gram–Schmidt
    twice, then an SVD that drops directions of norm ≤ floor), at most ``limit`` columns."""
    if basis is not None and basis.shape[1]:
        for _ in range(2):
            r = r - basis @ (basis.T @ r)
    q, sv, _ = np.linalg.svd(r, full_matrices=False)
    q = q[:, sv > floor][:, :limit]
    if basis is not None and basis.shape[1] and q.shape[1]:
        q = q - basis @ (basis.T @ q)
        q, _ = np.linalg.qr(q)
    return q


def _start(op: BlockOperator, key: Any, k: int, b: int, return_V: bool) -> KrylovState:
    """The state before the first iteration: the orthonormalised range of a random block."""
    n, p = (int(d) for d in op.shape)
    omega = jax.random.normal(key, (p, b), dtype=op.dtype)
    y0 = _host(op.matmat(omega), (n, b), "matmat")
    scale0 = float(np.linalg.norm(y0, 2))
    if scale0 == 0.0:
        raise ValueError(
            "op: the operator is zero on a random block (A Ω = 0); nothing to decompose"
        )
    # Directions of AΩ at rounding level (relative to its norm) lie outside the numerical range.
    q = _orth(y0, None, floor=scale0 * 1e-12 * np.sqrt(max(n, p)), limit=b)
    if q.shape[1] < min(k, b):
        raise ValueError(
            f"k: the operator has numerical rank {q.shape[1]} < k = {k}; ask for at most "
            f"{q.shape[1]} triplets"
        )
    Z = np.zeros((p, 0), dtype=np.dtype(op.dtype)) if return_V else None
    return KrylovState(np.zeros((n, 0)), np.zeros((n, 0)), np.zeros((0, 0)), Z, q, 0, b)


def truncated_svd(
    op: BlockOperator,
    k: int,
    *,
    key: PRNGKeyArray,
    tol: float = 1e-4,
    max_iters: int = 60,
    oversampling: int = 10,
    block_size: int | None = 8,
    depth: int = 16,
    return_V: bool = False,
    on_unconverged: OnUnconverged = OnUnconverged.WARN,
    checkpoint: KrylovCheckpoint | None = None,
) -> TruncatedSVD:
    """The k largest singular triplets of A = ``op`` by block Krylov iteration (module docstring).

    Finds A v_j = s_j u_j, j = 1 … k, s₁ ≥ … ≥ s_k, from products A V and Aᵀ U on blocks of
    b = min(block_size, k + oversampling, n, p) vectors (block Lanczos on AAᵀ tracking the top
    t = min(k + oversampling, n, p) Ritz pairs, thick-restarted), stopping once every residual
    r_j = ‖A v_j − s_j u_j‖ / s_j ≤ ``tol`` or after ``max_iters`` block applications of AAᵀ
    (Halko, Martinsson & Tropp 2011; Musco & Musco 2015). The singular values are then accurate
    to about r_j² s_j / gap_j relatively, the vectors to an angle of about r_j s_j / gap_j.

    Args:
        op: the operator (:class:`BlockOperator`).
        k: how many triplets, 1 ≤ k ≤ min(n, p).
        key: PRNG key of the random start block Ω (p × b, standard normal, in ``op.dtype``).
        tol: residual tolerance for every one of the k triplets (0 < tol < 1). An operator in
            float32 cannot resolve r_j much below ≈ 1e-6 · s₁² / s_j².
        max_iters: budget of block applications of AAᵀ (each costs at most 2b products).
        oversampling: Ritz pairs tracked beyond k (kept at a restart; their residuals feed the
            next block, which makes the convergence of s_k more robust).
        block_size: vectors per block product, b (default 8: half the products of b = t on the
            measurements in the module docstring); ``None`` for b = t = k + oversampling, the
            previous method (fewer, wider products).
        depth: blocks added after a restart before the next one (the basis holds at most
            t + b·depth columns; with b = t and depth = 1, a restarted subspace iteration with
            Ritz residuals).
        return_V: also return V (keeps the p × (t + b·depth) blocks Aᵀ Q in ``op.dtype``).
        on_unconverged: an :class:`OnUnconverged`: what to do if the budget ends first.
        checkpoint: a :class:`KrylovCheckpoint`: continue from its state and save the state at
            every iteration (the result equals an uninterrupted run's bit for bit).

    Returns:
        :class:`TruncatedSVD` (U, s, V, residuals, iterations, converged, matvecs).

    Raises:
        ValueError: naming ``k`` (≤ 0, above min(n, p), or above the numerical rank of A),
            ``tol``, ``max_iters``, ``oversampling``, ``block_size``, ``depth``, ``on_unconverged``,
            ``op`` (bad
            shape) or ``op.matmat``/``op.rmatmat`` (a product is non-finite or mis-shaped).
        SVDNotConvergedError: with ``OnUnconverged.RAISE``, when the residuals miss ``tol``.
    """
    n, p = (int(d) for d in op.shape)
    if n < 1 or p < 1:
        raise ValueError(f"op: shape must be (n, p) with n, p >= 1, got {op.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k: must be an integer number of singular triplets, got {k!r}")
    k = int(k)
    if k <= 0 or k > min(n, p):
        raise ValueError(
            f"k: must satisfy 1 <= k <= min(n, p) = {min(n, p)} for an operator of shape "
            f"({n}, {p}), got k = {k}"
        )
    if not (np.isfinite(tol) and 0 < tol < 1):
        raise ValueError(f"tol: must be a relative residual in (0, 1), got {tol}")
    if int(max_iters) < 1:
        raise ValueError(f"max_iters: must be >= 1 block iteration, got {max_iters}")
    if int(oversampling) < 0:
        raise ValueError(f"oversampling: must be >= 0 extra columns, got {oversampling}")
    if block_size is not None and (isinstance(block_size, bool) or int(block_size) < 1):
        raise ValueError(f"block_size: must be a positive integer or None, got {block_size!r}")
    if int(depth) < 1:
        raise ValueError(f"depth: must be >= 1 Krylov block between restarts, got {depth}")
    if not isinstance(on_unconverged, OnUnconverged):
        raise ValueError(
            f"on_unconverged: pass an OnUnconverged member (WARN, RAISE, IGNORE), got "
            f"{on_unconverged!r}"
        )

    t = min(k + int(oversampling), n, p)
    b = t if block_size is None else min(int(block_size), t)
    m_max = min(n, t + int(depth) * b)
    dtype = op.dtype

    state = None if checkpoint is None else checkpoint.load()
    if state is None:
        state = _start(op, key, k, b, return_V)
    K, W, T, Z, new, iterations, matvecs = state
    while True:
        state = KrylovState(K, W, T, Z, new, iterations, matvecs)
        if checkpoint is not None:
            checkpoint.save(state, False)
        # One block application of AAᵀ: rmatmat then matmat.
        zb = _check_finite_device(op.rmatmat(jnp.asarray(new, dtype)), (p, new.shape[1]), "rmatmat")
        wb = _host(op.matmat(zb), (n, new.shape[1]), "matmat")
        matvecs += 2 * new.shape[1]
        iterations += 1
        T = np.block([[T, K.T @ wb], [new.T @ W, new.T @ wb]])
        K = np.concatenate([K, new], axis=1)
        W = np.concatenate([W, wb], axis=1)
        if Z is not None:
            Z = np.concatenate([Z, np.asarray(zb)], axis=1)

        # Rayleigh–Ritz on span(K) for AAᵀ; the top t Ritz pairs are tracked.
        theta, g = np.linalg.eigh(0.5 * (T + T.T))
        theta, g = theta[::-1], g[:, ::-1]
        top = min(t, K.shape[1])
        g_top = g[:, :top]
        u_top = K @ g_top
        w_top = W @ g_top
        resid_vecs = w_top - u_top * theta[:top]
        th = np.maximum(theta[:top], 0.0)
        with np.errstate(divide="ignore"):
            res = np.where(
                th > 0, np.linalg.norm(resid_vecs, axis=0) / np.where(th > 0, th, 1), np.inf
            )
        converged = top >= k and bool(np.all(res[:k] <= tol))
        if converged or iterations >= int(max_iters):
            break
        # Soft locking: Ritz vectors already within tol are not expanded further. The residuals
        # of the others span the next Krylov block; its b dominant directions are kept.
        active = res > tol
        width = min(b, int(active.sum()))
        restart = K.shape[1] + width > m_max
        room = n - (top if restart else K.shape[1])
        new = _orth(
            resid_vecs[:, active],
            u_top if restart else K,
            floor=1e-14 * th[0],
            limit=min(width, room),
        )
        if new.shape[1] == 0:
            # span(K) is invariant under AAᵀ: the Ritz pairs are exact.
            if top < k:
                raise ValueError(
                    f"k: the operator has numerical rank {top} < k = {k}; ask for at most "
                    f"{top} triplets"
                )
            converged = bool(np.all(res[:k] <= tol))
            break
        if restart:
            # Thick restart (Wu & Simon 2000): keep the t tracked Ritz vectors and their products.
            K, W, T = u_top, w_top, np.diag(theta[:top])
            if Z is not None:
                Z = Z @ g_top.astype(Z.dtype)

    if checkpoint is not None:
        checkpoint.save(state, True)
    s = np.sqrt(th[:k])
    U = u_top[:, :k]
    V = None
    if Z is not None:
        V = (Z @ g_top[:, :k].astype(Z.dtype)).astype(np.float64) / s[None, :]
    result = TruncatedSVD(U, s, V, res[:k], iterations, converged, matvecs)
    if not converged and on_unconverged is not OnUnconverged.IGNORE:
        worst = int(np.argmax(res[:k]))
        message = (
            f"truncated_svd: after {iterations} block iterations ({matvecs} products) the largest "
            f"residual among the top k = {k} is r_{worst + 1} = {res[worst]:.3g} > tol = {tol:g}; "
            "raise max_iters or oversampling, or loosen tol"
        )
        if on_unconverged is OnUnconverged.RAISE:
            raise SVDNotConvergedError(message, result)
        warnings.warn(message, SVDNotConvergedWarning, stacklevel=2)
    return result
