"""NTK spectrum of a network at initialisation on a dataset, with the starvation the theory predicts.

For the two-moons toy (Pezeshki et al. 2021, Sec. 2, Fig. 1: 2 → 500 → 1 ReLU, n = 300, Δ = 0.1)
or an MNIST sample (digits < 5 vs ≥ 5; MLP or CNN) it computes the label-signed tangent features'
spectrum YΦ = U S Vᵀ at θ₀ (empirical NTK, eigh in float64), the label alignment |u_jᵀ1| of each
direction, and from the theory core the fixed points z* under cross-entropy with weight decay and
under Spectral Decoupling, plus the starvation ∂z_j*/∂s₁ of every direction by the strongest one
(Sec. 3.2: a negative value means feature 1 starves feature j).

The losses are the paper's means, (1/n)Σ softplus(−yf) + (wd/2)‖θ‖² and + c·mean(f²); in the
theory's sum form these are λ_CE = n·wd and λ_SD = 2c.

Example::

    ntkdyn spectrum --dataset moons --n 300 --seed 0 --out runs/spectrum_moons

writes config.json, results.json, metrics.jsonl (one record per direction), spectrum.npz,
spectrum.png/.pdf and summary.md (``--quick``: n = 40, hidden 32, top 5, a few seconds). The
empirical NTK method is the structured (layer-wise) one for the MLP and the Jacobian contraction
for the CNN unless ``--method`` says otherwise; the choice is printed and recorded in results.json
(``ntk_method``), and ``--method structured`` with ``--model cnn`` is an error. The computation is
:func:`ntkdyn.analysis.analyse` (spectrum, fixed points, starvation) and, with ``--train-steps``,
:func:`ntkdyn.analysis.predict` beside the measured responses of real and linearized training. Measured on the moons (seed 0, float64 Gram): 276 of 300
directions above the n·ε cut-off, s₁ ≈ 160, s₂ ≈ 151, s₅ ≈ 36, s₁₀ ≈ 2.4 (a steep decay); the
label-aligned directions are j = 2 and 3 (|u_jᵀ1| ≈ 14.8 and 6.2 of √300 ≈ 17.3); under CE
(λ = 0.06) the top direction starves 128 of the other 275 (∂z_j*/∂s₁ < 0), under SD every
∂z_j*/∂s₁ vanishes (|·| < 1e-16). On an MNIST sample (``--dataset mnist``: n = 300,
784 → 300 → 300 → 1, seed 0): d = 300, s₁ ≈ 72 with s₁/s₂ ≈ 3.35, and under CE the top direction
starves 155 of the other 299.

Colored MNIST at dataset scale (``--dataset cmnist``; SPEC §4): the two training environments
(colour flip 0.2 and 0.1, label noise 0.25, 2 × 14 × 14 inputs) of
:func:`ntkdyn.data.colored_mnist.colored_mnist`, pooled in their shuffled order (the first n hold
both environments in equal parts), from the MNIST files in ``--data-dir`` or else the embedded
5k subset (4,166 training images); the model is the paper's MLP 392 → 300 → 300 → 1 with
Xavier-uniform weights and zero biases. ``--spectrum auto`` (the default) decomposes the n × n
Gram matrix when n ≤ 5,000 (200 MB in float64, ``eigh`` in about a minute here) and otherwise
finds the ``--top`` leading triplets matrix-free (:func:`ntkdyn.feature_spectrum` with ``k``:
JVPs/VJPs over batches of 1,024 examples, memory O((n + p)·k), no n × n matrix anywhere, also
not in the measured z(t), which needs only U (n × k) and the recorded outputs). The matrix-free
path runs the model in float32 by default (``--model-dtype auto``): products in float64 cost about
twice as much on these CPUs, and the float64 Rayleigh–Ritz on the host keeps s_j to a relative
≈ r_j², with r_j resolved down to ≈ 1e-6 · s₁²/s_j² (hence ``--residual-tol`` 1e-3 by default
there, 1e-4 in float64). With ``--train-steps`` the theory is that of the truncated system
(U_k, s_k): exact for the first GD step from z = 0 (each u_j is an eigenvector of YΘY), then
departing from linearized training as the dropped directions' margins grow. Measured at
n = 50,000 (``--top 50``): docs/results/spectrum_cmnist_50k.md.

Example::

    ntkdyn spectrum --dataset cmnist --data-dir ../shared/data/mnist --n 50000 --top 50 \
        --train-steps 200 --save-every 10 --out runs/spectrum_cmnist50k
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

HELP = __doc__.split("\n\n")[0] + (
    "\n\nWrites singular values, label alignments |u_j^T 1|, a spectrum plot (PNG+PDF) and the predicted "
    "fixed points and starvation dz_j*/ds_1 (CE vs SD) of the top directions. Float64."
)
X64 = True

_METHODS = {
    "structured": "STRUCTURED",
    "jacobian": "JACOBIAN_CONTRACTION",
    "vector-products": "NTK_VECTOR_PRODUCTS",
}
_DEFAULT_HIDDEN = {"moons": [500], "mnist": [300, 300], "cmnist": [300, 300]}
_QUICK = {"n": 40, "hidden": {"moons": [32], "mnist": [16], "cmnist": [32, 32]}, "top": 5}
#: Largest n decomposed densely by ``--spectrum auto``: the float64 Gram matrix is 8·n² bytes
#: (200 MB at 5,000; 20 GB at 50,000) and ``eigh`` costs ≈ n³ (≈ 1 min at 5,000 on 2 cores).
DENSE_MAX_N = 5000
#: Residual tolerance of the matrix-free path per model dtype: float32 products resolve r_j only
#: down to ≈ 1e-6 · s₁²/s_j².
_RESIDUAL_TOL = {"float32": 1e-3, "float64": 1e-4}
#: GD step on the summed loss when --eta is not given: moons/mnist 1e-4; cmnist 1/s₁², a fixed
#: fraction of the stability limit 8/s₁² of the logistic loss (its Hessian is ≤ ΦᵀΦ/4 + λ), since
#: s₁² grows with n (≈ 2.6e5 at n = 50,000).
_DEFAULT_ETA = 1e-4


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to ``parser``."""
    parser.add_argument(
        "--dataset",
        choices=["moons", "mnist", "cmnist"],
        default="moons",
        help="the data (cmnist: the two Colored MNIST training environments, pooled)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="directory with the MNIST IDX files (mnist, cmnist; default: the embedded 5k subset)",
    )
    parser.add_argument(
        "--model", choices=["mlp", "cnn"], default="mlp", help="network (cnn: mnist only)"
    )
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="MLP hidden widths (default: 500 for moons, 300 300 for mnist and cmnist; --quick: "
        "32 for moons, 16 for mnist, 32 32 for cmnist); CNN channels (default 16 32)",
    )
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="number of training examples (default 300; --quick: 40; cmnist: up to 50,000 with "
        "the full MNIST in --data-dir)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data sample and the initialisation"
    )
    parser.add_argument("--delta", type=float, default=0.1, help="two-moons gap Delta")
    parser.add_argument("--noise", type=float, default=0.1, help="two-moons noise")
    parser.add_argument(
        "--weight-decay", type=float, default=2e-4, help="CE weight decay on the mean loss"
    )
    parser.add_argument(
        "--sd-coef", type=float, default=0.003, help="SD coefficient c of c*mean(f^2)"
    )
    parser.add_argument(
        "--top",
        type=int,
        default=None,
        help="number of leading directions reported (default 10; --quick: 5)",
    )
    parser.add_argument(
        "--method",
        choices=sorted(_METHODS),
        default=None,
        help="empirical NTK method (default: structured for --model mlp, jacobian for --model cnn; "
        "structured needs the dense ReLU MLP)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="NTK batch size (memory bound); matrix-free: examples per JVP/VJP (default 1024)",
    )
    parser.add_argument(
        "--spectrum",
        choices=["auto", "dense", "matrix-free"],
        default="auto",
        help=f"dense: eigh of the n x n Gram matrix (all directions); matrix-free: the --top "
        f"leading directions from JVPs/VJPs (no n x n matrix); auto: dense for n <= {DENSE_MAX_N}",
    )
    parser.add_argument(
        "--model-dtype",
        choices=["auto", "float32", "float64"],
        default="auto",
        help="dtype the network is evaluated in (auto: float64 dense, float32 matrix-free)",
    )
    parser.add_argument(
        "--residual-tol",
        type=float,
        default=None,
        help="matrix-free: residual r_j every direction must reach (default 1e-3 in float32, "
        "1e-4 in float64)",
    )
    parser.add_argument(
        "--max-iters",
        type=int,
        default=None,
        help="matrix-free: budget of block iterations (default: that of ntkdyn.feature_spectrum)",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="also train the network and its linearization by full-batch GD for this many steps "
        "and draw their feature responses against the theory's prediction (0: off)",
    )
    parser.add_argument(
        "--eta",
        type=float,
        default=None,
        help="GD step on the summed loss (with --train-steps; default 1e-4, cmnist 1/s_1^2)",
    )
    parser.add_argument(
        "--loss", choices=["ce", "sd"], default="ce", help="training loss (with --train-steps)"
    )
    parser.add_argument(
        "--save-every", type=int, default=50, help="record z(t) every this many steps"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/spectrum"), help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run of a few seconds: n = 40, hidden 32 (moons), 16 (mnist) or 32 32 "
        "(cmnist), top 5 (explicit --n, --hidden, --top win)",
    )


def _resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in the defaults that depend on --quick, --dataset and --model; record the NTK method."""
    quick = bool(getattr(args, "quick", False))
    if args.n is None:
        args.n = _QUICK["n"] if quick else 300
    if args.top is None:
        args.top = _QUICK["top"] if quick else 10
    if args.hidden is None and args.model == "mlp":
        args.hidden = list((_QUICK["hidden"] if quick else _DEFAULT_HIDDEN)[args.dataset])
    if args.method is None:
        args.method = "structured" if args.model == "mlp" else "jacobian"
        args.method_chosen_by = f"default for --model {args.model}"
    else:
        args.method_chosen_by = "--method"
    if args.spectrum == "auto":
        args.spectrum = "matrix-free" if args.n > DENSE_MAX_N else "dense"
        args.spectrum_chosen_by = (
            f"auto: n = {args.n} {'>' if args.n > DENSE_MAX_N else '<='} {DENSE_MAX_N}"
        )
    else:
        args.spectrum_chosen_by = "--spectrum"
    if args.model_dtype == "auto":
        args.model_dtype = "float32" if args.spectrum == "matrix-free" else "float64"
    if args.residual_tol is None:
        args.residual_tol = _RESIDUAL_TOL[args.model_dtype]
    return args


def _check(args: argparse.Namespace) -> None:
    if args.method == "structured" and args.model != "mlp":
        raise ValueError(
            f"--method: structured needs a dense ReLU MLP (--model mlp), got --model {args.model}; "
            "use --method jacobian or --method vector-products"
        )
    if args.seed < 0:
        raise ValueError(f"--seed: must be >= 0, got {args.seed}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if not math.isfinite(args.delta):
        raise ValueError(f"--delta: must be a finite number, got {args.delta}")
    if not math.isfinite(args.noise) or args.noise < 0:
        raise ValueError(f"--noise: must be a finite number >= 0, got {args.noise}")
    if args.n < 2:
        raise ValueError(f"--n: need at least 2 examples, got {args.n}")
    if args.top < 1 or args.top > args.n:
        raise ValueError(
            f"--top: must satisfy 1 <= top <= n = {args.n} (--n), got {args.top}; ask for fewer "
            "directions or more examples"
        )
    if args.spectrum == "matrix-free" and args.model != "mlp":
        raise ValueError(
            f"--spectrum: matrix-free is wired for --model mlp, got --model {args.model}; use "
            "--spectrum dense"
        )
    if not (math.isfinite(args.residual_tol) and 0 < args.residual_tol < 1):
        raise ValueError(f"--residual-tol: must lie in (0, 1), got {args.residual_tol}")
    if args.max_iters is not None and args.max_iters < 1:
        raise ValueError(f"--max-iters: must be >= 1, got {args.max_iters}")
    if args.data_dir is not None and args.dataset == "moons":
        raise ValueError(
            f"--data-dir: the MNIST files are for --dataset mnist or cmnist, got --dataset moons "
            f"(with --data-dir {args.data_dir})"
        )
    if args.model == "cnn" and args.dataset != "mnist":
        raise ValueError(
            f"--model: cnn needs 28 x 28 images; use --dataset mnist (got --dataset {args.dataset})"
        )
    for name, v in (("--weight-decay", args.weight_decay), ("--sd-coef", args.sd_coef)):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}: must be a finite number > 0, got {v}")
    if args.train_steps < 0:
        raise ValueError(f"--train-steps: must be >= 0, got {args.train_steps}")
    if args.train_steps and (args.save_every < 1 or args.train_steps % args.save_every):
        raise ValueError(
            f"--save-every: must be a positive divisor of --train-steps={args.train_steps}, got {args.save_every}"
        )
    if args.eta is not None and (not math.isfinite(args.eta) or args.eta <= 0):
        raise ValueError(f"--eta: must be a finite step size > 0, got {args.eta}")
    if args.hidden is not None and any(h < 1 for h in args.hidden):
        raise ValueError(f"--hidden: widths must be >= 1, got {args.hidden}")


def load_data(
    dataset: str,
    n: int,
    seed: int,
    *,
    delta: float = 0.1,
    noise: float = 0.1,
    data_dir: Path | str | None = None,
):
    """Inputs and ±1 labels of a named dataset.

    Args:
        dataset: ``"moons"`` (the paper's two-moons toy), ``"mnist"`` (a random sample of MNIST,
            pixels /255, label +1 for digits < 5, −1 otherwise) or ``"cmnist"`` (the first n
            examples of the two Colored MNIST training environments of :func:`cmnist_pool`).
        n: number of examples.
        seed: sample seed.
        delta, noise: two-moons settings.
        data_dir: directory of the MNIST IDX files (``None``: the embedded 5k subset).

    Returns:
        ``(x, y)``: x (n, 2), (n, 28, 28) or (n, 392) float32, y (n,) float ±1.

    Raises:
        ValueError: naming ``dataset`` or ``--n`` (more examples than the data holds).
        FileNotFoundError: ``data_dir`` lacks the MNIST files.
    """
    import numpy as np

    if dataset == "moons":
        from ntkdyn.data.moons import two_moons

        x, y = two_moons(n=n, noise=noise, delta=delta, seed=seed)
        return np.asarray(x, np.float32), np.asarray(y, np.float64)
    if dataset == "mnist":
        data = _mnist(data_dir)
        if n > data.n_images:
            raise ValueError(
                f"--n: the {data.source} MNIST has {data.n_images} images, got n={n}; "
                "lower --n or pass --data-dir with the full MNIST"
            )
        idx = np.random.default_rng(seed).choice(data.n_images, size=n, replace=False)
        x = data.images[idx].astype(np.float32) / 255.0
        y = np.where(data.labels[idx] < 5, 1.0, -1.0)
        return x, y
    if dataset == "cmnist":
        x, y, _ = cmnist_pool(seed, data_dir)
        if n > x.shape[0]:
            raise ValueError(
                f"--n: the Colored MNIST training environments hold {x.shape[0]} images here, got "
                f"n={n}; lower --n or pass --data-dir with the full MNIST (50,000 training images)"
            )
        return x[:n], y[:n]
    raise ValueError(f"dataset: expected 'moons', 'mnist' or 'cmnist', got {dataset!r}")


def _mnist(data_dir):
    from ntkdyn.data.mnist import load_mnist

    if data_dir is None:
        return load_mnist(source="embedded")
    return load_mnist(data_dir, source="files")


def cmnist_pool(seed: int, data_dir: Path | str | None = None):
    """The two Colored MNIST training environments of one restart, pooled (SPEC §4).

    :func:`ntkdyn.data.colored_mnist.colored_mnist` with key ``fold_in(PRNGKey(seed), 0)``:
    the first 5/6 of the MNIST training images shuffled, even positions → environment 1
    (colour flip 0.2), odd → environment 2 (0.1), label noise 0.25, 2 × 14 × 14 inputs /255.
    The pool interleaves the two again (the shuffled order), so its first n examples hold
    ⌈n/2⌉ of environment 1 and ⌊n/2⌋ of environment 2.

    Args:
        seed: restart seed.
        data_dir: directory of the MNIST IDX files (``None``: the embedded 5k subset).

    Returns:
        ``(x, y, info)``: x (N, 392) float32, y (N,) float64 ±1 (label 1 → +1), and a dict with
        the MNIST ``source``/``origin`` and the environment of each example (``env``, 0 or 1).

    Raises:
        FileNotFoundError: ``data_dir`` lacks the MNIST files.
    """
    import jax
    import numpy as np

    from ntkdyn.data.colored_mnist import colored_mnist

    data = _mnist(data_dir)
    envs = colored_mnist(jax.random.fold_in(jax.random.PRNGKey(seed), 0), data.images, data.labels)
    e1, e2 = envs.train
    m = min(e1.labels.shape[0], e2.labels.shape[0])
    parts = []
    for a, b in ((e1.flat, e2.flat), (e1.labels, e2.labels)):
        a, b = np.asarray(a), np.asarray(b)
        mixed = np.stack([a[:m], b[:m]], axis=1).reshape((2 * m,) + a.shape[1:])
        parts.append(np.concatenate([mixed, a[m:], b[m:]]))
    x, labels = parts
    env = np.concatenate(
        [
            np.tile([0, 1], m),
            np.zeros(e1.labels.shape[0] - m, int),
            np.ones(e2.labels.shape[0] - m, int),
        ]
    )
    info = {"source": data.source, "origin": data.origin, "env": env}
    return x.astype(np.float32), np.where(labels > 0.5, 1.0, -1.0), info


def build_model(model: str, dataset: str, hidden: list[int] | None, seed: int):
    """The ``(apply_fn, params)`` of the requested network, initialised from ``seed`` (float32 weights).

    Args:
        model: ``"mlp"`` (ReLU MLP, zero biases; LeCun-normal weights, Xavier-uniform for
            ``cmnist`` as in the Colored MNIST experiments) or ``"cnn"``.
        dataset: ``"moons"`` (2 inputs), ``"mnist"`` (28 × 28) or ``"cmnist"`` (2 · 14 · 14).
        hidden: MLP widths / CNN channels (``None``: the dataset's default).
        seed: initialisation seed.

    Returns:
        ``(apply_fn, params)``.
    """
    import jax

    from ntkdyn.models.cnn import init_cnn
    from ntkdyn.models.mlp import init_mlp, xavier_uniform

    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    if model == "cnn":
        return init_cnn(key, 1, hidden or [16, 32])
    widths = hidden if hidden is not None else _DEFAULT_HIDDEN[dataset]
    if dataset == "cmnist":
        return init_mlp(key, 2 * 14 * 14, widths, 1, kernel_init=xavier_uniform)
    return init_mlp(key, 2 if dataset == "moons" else 28 * 28, widths)


def compute_spectrum(
    apply_fn,
    params,
    x,
    y,
    *,
    method,
    batch_size=None,
    k: int | None = None,
    key=None,
    residual_tol: float = 1e-4,
    max_iters: int | None = None,
) -> tuple[Any, float]:
    """The spectrum of YΦ at θ₀ (:func:`ntkdyn.analysis.analyse` without predictions), timed.

    Args:
        apply_fn, params: the network at θ₀.
        x, y: inputs and ±1 labels.
        method: :class:`ntkdyn.NTKMethod` of the dense path (``STRUCTURED`` needs a dense network).
        batch_size: NTK batch size (matrix-free: examples per JVP/VJP).
        k: ``None`` (dense) or the number of leading directions found matrix-free.
        key: PRNG key of the matrix-free start block (with ``k``).
        residual_tol, max_iters: matrix-free stopping rule (with ``k``).

    Returns:
        ``(analysis, seconds)``: the :class:`ntkdyn.analysis.SpectrumAnalysis` (no predictions;
        ``report`` set on the matrix-free path, which never raises on an unconverged result: the
        flag and residuals go to results.json) and the wall time (the decomposition and one
        forward pass for f(X; θ₀)).
    """
    import time

    from ntkdyn.analysis import analyse as analyse_spectrum
    from ntkdyn.linalg import OnUnconverged

    t0 = time.perf_counter()
    result = analyse_spectrum(
        apply_fn,
        params,
        x,
        y,
        method=method,
        batch_size=batch_size,
        k=k,
        key=key,
        residual_tol=residual_tol,
        max_iters=max_iters,
        on_unconverged=OnUnconverged.IGNORE,
    )
    return result, time.perf_counter() - t0


def spectrum_arrays(analysis, top: int) -> dict[str, Any]:
    """``s``, ``alignment``, ``U_top`` (n, top) and, matrix-free, ``residuals`` as NumPy arrays."""
    import numpy as np

    k_top = min(top, analysis.spectrum.s.shape[0])
    arrays = {
        "s": np.asarray(analysis.spectrum.s),
        "alignment": np.asarray(analysis.alignment),
        "U_top": np.asarray(analysis.spectrum.U[:, :k_top]),
    }
    if analysis.report is not None:
        arrays["residuals"] = np.asarray(analysis.report.residuals)
    return arrays


def predictions(analysis, *, lam_ce: float, lam_sd: float, top: int) -> tuple[dict, Any]:
    """CE and SD fixed points and starvation on the spectrum (truncated when matrix-free).

    :func:`ntkdyn.analysis.predict` (Newton at :func:`ntkdyn.analysis.newton_tolerance`).

    Args:
        analysis: the :class:`ntkdyn.analysis.SpectrumAnalysis` at θ₀.
        lam_ce: λ of the CE system (sum-form weight decay).
        lam_sd: λ of the SD system (sum-form logit penalty).
        top: size of the ``starvation_top_ce`` block.

    Returns:
        ``(arrays, analysis)``: ``z_ce``, ``z_sd``, ``dz_ds1_ce`` (∂z_j*/∂s₁ for all j),
        ``dz_ds1_sd``, ``starvation_top_ce`` (top × top block of ∂z_j*/∂s_i); the analysis with
        its ``predictions`` set.

    Raises:
        SolverError: a fixed point was not found.
    """
    import numpy as np

    from ntkdyn.analysis import predict
    from ntkdyn.dynamics import ce_field, sd_field

    ce = predict(analysis.spectrum, lam_ce, ce_field)
    sd = predict(analysis.spectrum, lam_sd, sd_field)
    M_ce, M_sd = np.asarray(ce.starvation), np.asarray(sd.starvation)
    k_top = min(top, M_ce.shape[0])
    arrays = {
        "z_ce": np.asarray(ce.z_star),
        "z_sd": np.asarray(sd.z_star),
        "dz_ds1_ce": M_ce[:, 0],
        "dz_ds1_sd": M_sd[:, 0],
        "starvation_top_ce": M_ce[:k_top, :k_top],
    }
    return arrays, analysis._replace(predictions={"ce": ce, "sd": sd})


def analyse(
    apply_fn,
    params,
    x,
    y,
    *,
    lam_ce: float,
    lam_sd: float,
    top: int,
    method,
    batch_size=None,
    k: int | None = None,
    key=None,
    residual_tol: float = 1e-4,
    max_iters: int | None = None,
) -> tuple[dict[str, Any], Any, float]:
    """Spectrum, alignment, fixed points and starvation by the top direction, as arrays to write.

    :func:`compute_spectrum` then :func:`predictions` (on the truncated system (U_k, s_k, λ)
    when ``k`` is given).

    Args:
        apply_fn, params: the network at θ₀.
        x, y: inputs and ±1 labels.
        lam_ce, lam_sd: λ of the CE and SD systems (sum form).
        top: number of leading directions in the summary.
        method, batch_size, k, key, residual_tol, max_iters: as :func:`compute_spectrum`.

    Returns:
        ``(arrays, analysis, seconds)``: :func:`spectrum_arrays` and :func:`predictions`'s arrays
        in one dict, the :class:`ntkdyn.analysis.SpectrumAnalysis`, the spectrum's wall time.
    """
    result, seconds = compute_spectrum(
        apply_fn,
        params,
        x,
        y,
        method=method,
        batch_size=batch_size,
        k=k,
        key=key,
        residual_tol=residual_tol,
        max_iters=max_iters,
    )
    arrays = spectrum_arrays(result, top)
    pred, result = predictions(result, lam_ce=lam_ce, lam_sd=lam_sd, top=top)
    return {**arrays, **pred}, result, seconds


def run(args: argparse.Namespace) -> int:
    """Compute the spectrum and write the run directory; prints a short summary."""
    import time

    t_start = time.perf_counter()
    args = _resolve(args)
    _check(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.analysis import DECOUPLED_ATOL, newton_tolerance
    from ntkdyn.plots.spectrum import spectrum_figure
    from ntkdyn.runs import RunDir
    from ntkdyn.tangent import NTKMethod

    x, y = load_data(
        args.dataset, args.n, args.seed, delta=args.delta, noise=args.noise, data_dir=args.data_dir
    )
    apply_fn, params = build_model(args.model, args.dataset, args.hidden, args.seed)
    # Dense path: the float32 initialisation is evaluated in float64, since a float32 Gram only
    # resolves s_j/s_1 down to ≈ √(n·ε₃₂), which would truncate most of the spectrum. The
    # matrix-free path keeps float32 products by default (half the time; the Rayleigh–Ritz and
    # the residuals are float64 on the host).
    dtype = jnp.float64 if args.model_dtype == "float64" else jnp.float32
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    x = x.astype(np.float64 if args.model_dtype == "float64" else np.float32)
    lam_ce, lam_sd = args.n * args.weight_decay, 2.0 * args.sd_coef
    matrix_free = args.spectrum == "matrix-free"
    print(
        f"spectrum: {args.spectrum} ({args.spectrum_chosen_by}), n = {args.n}, top = {args.top}, "
        f"model in {args.model_dtype}",
        flush=True,
    )
    analysis, seconds = compute_spectrum(
        apply_fn,
        params,
        x,
        y,
        method=NTKMethod[_METHODS[args.method]],
        batch_size=args.batch_size,
        k=args.top if matrix_free else None,
        key=jax.random.fold_in(jax.random.PRNGKey(args.seed), 2),
        residual_tol=args.residual_tol,
        max_iters=args.max_iters,
    )
    res = spectrum_arrays(analysis, args.top)
    d, k = res["s"].shape[0], min(args.top, res["s"].shape[0])
    report = analysis.report
    residuals = res.get("residuals")
    print(f"spectrum: {seconds:.1f} s, s_1 = {res['s'][0]:.6g}", flush=True)
    out = RunDir(args.out)
    config = {
        k_: v for k_, v in vars(args).items() if not k_.startswith("_")
    }  # write_config turns paths into strings
    config.update(lam_ce=lam_ce, lam_sd=lam_sd)
    out.write_config(config)
    results = {
        "dataset": args.dataset,
        "model": args.model,
        "n": args.n,
        "d": d,
        "method": args.spectrum,
        "method_chosen_by": args.spectrum_chosen_by,
        "model_dtype": args.model_dtype,
        "seconds": seconds,
        "converged": True if report is None else bool(report.converged),
        "residuals": None if residuals is None else residuals.tolist(),
        "residual_tol": args.residual_tol if matrix_free else None,
        "iterations": None if report is None else int(report.iterations),
        "matvecs": None if report is None else int(report.matvecs),
        "ntk_method": None if matrix_free else args.method,
        "ntk_method_chosen_by": None if matrix_free else args.method_chosen_by,
        "lam_ce": lam_ce,
        "lam_sd": lam_sd,
        "s": res["s"].tolist(),
        "alignment": res["alignment"].tolist(),
        "s1_over_s2": float(res["s"][0] / res["s"][1]) if d > 1 else None,
    }
    if args.dataset == "cmnist":
        results["mnist"] = "embedded 5k subset" if args.data_dir is None else str(args.data_dir)
        results["examples_per_environment"] = [(args.n + 1) // 2, args.n // 2]
    # The spectrum is on disk before the theory runs (at n = 50,000 it is the expensive part).
    out.write_results(results)
    out.write_npz("spectrum.npz", **res)
    pred, analysis = predictions(analysis, lam_ce=lam_ce, lam_sd=lam_sd, top=args.top)
    res.update(pred)
    starved = [j for j in range(1, d) if res["dz_ds1_ce"][j] < 0]
    results.update(
        top={
            key: res[key][:k].tolist()
            for key in ("s", "alignment", "z_ce", "z_sd", "dz_ds1_ce", "dz_ds1_sd")
        },
        newton_tol=newton_tolerance(args.n),
        starved_by_top_ce=len(starved),
        starved_by_top_sd=int(np.sum(res["dz_ds1_sd"][1:] < -DECOUPLED_ATOL)),
        max_abs_dz_ds1_sd=float(np.max(np.abs(res["dz_ds1_sd"]))),
    )
    out.write_metrics(
        {
            "j": j + 1,
            "s": res["s"][j],
            "residual": None if residuals is None else residuals[j],
            "alignment": res["alignment"][j],
            "z_ce": res["z_ce"][j],
            "z_sd": res["z_sd"][j],
            "dz_ds1_ce": res["dz_ds1_ce"][j],
            "dz_ds1_sd": res["dz_ds1_sd"][j],
        }
        for j in range(d)
    )
    out.write_results(results)
    out.write_npz("spectrum.npz", **res)
    how = (
        f"top {d}, matrix-free, {args.model_dtype}" if matrix_free else f"dense, {args.model_dtype}"
    )
    fig = spectrum_figure(
        res["s"],
        res["alignment"],
        top=max(k, 1),
        n=args.n,
        title=f"{args.dataset}, {args.model}, n = {args.n}: spectrum of $Y\\Phi$ at init ({how})",
    )
    out.save_figure(fig, "spectrum")  # closes the figure
    rows = [
        "| j | s_j | r_j | abs(u_j^T 1) | z*_CE | z*_SD | dz_j*/ds_1 (CE) | dz_j*/ds_1 (SD) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {j + 1} | {res['s'][j]:.6g} | "
        f"{'-' if residuals is None else format(residuals[j], '.1e')} | "
        f"{res['alignment'][j]:.3f} | {res['z_ce'][j]:.4g} | "
        f"{res['z_sd'][j]:.4g} | {res['dz_ds1_ce'][j]:.3g} | {res['dz_ds1_sd'][j]:.2g} |"
        for j in range(k)
    ]
    if matrix_free:
        solver = (
            f"Spectrum: matrix-free, top {d} directions ({args.spectrum_chosen_by}), model in "
            f"{args.model_dtype}; {report.iterations} block iterations, {report.matvecs} products, "
            f"converged = {bool(report.converged)} (every r_j <= {args.residual_tol:g}), "
            f"max r_j = {float(np.max(residuals)):.2e}; {seconds:.1f} s. The theory below is that "
            f"of the truncated system (U_{d}, s_{d}).\n"
        )
    else:
        solver = (
            f"Spectrum: dense ({args.spectrum_chosen_by}), model in {args.model_dtype}; "
            f"{seconds:.1f} s.\nNTK method: {args.method} ({args.method_chosen_by}).\n"
        )
    summary = (
        f"# Tangent-feature spectrum: {args.dataset}, {args.model}, n = {args.n}, seed {args.seed}\n\n"
        + solver
        + f"d = {d} directions; s1/s2 = {results['s1_over_s2']}; lambda_CE = {lam_ce:.4g}, lambda_SD = {lam_sd:.4g}.\n"
        f"Under CE the strongest feature starves {len(starved)} of the other {d - 1} directions "
        f"(dz_j*/ds_1 < 0); under SD max |dz*/ds_1| = {results['max_abs_dz_ds1_sd']:.1e}.\n\n"
        + "\n".join(rows)
        + "\n"
    )
    if args.train_steps:
        eta = args.eta
        if eta is None:
            eta = 1.0 / float(res["s"][0]) ** 2 if args.dataset == "cmnist" else _DEFAULT_ETA
        text, results["train"] = _track(
            args,
            out,
            apply_fn,
            params,
            x,
            y,
            analysis,
            lam_ce if args.loss == "ce" else lam_sd,
            eta,
        )
        summary += text
    results["seconds_total"] = time.perf_counter() - t_start
    out.write_results(results)
    summary += f"\nWhole run: {results['seconds_total']:.1f} s.\n"
    out.write_text("summary.md", summary)
    print(summary)
    return 0


def track_responses(
    apply_fn,
    params,
    x,
    y,
    analysis,
    *,
    loss: str,
    lam: float,
    eta: float,
    num_steps: int,
    save_every: int,
) -> dict[str, Any]:
    """:func:`ntkdyn.analysis.training_responses` for the command's ``--loss`` at the theory's λ.

    The objective of λ (sum form) is ERM with weight decay λ/n (CE) or SD with mean coefficient
    λ/2; :func:`ntkdyn.objectives.theory_lam` maps either back to λ.
    """
    from ntkdyn.analysis import training_responses
    from ntkdyn.objectives import ERM, SpectralDecoupling

    n = x.shape[0]
    objective, wd = (ERM(), lam / n) if loss == "ce" else (SpectralDecoupling(coef=lam / 2), 0.0)
    return training_responses(
        apply_fn,
        params,
        x,
        y,
        analysis,
        objective,
        weight_decay=wd,
        eta=eta,
        num_steps=num_steps,
        save_every=save_every,
        log=lambda line: print(line, flush=True),
    )


def _rel_err(z, ref):
    """‖z_t − ref_t‖ / ‖ref_t‖ per saved time (0 where both vanish, at t = 0)."""
    import numpy as np

    num = np.linalg.norm(z - ref, axis=-1)
    den = np.linalg.norm(ref, axis=-1)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), num)


def _track(args, out, apply_fn, params, x, y, analysis, lam, eta) -> tuple[str, dict]:
    import numpy as np

    from ntkdyn.plots.spectrum import responses_figure

    tr = track_responses(
        apply_fn,
        params,
        x,
        y,
        analysis,
        loss=args.loss,
        lam=lam,
        eta=eta,
        num_steps=args.train_steps,
        save_every=args.save_every,
    )
    out.write_npz(
        "responses.npz",
        **{k: v for k, v in tr.items() if not k.startswith("seconds") and k != "lam"},
    )
    # Draw the strongest responses at the end of training (the features the run actually learns).
    order = np.argsort(-np.abs(tr["z_theory"][-1]))[:4]
    d = tr["z_theory"].shape[1]
    truncated = f" (theory on the top {d} directions)" if analysis.truncated else ""
    fig = responses_figure(
        [
            ("network", tr["t"], tr["z_network"]),
            ("linearized", tr["t"], tr["z_linearized"]),
            ("theory (GD in z)" + truncated, tr["t"], tr["z_theory"]),
        ],
        features=[int(j) for j in sorted(order)],
        title=f"{args.dataset}, n = {args.n}, {args.loss.upper()} GD "
        f"(lambda = {lam:.3g}, eta = {eta:.3g})",
    )
    out.save_figure(fig, "responses")  # closes the figure
    err_lin = _rel_err(tr["z_linearized"], tr["z_theory"])
    err_net = _rel_err(tr["z_network"], tr["z_theory"])
    err_net_lin = _rel_err(tr["z_network"], tr["z_linearized"])
    extra = {
        "eta": eta,
        "steps": args.train_steps,
        "save_every": args.save_every,
        "loss": args.loss,
        "lam": lam,
        "directions": d,
        "theory_truncated": bool(analysis.truncated),
        "t_end": float(tr["t"][-1]),
        "rel_err_linearized_vs_theory": float(err_lin[-1]),
        "rel_err_network_vs_theory": float(err_net[-1]),
        "rel_err_network_vs_linearized": float(err_net_lin[-1]),
        "rel_err_linearized_vs_theory_t": err_lin.tolist(),
        "rel_err_network_vs_theory_t": err_net.tolist(),
        "max_abs_z_at_step_0": float(
            max(np.max(np.abs(tr[k][0])) for k in ("z_network", "z_linearized", "z_theory"))
        ),
        "seconds_network": tr["seconds_network"],
        "seconds_linearized": tr["seconds_linearized"],
        "features_drawn": [int(j) + 1 for j in sorted(order)],
    }
    out.write_json("responses.json", extra)
    text = (
        f"\nTraining ({args.loss.upper()}, {args.train_steps} full-batch GD steps, eta = {eta:.3g}, "
        f"t = {extra['t_end']:.3g}; network {tr['seconds_network']:.1f} s, linearized "
        f"{tr['seconds_linearized']:.1f} s): final z relative error vs theory{truncated}: "
        f"linearized {err_lin[-1]:.2e}, network {err_net[-1]:.2e}; network vs linearized "
        f"{err_net_lin[-1]:.2e}.\n"
    )
    return text, extra
