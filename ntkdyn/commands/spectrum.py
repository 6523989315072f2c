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
_DEFAULT_HIDDEN = {"moons": [500], "mnist": [300, 300]}
_QUICK = {"n": 40, "hidden": {"moons": [32], "mnist": [16]}, "top": 5}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to ``parser``."""
    parser.add_argument("--dataset", choices=["moons", "mnist"], default="moons", help="the data")
    parser.add_argument(
        "--model", choices=["mlp", "cnn"], default="mlp", help="network (cnn: mnist only)"
    )
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=None,
        help="MLP hidden widths (default: 500 for moons, 300 300 for mnist; --quick: 32 for "
        "moons, 16 for mnist); CNN channels (default 16 32)",
    )
    parser.add_argument(
        "--n", type=int, default=None, help="number of training examples (default 300; --quick: 40)"
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
        "--batch-size", type=int, default=None, help="NTK batch size (memory bound)"
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="also train the network and its linearization by full-batch GD for this many steps "
        "and draw their feature responses against the theory's prediction (0: off)",
    )
    parser.add_argument(
        "--eta", type=float, default=1e-4, help="GD step on the summed loss (with --train-steps)"
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
        help="a small run of a few seconds: n = 40, hidden 32 (moons) or 16 (mnist), top 5 "
        "(explicit --n, --hidden, --top win)",
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
    if args.top < 1:
        raise ValueError(f"--top: must be >= 1, got {args.top}")
    if args.model == "cnn" and args.dataset != "mnist":
        raise ValueError(
            f"--model: cnn needs image inputs; use --dataset mnist (got --dataset {args.dataset})"
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
    if not math.isfinite(args.eta) or args.eta <= 0:
        raise ValueError(f"--eta: must be a finite step size > 0, got {args.eta}")
    if args.hidden is not None and any(h < 1 for h in args.hidden):
        raise ValueError(f"--hidden: widths must be >= 1, got {args.hidden}")


def load_data(dataset: str, n: int, seed: int, *, delta: float = 0.1, noise: float = 0.1):
    """Inputs and ±1 labels of a named dataset.

    Args:
        dataset: ``"moons"`` (the paper's two-moons toy) or ``"mnist"`` (a random sample of the
            embedded MNIST subset, pixels /255, label +1 for digits < 5, −1 otherwise).
        n: number of examples.
        seed: sample seed.
        delta, noise: two-moons settings.

    Returns:
        ``(x, y)``: x (n, 2) or (n, 28, 28) float32, y (n,) float ±1.

    Raises:
        ValueError: naming ``dataset`` or ``n``.
    """
    import numpy as np

    if dataset == "moons":
        from ntkdyn.data.moons import two_moons

        x, y = two_moons(n=n, noise=noise, delta=delta, seed=seed)
        return np.asarray(x, np.float32), np.asarray(y, np.float64)
    if dataset == "mnist":
        from ntkdyn.data.mnist import load_mnist

        data = load_mnist(source="embedded")
        if n > data.n_images:
            raise ValueError(
                f"--n: the embedded MNIST subset has {data.n_images} images, got n={n}"
            )
        idx = np.random.default_rng(seed).choice(data.n_images, size=n, replace=False)
        x = data.images[idx].astype(np.float32) / 255.0
        y = np.where(data.labels[idx] < 5, 1.0, -1.0)
        return x, y
    raise ValueError(f"dataset: expected 'moons' or 'mnist', got {dataset!r}")


def build_model(model: str, dataset: str, hidden: list[int] | None, seed: int):
    """The ``(apply_fn, params)`` of the requested network, initialised from ``seed`` (float32 weights).

    Args:
        model: ``"mlp"`` (ReLU MLP, LeCun-normal weights, zero biases) or ``"cnn"``.
        dataset: ``"moons"`` (2 inputs) or ``"mnist"`` (28 × 28).
        hidden: MLP widths / CNN channels (``None``: the dataset's default).
        seed: initialisation seed.

    Returns:
        ``(apply_fn, params)``.
    """
    import jax

    from ntkdyn.models.cnn import init_cnn
    from ntkdyn.models.mlp import init_mlp

    key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
    if model == "cnn":
        return init_cnn(key, 1, hidden or [16, 32])
    in_features = 2 if dataset == "moons" else 28 * 28
    return init_mlp(key, in_features, hidden if hidden is not None else _DEFAULT_HIDDEN[dataset])


def analyse(
    apply_fn, params, x, y, *, lam_ce: float, lam_sd: float, top: int, method, batch_size=None
) -> tuple[dict[str, Any], Any]:
    """Spectrum, alignment, fixed points and starvation by the top direction, as arrays to write.

    The work is :func:`ntkdyn.analysis.analyse` with a CE and an SD prediction on one spectrum.

    Args:
        apply_fn, params: the network at θ₀.
        x, y: inputs and ±1 labels.
        lam_ce: λ of the CE system (sum-form weight decay).
        lam_sd: λ of the SD system (sum-form logit penalty).
        top: number of leading directions in the summary.
        method: :class:`ntkdyn.NTKMethod` (``STRUCTURED`` needs a dense network: no fallback).
        batch_size: NTK batch size.

    Returns:
        ``(arrays, analysis)``: a dict of NumPy arrays ``s``, ``alignment``, ``U_top`` (n, top),
        ``z_ce``, ``z_sd``, ``dz_ds1_ce`` (∂z_j*/∂s₁ for all j), ``dz_ds1_sd``, ``starvation_top_ce``
        (top × top block of ∂z_j*/∂s_i), and the :class:`ntkdyn.analysis.SpectrumAnalysis`.
    """
    import numpy as np

    from ntkdyn.analysis import analyse as analyse_spectrum
    from ntkdyn.dynamics import ce_field, sd_field

    result = analyse_spectrum(
        apply_fn,
        params,
        x,
        y,
        predictions={"ce": (ce_field, lam_ce), "sd": (sd_field, lam_sd)},
        method=method,
        batch_size=batch_size,
    )
    ce, sd = result.predictions["ce"], result.predictions["sd"]
    M_ce, M_sd = np.asarray(ce.starvation), np.asarray(sd.starvation)
    k = min(top, result.spectrum.s.shape[0])
    return {
        "s": np.asarray(result.spectrum.s),
        "alignment": np.asarray(result.alignment),
        "U_top": np.asarray(result.spectrum.U[:, :k]),
        "z_ce": np.asarray(ce.z_star),
        "z_sd": np.asarray(sd.z_star),
        "dz_ds1_ce": M_ce[:, 0],
        "dz_ds1_sd": M_sd[:, 0],
        "starvation_top_ce": M_ce[:k, :k],
    }, result


def run(args: argparse.Namespace) -> int:
    """Compute the spectrum and write the run directory; prints a short summary."""
    args = _resolve(args)
    _check(args)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.plots.spectrum import spectrum_figure
    from ntkdyn.runs import RunDir
    from ntkdyn.tangent import NTKMethod

    x, y = load_data(args.dataset, args.n, args.seed, delta=args.delta, noise=args.noise)
    apply_fn, params = build_model(args.model, args.dataset, args.hidden, args.seed)
    # The float32 initialisation is evaluated in float64: a float32 Gram only resolves s_j/s_1 down
    # to ≈ √(n·ε₃₂), which would truncate most of the spectrum.
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = x.astype(np.float64)
    lam_ce, lam_sd = args.n * args.weight_decay, 2.0 * args.sd_coef
    res, analysis = analyse(
        apply_fn,
        params,
        x,
        y,
        lam_ce=lam_ce,
        lam_sd=lam_sd,
        top=args.top,
        method=NTKMethod[_METHODS[args.method]],
        batch_size=args.batch_size,
    )
    d, k = res["s"].shape[0], min(args.top, res["s"].shape[0])
    starved = [j for j in range(1, d) if res["dz_ds1_ce"][j] < 0]
    out = RunDir(args.out)
    config = {
        k_: v for k_, v in vars(args).items() if not k_.startswith("_")
    }  # write_config turns paths into strings
    config.update(lam_ce=lam_ce, lam_sd=lam_sd)
    out.write_config(config)
    out.write_metrics(
        {
            "j": j + 1,
            "s": res["s"][j],
            "alignment": res["alignment"][j],
            "z_ce": res["z_ce"][j],
            "z_sd": res["z_sd"][j],
            "dz_ds1_ce": res["dz_ds1_ce"][j],
            "dz_ds1_sd": res["dz_ds1_sd"][j],
        }
        for j in range(d)
    )
    results = {
        "dataset": args.dataset,
        "model": args.model,
        "n": args.n,
        "d": d,
        "ntk_method": args.method,
        "ntk_method_chosen_by": args.method_chosen_by,
        "lam_ce": lam_ce,
        "lam_sd": lam_sd,
        "s": res["s"].tolist(),
        "alignment": res["alignment"].tolist(),
        "top": {
            key: res[key][:k].tolist()
            for key in ("s", "alignment", "z_ce", "z_sd", "dz_ds1_ce", "dz_ds1_sd")
        },
        "s1_over_s2": float(res["s"][0] / res["s"][1]) if d > 1 else None,
        "starved_by_top_ce": len(starved),
        "starved_by_top_sd": int(np.sum(res["dz_ds1_sd"][1:] < -1e-8)),
        "max_abs_dz_ds1_sd": float(np.max(np.abs(res["dz_ds1_sd"]))),
    }
    out.write_results(results)
    out.write_npz("spectrum.npz", **res)
    fig = spectrum_figure(
        res["s"],
        res["alignment"],
        top=max(k, 1),
        n=args.n,
        title=f"{args.dataset}, {args.model}, n = {args.n}: spectrum of $Y\\Phi$ at init",
    )
    out.save_figure(fig, "spectrum")  # closes the figure
    rows = [
        "| j | s_j | abs(u_j^T 1) | z*_CE | z*_SD | dz_j*/ds_1 (CE) | dz_j*/ds_1 (SD) |",
        "|---|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {j + 1} | {res['s'][j]:.4g} | {res['alignment'][j]:.3f} | {res['z_ce'][j]:.4g} | "
        f"{res['z_sd'][j]:.4g} | {res['dz_ds1_ce'][j]:.3g} | {res['dz_ds1_sd'][j]:.2g} |"
        for j in range(k)
    ]
    summary = (
        f"# Tangent-feature spectrum: {args.dataset}, {args.model}, n = {args.n}, seed {args.seed}\n\n"
        f"NTK method: {args.method} ({args.method_chosen_by}).\n"
        f"d = {d} directions; s1/s2 = {results['s1_over_s2']}; lambda_CE = {lam_ce:.4g}, lambda_SD = {lam_sd:.4g}.\n"
        f"Under CE the strongest feature starves {len(starved)} of the other {d - 1} directions "
        f"(dz_j*/ds_1 < 0); under SD max |dz*/ds_1| = {results['max_abs_dz_ds1_sd']:.1e}.\n\n"
        + "\n".join(rows)
        + "\n"
    )
    if args.train_steps:
        summary += _track(
            args, out, apply_fn, params, x, y, analysis, lam_ce if args.loss == "ce" else lam_sd
        )
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
    """z(t) of real training, of linearized training and of the theory's GD, on the same (U, s, λ).

    All three use full-batch GD with step η on Σ softplus(−y g) plus the regulariser (CE:
    (λ/2)‖θ − θ₀‖²; SD: (λ/2)‖g‖²) with centred outputs g = f − f(θ₀) (Pezeshki et al. 2021,
    Sec. 3; see :mod:`ntkdyn.linearized`). The prediction is :func:`ntkdyn.analysis.predict`, the
    measurements :meth:`ntkdyn.analysis.SpectrumAnalysis.measure`. Linearized training and the
    theory agree up to the truncated directions; real training departs from them as the tangent
    features move.

    Args:
        apply_fn, params: the network at θ₀.
        x, y: training inputs and ±1 labels.
        analysis: the :class:`ntkdyn.analysis.SpectrumAnalysis` at θ₀.
        loss: ``"ce"`` or ``"sd"``.
        lam: λ of that loss (sum form).
        eta, num_steps, save_every: GD settings.

    Returns:
        Dict of NumPy arrays ``t`` (T,), ``z_network``, ``z_linearized``, ``z_theory`` (T, d).
    """
    import numpy as np

    from ntkdyn.analysis import predict
    from ntkdyn.linearized import train_gd
    from ntkdyn.objectives import ERM, SpectralDecoupling, theory_lam

    n = x.shape[0]  # the objective of the theory's λ: mean-form SD coef λ/2, weight decay λ/n
    objective, wd = (ERM(), lam / n) if loss == "ce" else (SpectralDecoupling(coef=lam / 2), 0.0)
    field, lam = theory_lam(objective, num_examples=n, weight_decay=wd)
    kw = dict(
        eta=eta,
        num_steps=num_steps,
        save_every=save_every,
        center=True,
        objective=objective,
        weight_decay=wd,
    )
    net = train_gd(apply_fn, params, x, y, **kw)
    lin = train_gd(apply_fn, params, x, y, linearized=True, **kw)
    theory = predict(
        analysis.spectrum,
        lam,
        field,
        starvation=False,
        eta=eta,
        num_steps=num_steps,
        save_every=save_every,
    )
    return {
        "t": np.asarray(theory.t),
        "z_network": analysis.measure(net.outputs, f0=net.f0, steps=net.steps).z,
        "z_linearized": analysis.measure(lin.outputs, f0=lin.f0, steps=lin.steps).z,
        "z_theory": np.asarray(theory.z),
    }


def _track(args, out, apply_fn, params, x, y, analysis, lam) -> str:
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
        eta=args.eta,
        num_steps=args.train_steps,
        save_every=args.save_every,
    )
    out.write_npz("responses.npz", **tr)
    # Draw the strongest responses at the end of training (the features the run actually learns).
    order = np.argsort(-np.abs(tr["z_theory"][-1]))[:4]
    fig = responses_figure(
        [
            ("network", tr["t"], tr["z_network"]),
            ("linearized", tr["t"], tr["z_linearized"]),
            ("theory (GD in z)", tr["t"], tr["z_theory"]),
        ],
        features=[int(j) for j in sorted(order)],
        title=f"{args.dataset}, {args.model}, {args.loss.upper()} (lambda = {lam:.3g}, eta = {args.eta:g})",
    )
    out.save_figure(fig, "responses")  # closes the figure
    final = {k: tr[k][-1] for k in ("z_network", "z_linearized", "z_theory")}
    err_lin = float(
        np.linalg.norm(final["z_linearized"] - final["z_theory"])
        / np.linalg.norm(final["z_theory"])
    )
    err_net = float(
        np.linalg.norm(final["z_network"] - final["z_theory"]) / np.linalg.norm(final["z_theory"])
    )
    extra = {
        "t_end": float(tr["t"][-1]),
        "rel_err_linearized_vs_theory": err_lin,
        "rel_err_network_vs_theory": err_net,
        "features_drawn": [int(j) + 1 for j in sorted(order)],
    }
    out.write_json("responses.json", extra)
    return (
        f"\nTraining ({args.loss.upper()}, {args.train_steps} GD steps, t = {extra['t_end']:.3g}): final z "
        f"relative error vs theory: linearized {err_lin:.2e}, network {err_net:.2e}.\n"
    )
