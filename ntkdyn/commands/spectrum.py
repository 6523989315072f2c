"""NTK spectrum of any network at initialisation on any dataset, with the starvation the theory predicts.

Data from :func:`ntkdyn.data.registry.load_dataset` (a registered name, a user's ``FILE.npz`` or a
folder with ``metadata.csv``), the network from :func:`ntkdyn.models.registry.build_model` (a
registered name or a user's ``package.module:factory``; batch norm frozen at θ₀ statistics of the
training inputs). At θ₀: the spectrum YΦ = U S Vᵀ of the label-signed tangent features by a
solver object (:class:`ntkdyn.tangent.Dense`, ``eigh`` of the float64 Gram matrix; or
:class:`ntkdyn.tangent.BlockKrylov`, the ``--top`` leading triplets matrix-free by JVPs/VJPs, any
model), the label alignments |u_jᵀ1|, the fixed points z* under CE with weight decay and under
Spectral Decoupling, and the starvation ∂z_j*/∂s₁ of every direction by the strongest one
(Pezeshki et al. 2021, Sec. 3.2), all by :func:`ntkdyn.analysis.spectrum_report`. ``--lam-ce``
and ``--lam-sd`` are the theory's sum-form λ, as in ``ntkdyn theory``
(:func:`ntkdyn.objectives.theory_lam` converts training coefficients: λ = n·wd, λ = 2c).

Examples::

    ntkdyn spectrum --data moons --n 300 --seed 0 --out runs/spectrum_moons
    ntkdyn spectrum --data my.npz --model mypkg.nets:factory --out runs/mine
    ntkdyn spectrum --data celeba --data-dir ../shared/data/celeba-10k --model resnet10 \\
        --width 16 --image-size 64 --n 1000 --top 10 --solver krylov --out runs/spec_celeba

Resuming (``--solver krylov`` or ``--train-steps``; a dense spectrum alone has nothing to
resume): the block Krylov iteration saves its state in ``OUT/checkpoints/spectrum/`` every
``--checkpoint-every`` block iterations, and the training of ``--train-steps`` saves θ and the
outputs recorded so far in ``OUT/checkpoints/network/`` and ``linearized/`` every
``--train-checkpoint-every`` GD steps; both also save on Ctrl-C or SIGTERM. ``--resume``
continues where the run stopped (a dense spectrum is computed again: it is deterministic), with
results.json identical to an uninterrupted run's (timings aside).

Outputs: config.json, results.json (the same keys for every dataset and solver), metrics.jsonl
(one record per direction), spectrum.npz, spectrum.png/.pdf, summary.md; with ``--train-steps``
(full-batch GD of the network and its linearization beside the theory's z(t); on the krylov path
the theory of the truncated system (U_k, s_k), exact for the first step) also responses.*.
``--solver auto`` is dense up to n = 5,000 (the float64 Gram matrix is 8·n² bytes); dense runs
the network in float64 (a float32 Gram resolves s_j/s₁ only down to ≈ √(n·ε₃₂)), krylov in
float32 (half the time; the float64 Rayleigh–Ritz keeps s_j to a relative ≈ r_j²).

Measured on the moons (defaults: seed 0, 2 → 500 → 1, dense): d = 276 of 300, s₁ ≈ 160.1,
s₂ ≈ 150.7, s₁₀ ≈ 2.37; the label-aligned directions are j = 2 and 3 (|u_jᵀ1| ≈ 14.8 and 6.2 of
√300); CE starves 48 of the other 275 (∂z_j*/∂s₁ < −1e-8, up to 0.02), SD none (|·| < 2e-17).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

from ntkdyn.settings import (
    ConfigError,
    add_arguments,
    check,
    from_arguments,
    integer,
    number,
    one_of,
    optional,
)

HELP = __doc__.split("\n\n")[0] + (
    "\n\nWrites singular values, label alignments |u_j^T 1|, a spectrum plot (PNG+PDF) and the "
    "predicted fixed points and starvation dz_j*/ds_1 (CE vs SD). Float64."
)
X64 = True
#: Largest n decomposed densely by ``--solver auto``: the float64 Gram matrix is 8·n² bytes
#: (200 MB at 5,000) and ``eigh`` costs ≈ n³ (≈ 1 min at 5,000 on 2 cores).
DENSE_MAX_N = 5000
#: Input values × examples held per JVP/VJP batch of the matrix-free solver (its working set is
#: a few columns × batch × activations): 1,024 examples of MNIST, ≈ 85 images of 64 × 64 × 3.
_BATCH_VALUES = 2**20
#: The name a run folder records (``checkpoints/command.json``), checked by ``--resume``.
COMMAND = "ntkdyn spectrum"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of ``ntkdyn spectrum``.

    Attributes:
        data: a registered dataset (see ntkdyn.data.registry.DATASETS), a FILE.npz or a folder
            with metadata.csv.
        data_dir: the data's folder (mnist, cmnist: the MNIST files; celeba, folder: required).
        model: a registered model (see ntkdyn.models.registry.MODELS) or package.module:factory.
        n: number of training examples.
        top: number of leading directions k (reported; found by the krylov solver).
        solver: dense (eigh of the n x n Gram matrix, every direction), krylov (the top k
            matrix-free, any model) or auto (dense for n <= 5000).
        seed: seed of the data sample and of the initialisation.
        image_size: side of decoded images (image data).
        hidden: MLP hidden widths or CNN channels (none: the model's default for the data).
        width: base width of a ResNet (none: the model's default).
        lam_ce: the theory's CE weight-decay lambda (sum form, as ntkdyn theory).
        lam_sd: the theory's SD logit-penalty lambda (sum form, as ntkdyn theory).
        model_dtype: dtype the network is evaluated in (auto: float64 dense, float32 krylov).
        residual_tol: krylov: residual r_j every direction must reach (none: 1e-3 for a float32
            model, 1e-4 in float64).
        max_iters: krylov: budget of block iterations.
        cache_features: dense, any model: compute the tangent features once and keep them in
            memory (n x p floats): n per-example gradients instead of (n / batch)^2 blocks of them,
            the fast path for a ResNet on a few thousand images.
        train_steps: also train the network and its linearization by full-batch GD for this many
            steps and draw their feature responses beside the theory's (0: off).
        eta: GD step on the summed loss (none: 1/s_1^2, a fixed fraction of the stability limit).
        loss: training loss with --train-steps.
        save_every: record z(t) every this many steps (must divide --train-steps).
    """

    data: str = "moons"
    data_dir: str | None = None
    model: str = "mlp"
    n: int = 300
    top: int = 10
    solver: str = "auto"
    seed: int = 0
    image_size: int | None = None
    hidden: tuple[int, ...] = ()
    width: int | None = None
    lam_ce: float = 0.06
    lam_sd: float = 0.006
    model_dtype: str = "auto"
    residual_tol: float | None = None
    max_iters: int = 60
    cache_features: bool = False
    train_steps: int = 0
    eta: float | None = None
    loss: str = "ce"
    save_every: int = 50

    def __post_init__(self) -> None:
        """Check every setting before anything runs.

        Raises:
            ConfigError: naming the setting at fault (the flag, on the command line).
        """
        check(
            self,
            {
                "n": integer(2),
                "top": integer(1),
                "solver": one_of("auto", "dense", "krylov"),
                "seed": integer(0),
                "image_size": optional(integer(1)),
                "width": optional(integer(1)),
                "lam_ce": number(0, low_open=True),
                "lam_sd": number(0, low_open=True),
                "model_dtype": one_of("auto", "float32", "float64"),
                "residual_tol": optional(number(0, 1, low_open=True, high_open=True)),
                "max_iters": integer(1),
                "train_steps": integer(0),
                "eta": optional(number(0, low_open=True)),
                "loss": one_of("ce", "sd"),
                "save_every": integer(1),
            },
        )
        if any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError("hidden", f"widths must be integers >= 1, got {self.hidden}")
        if self.top > self.n:
            msg = f"must be <= n = {self.n} (--n), got {self.top}; ask for fewer directions"
            raise ConfigError("top", msg + " or more examples")
        if self.train_steps and self.train_steps % self.save_every:
            msg = f"must divide --train-steps={self.train_steps}, got {self.save_every}"
            raise ConfigError("save_every", msg)

    @property
    def method(self) -> str:
        """The solver that runs: ``dense`` or ``krylov`` (``auto`` resolved on n)."""
        if self.solver != "auto":
            return self.solver
        return "krylov" if self.n > DENSE_MAX_N else "dense"

    @property
    def dtype(self) -> str:
        """The network's dtype (``auto``: float64 for dense, float32 for krylov)."""
        if self.model_dtype != "auto":
            return self.model_dtype
        return "float32" if self.method == "krylov" else "float64"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """``--quick``: 40 examples and the top 5 directions (seconds)."""
        return cls(**{"n": 40, "top": 5, **overrides})


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's flags: one per :class:`Config` field, ``--quick`` and ``--out``."""
    add_arguments(parser, Config())
    parser.add_argument("--dataset", dest="data", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: n 40, top 5 (Config.quick()); other flags override them",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/spectrum"), help="output directory")
    from ntkdyn.runs.resume import add_resume_flags, positive_int

    add_resume_flags(parser, 5, unit="block Krylov iterations")
    parser.add_argument(
        "--train-checkpoint-every", type=positive_int, default=100, metavar="STEPS",
        help="GD steps of --train-steps between checkpoints, rounded up to a multiple of "
        "--save-every (the numbers do not depend on it)",
    )  # fmt: skip


def load_inputs(config: Config, checkpoint: Any = None):
    """The dataset, the model at θ₀ in the run's dtype and the solver, all validated.

    ``checkpoint``: the block Krylov solver's :class:`ntkdyn.linalg.KrylovCheckpoint` (or None).

    Returns:
        ``(data, model, apply_fn, params, x, solver)``.

    Raises:
        InputError: unknown data or model, ``--n``/``--top`` beyond the examples, a model whose
            output is not one logit per example.
        FileNotFoundError: missing data files.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.data.registry import load_dataset
    from ntkdyn.errors import InputError
    from ntkdyn.models.registry import build_model
    from ntkdyn.tangent import BlockKrylov, Dense, DenseStructure, NTKMethod

    data = load_dataset(config.data, n=config.n, seed=config.seed, data_dir=config.data_dir,
                        image_size=config.image_size)  # fmt: skip
    if len(data) < config.n:
        raise InputError(f"--n: {config.data} holds {len(data)} examples, got n={config.n}")
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    model = build_model(config.model, key, data.x, hidden=tuple(config.hidden) or None,
                        width=config.width, stats_x=data.x, dataset=data.name)  # fmt: skip
    p = sum(int(np.size(a)) for a in jax.tree.leaves(model.params))
    if config.method == "krylov" and config.top > p:
        raise InputError(f"--top: the model has p = {p} parameters, at most p directions")
    dtype = jnp.float64 if config.dtype == "float64" else jnp.float32
    params = jax.tree.map(lambda a: a.astype(dtype), model.params)
    x = np.asarray(data.x, np.float64 if config.dtype == "float64" else np.float32)
    per_example = max(1, int(np.prod(x.shape[1:])))
    batch = max(1, min(1024, _BATCH_VALUES // per_example))
    if config.method == "krylov":
        tol = config.residual_tol or (1e-4 if config.dtype == "float64" else 1e-3)
        key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
        solver = BlockKrylov(
            config.top, tol, config.max_iters, key=key, batch_size=batch, checkpoint=checkpoint
        )
    else:
        structured = isinstance(model.apply_fn, DenseStructure)
        method = NTKMethod.STRUCTURED if structured else NTKMethod.JACOBIAN_CONTRACTION
        if config.cache_features and not structured:
            solver = Dense(batch_size=min(batch, 256), cache_features=True)
        else:
            solver = Dense(
                method=method, batch_size=None if structured or batch >= len(x) else batch
            )
    return data, model, model.apply_fn, params, x, solver


def _g(v: float, digits: int = 4) -> str:
    """A figure for a table: ``digits`` significant digits."""
    return format(float(v), f".{digits}g")


def summary_text(config: Config, results: dict, arrays: dict) -> str:
    """summary.md: the setting in sentences, the starvation counts beside magnitudes, a table."""
    from ntkdyn.runs.report import markdown_table

    d, k = results["d"], min(config.top, results["d"])
    krylov = results["residuals"] is not None
    if krylov:
        r = arrays["residuals"]
        how = (
            f"Spectrum: {results['solver']} ({results['method_chosen_by']}); model in "
            f"{results['model_dtype']}; "
            f"{results['iterations']} block iterations, {results['matvecs']} products, "
            f"{'converged' if results['converged'] else 'NOT converged'} (every r_j <= "
            f"{results['residual_tol']:g}: max r_j = {r.max():.2g}); {results['seconds']:.1f} s. "
            f"The theory below is that of the truncated system (U_{d}, s_{d})."
        )
    else:
        how = (
            f"Spectrum: {results['solver']} ({results['method_chosen_by']}; "
            f"{results['ntk_method_chosen_by']}); model in "
            f"{results['model_dtype']}; {results['seconds']:.1f} s. Residuals are not computed "
            "by eigh (the decomposition is exact to rounding)."
        )
    thr = f"{-results['starvation_threshold']:.0e}"
    lines = [
        f"# Tangent-feature spectrum: {config.data}, {config.model}, n = {config.n}, "
        f"seed {config.seed}",
        "",
        f"Data: {results['data_source']}.",
        f"Model: {results['model_description']}.",
    ]
    if results["frozen_batch_stats"]:
        lines.append(
            "Batch norm is evaluated in eval mode with its statistics frozen at θ₀, measured on "
            f"the {config.n} training inputs (per-example tangent features)."
        )
    lines += [how, ""]
    ratio = "—" if results["s1_over_s2"] is None else _g(results["s1_over_s2"])
    lines.append(
        f"d = {d} directions; s_1 = {_g(arrays['s'][0])}, s_1/s_2 = {ratio}; "
        f"λ_CE = {config.lam_ce:g}, λ_SD = {config.lam_sd:g} (the theory's sum form)."
    )
    lines.append(
        f"Feature 1 starves direction j when ∂z_j*/∂s_1 < −{thr} (DECOUPLED_ATOL), for CE and SD "
        "alike."
    )
    for name in ("ce", "sd"):
        count, mag = results[f"starved_by_top_{name}"], results[f"starved_magnitude_{name}"]
        text = f"{name.upper()} starves {count} of {d - 1} directions"
        if mag is not None:
            text += f"; largest ∂z_j*/∂s_1 magnitude {mag[0]:.2g}, smallest {mag[1]:.2g}"
        lines.append(text + ".")
    lines.append(f"Under SD max |∂z_j*/∂s_1| = {results['max_abs_dz_ds1_sd']:.1e}.")
    lines.append("")
    header = ["j", "s_j", *(["r_j"] if krylov else []), "\\|u_jᵀ1\\|", "z*_CE", "z*_SD"]
    header += ["∂z_j*/∂s_1 (CE)", "∂z_j*/∂s_1 (SD)"]
    rows = []
    for j in range(k):
        row = [str(j + 1), _g(arrays["s"][j])]
        row += [f"{arrays['residuals'][j]:.1e}"] if krylov else []
        row += [_g(arrays["alignment"][j]), _g(arrays["z_ce"][j]), _g(arrays["z_sd"][j])]
        row += [_g(arrays["dz_ds1_ce"][j], 3), _g(arrays["dz_ds1_sd"][j], 2)]
        rows.append(row)
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def run_spectrum(
    config: Config, out: Path | str, checkpoints: Any = None, train_checkpoint_every: int = 100
) -> dict[str, Any]:
    """Load, validate, compute and write the run directory; returns results.json's content.

    ``checkpoints``: :class:`ntkdyn.train.checkpoint.Checkpoints` of a resumable run (the block
    Krylov iteration's in its ``spectrum`` stage, the training's in ``network`` and
    ``linearized``), or None; ``train_checkpoint_every``: GD steps between the training's.

    Raises:
        InputError: bad data, model or settings, or an unwritable ``out`` — before computing.
    """
    import numpy as np

    from ntkdyn.analysis import spectrum_report
    from ntkdyn.plots.spectrum import spectrum_figure
    from ntkdyn.runs import RunDir
    from ntkdyn.runs.files import check_writable
    from ntkdyn.runs.resume import deferring
    from ntkdyn.tangent import Dense
    from ntkdyn.train.checkpoint import KrylovCheckpoints

    t_start = time.perf_counter()
    krylov = None
    if checkpoints is not None and config.method == "krylov":
        krylov = KrylovCheckpoints(checkpoints.stage("spectrum"))
    data, model, apply_fn, params, x, solver = load_inputs(config, krylov)
    check_writable(out)
    y = np.asarray(data.signed_y, np.float64)
    method = config.method
    print(f"spectrum: {method}, n = {config.n}, top = {config.top}, model in {config.dtype}; "
          f"{model.description}", flush=True)  # fmt: skip
    with deferring() if krylov else contextlib.nullcontext():  # Ctrl-C: at the next checkpoint
        arrays, res, analysis = spectrum_report(
            apply_fn, params, x, y, solver=solver, lam_ce=config.lam_ce, lam_sd=config.lam_sd,
            top=config.top,
        )  # fmt: skip
    dense = isinstance(solver, Dense)
    chosen = "--solver" if config.solver != "auto" else f"auto: n = {config.n}"
    if config.solver == "auto":
        chosen += f" {'<=' if dense else '>'} {DENSE_MAX_N}"
    ntk = solver.method.name.lower().split("_")[0] if dense else None
    ntk_why = {"structured": "the model is a dense network", "jacobian": "generic, any model"}
    results = {
        "dataset": data.name,
        "data_source": data.source,
        "model": config.model,
        "model_description": model.description,
        "frozen_batch_stats": bool(model.frozen_batch_stats),
        "n": config.n,
        "method": method,
        "method_chosen_by": chosen,
        "model_dtype": config.dtype,
        "residual_tol": None if dense else solver.tol,
        "ntk_method": ntk,
        "ntk_method_chosen_by": ntk_why.get(ntk),
        "lam_ce": config.lam_ce,
        "lam_sd": config.lam_sd,
        "examples_per_environment": None,
        **res,
    }
    if data.environments is not None:
        results["examples_per_environment"] = np.bincount(data.environments).tolist()
    print(f"spectrum: {res['seconds']:.1f} s, s_1 = {arrays['s'][0]:.6g}", flush=True)
    summary = summary_text(config, results, arrays)
    run = RunDir(out)
    run.write_config({**dataclasses.asdict(config), "out": str(out)})
    per_direction = ("s", "alignment", "z_ce", "z_sd", "dz_ds1_ce", "dz_ds1_sd")
    residuals = arrays.get("residuals", [None] * res["d"])
    run.write_metrics(
        {"j": j + 1, "residual": residuals[j], **{key: arrays[key][j] for key in per_direction}}
        for j in range(res["d"])
    )
    run.write_npz("spectrum.npz", **arrays)
    how = f"top {res['d']}, matrix-free" if not dense else "dense"
    title = f"{data.name}, {config.model}, n = {config.n}: spectrum of $Y\\Phi$ at init "
    fig = spectrum_figure(arrays["s"], arrays["alignment"], top=max(min(config.top, res["d"]), 1),
                          n=config.n, title=title + f"({how}, {config.dtype})")  # fmt: skip
    run.save_figure(fig, "spectrum")  # closes the figure
    if config.train_steps:
        train = None
        if checkpoints is not None:
            train = dataclasses.replace(checkpoints, every=int(train_checkpoint_every))
        text, results["train"] = _track(config, run, apply_fn, params, x, y, analysis, train)
        summary += text
    results["seconds_total"] = time.perf_counter() - t_start
    summary += f"\nWhole run: {results['seconds_total']:.1f} s.\n"
    run.write_results(results)
    run.write_text("summary.md", summary)
    print(summary)
    return results


def run(args: argparse.Namespace) -> int:
    """Entry of ``ntkdyn spectrum``: the config from the flags, then :func:`run_spectrum`
    (resumable: ``--resume``, ``--checkpoint-every``)."""
    from ntkdyn.train.checkpoint import resumable

    base = Config.quick() if getattr(args, "quick", False) else Config()
    config = from_arguments(base, args)
    train_every = getattr(args, "train_checkpoint_every", 100)
    if config.method != "krylov" and not config.train_steps:  # seconds: nothing to resume
        run_spectrum(config, args.out)
        return 0
    settings = dataclasses.asdict(config)
    every = getattr(args, "checkpoint_every", 5)
    resume = getattr(args, "resume", False)
    with resumable(args.out, COMMAND, settings, resume=resume, every=every) as checkpoints:
        run_spectrum(config, args.out, checkpoints, train_every)
    return 0


def _track(config: Config, run, apply_fn, params, x, y, analysis, checkpoints=None):
    """Train the network and its linearization (resumable with ``checkpoints``);
    responses.npz/.json/.png and a summary line."""
    import numpy as np

    from ntkdyn.analysis import objective_for_lam, relative_error, training_responses
    from ntkdyn.plots.spectrum import responses_figure

    lam = config.lam_ce if config.loss == "ce" else config.lam_sd
    eta = config.eta if config.eta is not None else 1.0 / float(analysis.spectrum.s[0]) ** 2
    objective, wd = objective_for_lam(config.loss, lam, x.shape[0])
    steps, every = config.train_steps, config.save_every
    tr = training_responses(
        apply_fn, params, x, y, analysis, objective, weight_decay=wd, eta=eta, num_steps=steps,
        save_every=every, log=lambda line: print(line, flush=True), checkpoints=checkpoints,
    )  # fmt: skip
    z = {k: tr[f"z_{k}"] for k in ("network", "linearized", "theory")}
    run.write_npz("responses.npz", t=tr["t"], **{f"z_{k}": v for k, v in z.items()})
    # Draw the strongest responses at the end of training (the features the run actually learns).
    order = sorted(int(j) for j in np.argsort(-np.abs(z["theory"][-1]))[:4])
    d = z["theory"].shape[1]
    truncated = f" (theory on the top {d} directions)" if analysis.truncated else ""
    curves = [(k, tr["t"], v) for k, v in z.items()]
    curves[2] = ("theory (GD in z)" + truncated, tr["t"], z["theory"])
    title = f"{config.data}, n = {x.shape[0]}, {config.loss.upper()} GD (lambda = {lam:.3g}, "
    fig = responses_figure(curves, features=order, title=title + f"eta = {eta:.3g})")
    run.save_figure(fig, "responses")  # closes the figure
    err = {
        "linearized_vs_theory": relative_error(z["linearized"], z["theory"]),
        "network_vs_theory": relative_error(z["network"], z["theory"]),
        "network_vs_linearized": relative_error(z["network"], z["linearized"]),
    }
    extra = {
        "eta": eta,
        "steps": steps,
        "save_every": every,
        "loss": config.loss,
        "lam": lam,
        "directions": d,
        "theory_truncated": bool(analysis.truncated),
        "t_end": float(tr["t"][-1]),
        **{f"rel_err_{k}": float(v[-1]) for k, v in err.items()},
        "rel_err_linearized_vs_theory_t": err["linearized_vs_theory"].tolist(),
        "rel_err_network_vs_theory_t": err["network_vs_theory"].tolist(),
        "max_abs_z_at_step_0": float(max(np.max(np.abs(v[0])) for v in z.values())),
        "seconds_network": tr["seconds_network"],
        "seconds_linearized": tr["seconds_linearized"],
        "features_drawn": [j + 1 for j in order],
    }
    run.write_json("responses.json", extra)
    text = (
        f"\nTraining ({config.loss.upper()}, {steps} full-batch GD steps, eta = {eta:.3g}, "
        f"t = {extra['t_end']:.3g}; network {tr['seconds_network']:.1f} s, linearized "
        f"{tr['seconds_linearized']:.1f} s): final z relative error vs theory{truncated}: "
        f"linearized {err['linearized_vs_theory'][-1]:.2e}, network "
        f"{err['network_vs_theory'][-1]:.2e}; network vs linearized "
        f"{err['network_vs_linearized'][-1]:.2e}.\n"
    )
    return text, extra
