"""Colored MNIST: ERM, IRMv1, V-REx, Spectral Decoupling and the grayscale oracle.

Pezeshki et al. 2021, Sec. 4, Table 1 and Fig. 4, on the environments of Arjovsky et al. 2019
(:mod:`ntkdyn.data.colored_mnist`). A colour predicts the training label (85 %) better than the
digit shape (75 %) and is reversed at test time; ERM learns the colour, SD learns the shape too.

Protocol: an MLP 2·196 → h → h → 1 (Xavier-uniform, zero biases), full-batch Adam on the two
training environments with each method's published recipe (:data:`METHODS`), over 10 seeds
(environments and initialisations); train/test accuracy and the four-input probe of Fig. 4. For ERM
and SD (first seed), z_j(t) = u_jᵀY(f(X; θ_t) − f(X; θ₀)) of the ``--top`` leading directions of YΦ
at θ₀ (matrix-free, all training examples; 1.5 min for k = 30 on 4,166 images, 6–12 min for k = 20
on 50,000, 2 CPU cores) and the theory's starvation matrix ∂z_j*/∂s_i of that spectrum.

Commands::

    ntkdyn cmnist --out runs/cmnist                         # 10 seeds, all five methods
    ntkdyn cmnist --methods sd irm --data-dir ~/data/mnist  # chosen methods, MNIST from files
    ntkdyn cmnist --methods sd --sd.coef 1e-4               # another SD coefficient
    ntkdyn cmnist --sweep --methods sd --out runs/cmnist_sd # coefficient sweep, both selection rules
    ntkdyn cmnist --quick --out /tmp/cmnist                 # smoke test (< 2 min on 2 CPU cores)
    ntkdyn cmnist --seed-layout map@1                       # seeds one after another, one device
    ntkdyn cmnist --data-dir MNIST --seeds 5 --out runs/a                # seeds 0-4 ...
    ntkdyn cmnist --data-dir MNIST --seeds 5 --first-seed 5 --out runs/b # ... and 5-9 elsewhere
    ntkdyn cmnist --merge runs/a runs/b --out runs/cmnist_10             # = one run of seeds 0-9
    ntkdyn cmnist --out runs/cmnist --resume    # continue an interrupted run (same flags)

Without ``--data-dir`` (or ``$NTKDYN_DATA_DIR``) the embedded 5,000-image subset is used;
``--data-source download`` fetches full MNIST. ``--restarts``, ``--first-restart``, ``--max-images``
and ``--spectrum-k`` are the old spellings of ``--seeds``, ``--first-seed``, ``--n`` and ``--top``.

Published accuracies are :data:`PUBLISHED`; measured ones (full MNIST, seeds 0-4 and 5-9 joined
with ``--merge``; the embedded subset) are in ``docs/results/cmnist_full_mnist_10_restarts.md`` and
``docs/results/cmnist_embedded_5k.md``: on full MNIST every method lands within a point or two of
its published train / test accuracy; on the embedded subset (4,166 training images) every method
fits the training set further, IRM's and V-REx's penalties (tuned for 50,000 images) no longer
stop the colour, and SD keeps the digit.

Model selection: every published hyperparameter was tuned on the *test* environment (test-domain
selection), which the reports say; ``--sweep`` selects each method's key coefficient on a held-out
part of the training environments instead, reported beside the test-domain choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from ntkdyn.settings import (
    ConfigError,
    RestartSettings,
    add_arguments,
    check,
    from_arguments,
    integer,
    number,
    one_of,
    optional,
)
from ntkdyn.train.recipes import IRMRecipe, OracleRecipe, Recipe, SDRecipe, VRExRecipe

HELP = __doc__.split("\n\n")[0] + "\n\nPublished protocol by default; --quick for a smoke test."
COMMAND = "ntkdyn cmnist"  # config.json's command, checked by --resume

PROBE_INPUTS: tuple[str, ...] = ("digit_gray", "digit_color", "blank_gray", "blank_color")
#: Methods whose feature responses z(t) are recorded (the paper's Fig. 5 pair).
Z_METHODS: tuple[str, ...] = ("erm", "sd")
#: ``--sweep``: multipliers of the swept coefficient; ERM's l2 (0 when published) takes SWEEP_ERM_L2.
SWEEP_FACTORS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
SWEEP_ERM_L2: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)
SD_LAMBDA = "SD's λ (ERM has no weight decay; CE at λ = 0 has no fixed point)"
#: Curves kept beside z(t): name → the history's metric (prefixed train_/test_).
CURVES = {"loss": "nll", "acc": "acc"}


#: The registry: one entry per method, its published network, optimisation and coefficients.
METHODS: dict[str, Recipe] = {
    "erm": Recipe(300, 1e-4, 1001),
    "irm": IRMRecipe(
        390, 0.0004898536566546834, 501, 190, l2=0.00110794568, penalty_weight=91257.18613115903
    ),
    "vrex": VRExRecipe(256, 1e-3, 501, 100, l2=1e-3, penalty_weight=1e4),
    "sd": SDRecipe(300, 1e-4, 2001, 450, coef=2e-5),
    "oracle": OracleRecipe(83, 2.817e-3, 101, grayscale=True, l2=8.6e-4),
}
LABELS = {m: v.label for m, v in METHODS.items()}

#: Published train / test accuracy (fractions; mean, std over 10 restarts) and probe results.
PUBLISHED: dict[str, dict[str, Any]] = {
    "erm": {"train": (0.911, 0.004), "test": (0.237, 0.008),
            "probe": {"acc": (0.633, 0.239, 0.499, 0.094), "entropy": (0.54, 0.44, 0.63, 0.00)}},
    "irm": {"train": (0.705, 0.006), "test": (0.671, 0.014),
            "probe": {"acc": (0.669, 0.666, 0.497, 0.496), "entropy": (0.60, 0.59, 0.65, 0.64)}},
    "vrex": {"train": (0.715, 0.010), "test": (0.687, 0.009)},
    "sd": {"train": (0.700, 0.009), "test": (0.684, 0.012),
           "probe": {"acc": (0.683, 0.672, 0.500, 0.094), "entropy": (0.66, 0.63, 0.66, 0.41)}},
    "oracle": {"train": (0.735, 0.002), "test": (0.730, 0.004)},
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of ``ntkdyn cmnist``; the defaults are the published protocol.

    Attributes:
        methods: methods to run, in order (erm irm vrex sd oracle, or all)
        seeds: independent restarts (environments and initialisations)
        first_seed: index of the first seed, to split a protocol over jobs (join with --merge)
        seed: root PRNG seed
        seed_layout: seeds per step and devices, AXIS[:CHUNK][@DEVICES] (vmap:2, map@1, vmap:2@all;
            auto: two per step on a CPU, all at once elsewhere)
        cpu_matmul: library for matrix products on a CPU: eigen (measured faster here) or default
        data_dir: directory with MNIST IDX files (optionally .gz) or mnist.npz
        data_source: auto (local files, else the embedded 5k subset), files, download or embedded
        n: use only the first N MNIST training images (none: all)
        protocol: each method's settings (flags --METHOD.FIELD, e.g. --sd.coef, --irm.lr)
        step_divisor: divide every method's steps and annealing step by this
        sweep: sweep each method's coefficient and select by training-domain validation
        val_frac: held-out fraction of each training environment (with --sweep)
        top: leading NTK directions at θ₀ (first seed, all training examples) whose responses z(t)
            and starvation matrix are reported (ERM, SD; 0: off)
        log_every: steps between recorded metrics
    """

    methods: tuple[str, ...] = tuple(METHODS)
    seeds: int = 10
    first_seed: int = 0
    seed: int = 0
    seed_layout: str = "auto"
    cpu_matmul: str = "eigen"
    data_dir: str | None = None
    data_source: str = "auto"
    n: int | None = None
    protocol: dict[str, Recipe] = dataclasses.field(default_factory=lambda: dict(METHODS))
    step_divisor: int = 1
    sweep: bool = False
    val_frac: float = 0.1
    top: int = 20
    log_every: int = 10

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """``--quick``: 2 seeds, 1,200 images, 1/20 of every method's steps, 8 directions."""
        base = dict(step_divisor=20, seeds=2, n=1200, top=8, log_every=5)
        return cls(**{**base, **overrides})

    def __post_init__(self):
        methods = tuple(self.methods) if not isinstance(self.methods, str) else (self.methods,)
        methods = tuple(self.protocol) if "all" in methods else tuple(dict.fromkeys(methods))
        if not methods or any(m not in self.protocol for m in methods):
            raise ConfigError(
                "methods",
                f"expected some of {' '.join(self.protocol)} or all, got {list(self.methods)}",
            )
        object.__setattr__(self, "methods", methods)
        check(
            self,
            {
                **dict.fromkeys(("seeds", "log_every", "step_divisor"), integer(1)),
                **dict.fromkeys(("first_seed", "top"), integer(0)),
                "seed": integer(),
                "cpu_matmul": one_of("eigen", "default"),
                "n": optional(integer(12)),
                "data_source": one_of("auto", "files", "download", "embedded"),
                "val_frac": number(0, 0.5, low_open=True),
            },
        )
        self.restarts().layout()
        if self.top == 1:
            raise ConfigError("top", "expected 0 (off) or >= 2 (a matrix of pairs), got 1")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise ConfigError(
                "data_dir",
                f"{self.data_dir} is not a directory; pass the folder with the MNIST files",
            )

    def restarts(self) -> RestartSettings:
        """The seeds' ``layout()``, ``keys(stream)`` and ``compiler_options()`` (RestartSettings)."""
        rest = {k: getattr(self, k) for k in ("seed", "seed_layout", "cpu_matmul")}
        return RestartSettings(seeds=self.seeds, first_seed=self.first_seed, **rest)

    def method(self, name: str) -> Recipe:
        """``name``'s recipe, steps and annealing divided by ``step_divisor``."""
        return self.protocol[name].scaled(self.step_divisor)

    def coefficients(self, name: str) -> dict[str, float]:
        """``name``'s objective hyperparameters, by their :mod:`ntkdyn.objectives` field names."""
        return self.protocol[name].coefficients()


class Results(NamedTuple):
    """:func:`run`'s values: results.json, metrics.jsonl rows, z(t) curves by label, probe images,
    config.json's extra entries (layout, compiler options, data)."""

    config: Config
    results: dict[str, Any]
    records: list[dict[str, Any]]
    curves: dict[str, dict[str, Any]]
    probe_examples: Any
    run_info: dict[str, Any]


def sweep_grid(config: Config, name: str) -> list[dict[str, float]]:
    """The hyperparameters of ``name`` tried by ``--sweep`` (the published point alone without)."""
    from ntkdyn.train import recipes

    hp = config.coefficients(name)
    erm = SWEEP_ERM_L2 if name == "erm" else None
    return recipes.sweep_grid(hp, SWEEP_FACTORS, erm) if config.sweep else [hp]


def init_params(method: Recipe, keys):
    """``(apply_fn, params)``: the method's MLP, Xavier-uniform / zero-bias, stacked over ``keys``."""
    from ntkdyn.models.mlp import init_mlp_stacked, xavier_uniform

    widths = [method.hidden, method.hidden]
    return init_mlp_stacked(keys, 196 if method.grayscale else 392, widths, xavier_uniform)


def train_method(config: Config, name: str, envs, spectra: dict, log, verbose=True, ckpt=None):
    """Train ``name`` on every seed (and grid point with ``--sweep``), then evaluate it.

    Returns:
        ``(entry, records, curves)``: the method's results, metrics.jsonl rows and z(t) curves.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from ntkdyn.data.colored_mnist import environment_batches, probe_batches
    from ntkdyn.runs.tables import grid_results, history_records
    from ntkdyn.tangent import BlockKrylov, feature_spectrum
    from ntkdyn.train.recipes import environment_evaluation, environment_loss
    from ntkdyn.train.restarts import train_restarts

    method, grid = config.method(name), sweep_grid(config, name)
    k = config.top if (name in Z_METHODS and not config.sweep) else 0
    val_frac = config.val_frac if config.sweep else 0.0
    batches = environment_batches(envs, grayscale=method.grayscale, val_frac=val_frac)
    probe = probe_batches(envs, grayscale=method.grayscale)
    seeds = config.restarts()
    apply_fn, params0 = init_params(method, seeds.keys("init"))
    b0, p0 = jax.tree_util.tree_map(lambda a: a[0], (batches, params0))
    x, y = jnp.concatenate([b0["x1"], b0["x2"]]), jnp.concatenate([b0["y1"], b0["y2"]])

    net = (method.hidden, method.grayscale)  # ERM and SD share width and θ₀: one spectrum
    if k and net not in spectra:
        log(f"cmnist: top-{k} NTK directions at θ₀ on all training examples (matrix-free)")
        start, key = time.perf_counter(), seeds.keys("spectrum")[0]
        spec = feature_spectrum(apply_fn, p0, x, y, solver=BlockKrylov(k, 1e-4, 60, key=key))
        spectra[net] = (spec, spec.report, time.perf_counter() - start)
        log(f"cmnist: spectrum in {spectra[net][2]:.1f} s")

    eval_fn, evaluate = environment_evaluation(apply_fn)
    trained = train_restarts(
        environment_loss(method, apply_fn),
        optax.adam(method.lr),
        params0,
        batches,
        keys=seeds.keys("init"),
        num_steps=method.steps,
        grid=grid,
        log_every=config.log_every,
        evaluate=evaluate,
        evaluate_args=(batches, probe),
        desc=f"cmnist {name}" if verbose else None,
        responses=(lambda p, x: apply_fn(p, x)[:, 0], x, y, spectra[net][0].U) if k else None,
        eval_fn=eval_fn,
        layout=seeds.layout(),
        compiler_options=seeds.compiler_options(),
        checkpoints=ckpt and ckpt.stage(name),
    )
    result, R = trained.result, config.seeds
    log(f"cmnist: {name}: {len(grid) * R} runs x {method.steps} steps in {trained.seconds:.1f} s")
    records = history_records(result.history, result.steps, restarts=R, grid=grid, method=name)
    entry = grid_results(trained.values, grid, restarts=R, keep=("train_acc", "test_acc"))
    entry["config"] = method.record(name)
    if not k:
        return entry, records, None
    names = {f"{s}_{m}": f"{s}_{h}" for m, h in CURVES.items() for s in ("train", "test")}
    return entry, records, trained.curves(eval_fn(p0, None, b0), names)


def run(config: Config, *, verbose: bool = True, checkpoints=None) -> Results:
    """Run the protocol: data, each method's training and evaluation, z(t) and the theory.

    Writes nothing (:func:`report` does); ``verbose``: progress and timings on stderr;
    ``checkpoints``: resumable training (:class:`ntkdyn.train.checkpoint.Checkpoints`).
    """
    import jax

    from ntkdyn.data.colored_mnist import colored_mnist, load_images, probe_examples
    from ntkdyn.objectives import ERM, SpectralDecoupling
    from ntkdyn.runs.tables import measured_theory

    try:
        images, digits, info = load_images(
            config.data_dir, source=config.data_source, max_images=config.n
        )
    except (FileNotFoundError, ValueError) as exc:  # name the flag that chose the files
        if config.data_dir is None:
            raise
        raise ConfigError("data_dir", str(exc)) from exc
    if config.top and not config.sweep and config.top > info["n_train"]:
        msg = f"{config.top} directions exceed the {info['n_train']} training images; ask for fewer"
        raise ConfigError("top", msg)

    log = functools.partial(print, file=sys.stderr, flush=True) if verbose else (lambda _: None)

    log(f"cmnist: {info['description']}")
    seeds = config.restarts()
    envs = jax.jit(jax.vmap(lambda k: colored_mnist(k, images, digits)))(seeds.keys("data"))
    records, methods_out, curves, spectra = [], {}, {}, {}
    for name in config.methods:
        entry, recs, curve = train_method(config, name, envs, spectra, log, verbose, checkpoints)
        methods_out[name], records = entry, records + recs
        if curve is not None:
            curves[LABELS[name]] = curve
    results = {
        "data": {k: info[k] for k in ("source", "n_images", "description", "n_train", "n_test")},
        "selection": (
            "training-domain validation over a grid; the test-domain choice is reported beside it"
            if config.sweep
            else "test-domain: published hyperparameters, tuned on the test environment by their authors"
        ),
        "methods": methods_out,
        "published": {m: PUBLISHED[m] for m in config.methods if m in PUBLISHED},
    }
    if spectra:  # ERM's l2 is coupled weight decay 2·l2 (theory_lam); CE at λ = 0 has no fixed
        # point, so without it CE is taken at SD's λ (the same strength, only the form differs).
        _, rep, took = next(iter(spectra.values()))
        c, l2, n = config.protocol["sd"].coef, config.protocol["erm"].l2, int(rep.U.shape[0])
        ce = (ERM(l2=l2), "erm.l2: n·2·l2") if l2 else (ERM(l2=c / n), SD_LAMBDA)
        objectives = {"ce": ce, "sd": (SpectralDecoupling(coef=c), "sd.coef: 2c")}
        results |= measured_theory(rep, objectives, curves, restart=config.first_seed, seconds=took)
    run_info = {
        "layout": seeds.layout().describe(),
        "compiler_options": seeds.compiler_options(),
        "data": info,
    }
    return Results(config, results, records, curves, probe_examples(envs), run_info)


def report(results: Results, run_dir) -> None:
    """Write config.json, metrics.jsonl, results.json, feature_responses.npz, figures, summary.md."""
    from ntkdyn.plots.cmnist import cmnist_figures
    from ntkdyn.runs import RunDir

    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    config, res, curves = results.config, results.results, results.curves
    if results.run_info is not None:
        run_dir.write_config(
            {**dataclasses.asdict(config), **results.run_info, "out": str(run_dir.path)}
        )
        run_dir.write_metrics(results.records)
        run_dir.write_results(res)
    if curves:
        arrays = {f"{m}_{k}": v for m, c in curves.items() for k, v in c.items()}
        run_dir.write_npz("feature_responses.npz", **arrays)
    probe = {LABELS[m]: r["probe"] for m, r in res["methods"].items()}
    figures = cmnist_figures(probe, results.probe_examples, curves, res.get("starvation"))
    for stem, figure in figures.items():
        run_dir.save_figure(figure, stem)
    run_dir.write_text("summary.md", summary_markdown(res, config))


def run_experiment(config: Config, out: str, *, verbose=True, checkpoints=None) -> dict[str, Any]:
    """:func:`run`, then :func:`report` into ``out`` (created only after training); results.json."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigError("out", f"{out} exists and is not a directory; choose another --out")
    results = run(config, verbose=verbose, checkpoints=checkpoints)
    report(results, out)
    return results.results


#: Settings that runs must share to be parts of one protocol.
MERGE_MATCH = (
    *("seed", "methods", "step_divisor", "sweep", "n", "top", "log_every"),
    *("protocol", "data/source", "data/n_images", "data/n_train", "data/n_test"),
)
#: config.json keys of runs recorded before the flags took the names shared by every command.
FIGURES = ("cmnist_feature_responses_over_training", "cmnist_starvation_matrix")  # one seed's
RENAMED = dict(restarts="seeds", first_restart="first_seed", max_images="n", spectrum_k="top")


def merge(run_dirs, out: str) -> dict[str, Any]:
    """Join runs over disjoint seeds (``--first-seed``) by :func:`ntkdyn.runs.merge_runs`.

    Raises:
        ntkdyn.errors.InputError: as :func:`ntkdyn.runs.merge_runs`, and for ``--sweep`` runs.
    """
    from ntkdyn.data.colored_mnist import recorded_probe_examples
    from ntkdyn.runs import merge_runs
    from ntkdyn.runs.merge import merged_from, refuse

    merged = merge_runs(
        run_dirs,
        out,
        concat=("train_acc", "test_acc"),
        match=MERGE_MATCH,
        record_keys=("method", "step"),
        copy=["feature_responses.npz", *(f"{f}.{x}" for f in FIGURES for x in ("png", "pdf"))],
        check=refuse("sweep", "is a --sweep run; only published runs can be merged"),
        first_key="first_seed",
        count_key="seeds",
        renamed=RENAMED,
        command="ntkdyn cmnist",
    )
    cfg = merged.config
    protocol = {m: type(METHODS[m])(**v) for m, v in cfg["protocol"].items()}
    fields = {f.name for f in dataclasses.fields(Config)} - {"data_dir", "protocol"}
    config = Config(protocol=protocol, **{k: v for k, v in cfg.items() if k in fields})
    examples = recorded_probe_examples(cfg.get("data", {}), config.restarts().keys("data")[0])
    report(Results(config, merged.results, [], {}, examples, None), merged.run_dir)
    summary = summary_markdown(merged.results, config)
    merged.run_dir.write_text("summary.md", f"{summary}\n{merged_from(merged.parts, 'seeds')}\n")
    return merged.results


def summary_markdown(results: dict[str, Any], config: Config) -> str:
    """The Markdown summary: accuracies beside the published ones, the probe, sweeps, the theory."""
    from ntkdyn.runs.tables import protocol_summary, starvation_reading

    probe = (
        "Probe (Fig. 4): accuracy % / mean binary entropy (nats), ours (published)",
        "Ours: mean over restarts on the test environment; published: one restart.",
        PROBE_INPUTS,
        ["method", "digit, gray", "digit, colour", "blank, gray", "blank, colour"],
    )
    return protocol_summary(
        "Colored MNIST (Pezeshki et al. 2021, Table 1)",
        results,
        PUBLISHED,
        labels=LABELS,
        coefficients={m: config.coefficients(m) for m in results["methods"]},
        **{k: getattr(config, k) for k in ("seeds", "first_seed", "seed", "step_divisor")},
        note="Published figures are on full MNIST (60,000 images); accuracies in %, mean ± std "
        "over restarts.",
        probe=probe,
        theory=starvation_reading(results, config.method("sd").anneal_steps),
        figures="Figures: `cmnist_probe.png`, `cmnist_feature_responses_over_training.png` and "
        "`cmnist_starvation_matrix.png` (the last two when ERM or SD ran).",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """``ntkdyn cmnist``'s flags: one per :class:`Config` field (--METHOD.FIELD for the protocol),
    and the former spellings as hidden aliases."""
    from ntkdyn.commands import deprecated_alias
    from ntkdyn.runs.resume import add_resume_flags

    add_arguments(parser, Config(), quick=Config.quick())
    for old, new, kind in (
        ("--restarts", "--seeds", int),
        ("--first-restart", "--first-seed", int),
        ("--max-images", "--n", lambda t: None if t.lower() == "none" else int(t)),
        ("--spectrum-k", "--top", int),
    ):
        deprecated_alias(parser, old, new, dest=new[2:].replace("-", "_"), type=kind)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: the defaults of Config.quick() (2 seeds, 1,200 images, 1/20 of the "
        "steps); other flags override them",
    )
    parser.add_argument("--out", default="runs/cmnist", help="output directory")
    add_resume_flags(parser, 500)
    parser.add_argument(
        "--merge",
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="RUN_DIR",
        help="join runs of one protocol over disjoint seeds into --out (no training)",
    )


def cli(args: argparse.Namespace) -> int:
    """``ntkdyn cmnist``: parse the flags into a :class:`Config`, run and report; exit status."""
    from ntkdyn.runs import format_mean_std as pct

    if getattr(args, "merge", None):
        results = merge(args.merge, args.out)
    else:
        from ntkdyn.train.checkpoint import resumable

        config = from_arguments(Config.quick() if args.quick else Config(), args)
        flags = dict(resume=args.resume, every=args.checkpoint_every, nested=("protocol",))
        with resumable(args.out, COMMAND, dataclasses.asdict(config), **flags) as ckpt:
            results = run_experiment(config, args.out, checkpoints=ckpt)
    for m, r in results["methods"].items():
        print(
            f"{LABELS[m]:>16}: train {pct(r['train_acc_mean'], r['train_acc_std'])}  "
            f"test {pct(r['test_acc_mean'], r['test_acc_std'])}  ({len(r['train_acc'])} seeds)"
        )
    print(f"results in {args.out} ({results['data']['description']})")
    return 0
