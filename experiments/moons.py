"""Two-moons toy: ERM vs Spectral Decoupling decision boundaries, nine regularizers, feature responses.

Pezeshki et al. 2021, §3, Fig. 1–2 and the appendix's regularizer figure, as the authors' code runs
them (``Figure_2/moon_fig_2.py`` and ``Figure_3/moon_fig_3.py`` of mpezeshki/Gradient_Starvation).
A 2 → 500 → 1 ReLU network is trained full batch on 300 two-moons points
(:func:`ntkdyn.data.moons.two_moons`) with the mean logistic loss (:class:`ntkdyn.ERM`) or Spectral
Decoupling, mean softplus(−yŷ) + 0.003·mean(ŷ²) (:class:`ntkdyn.SpectralDecoupling`), for 10,000
epochs on 10 seeds (seed s draws the data with seed s and its own initialisation). Initialisation
is PyTorch's ``nn.Linear`` default, W, b ~ U(±1/√fan_in) (:func:`ntkdyn.init_mlp_uniform`). The
decision function is averaged over the seeds on a 100 × 100 grid over [−2, 2]².

Configurations (``--config NAME``, repeatable or comma-separated; all by default):

=====================  =======================================================================
main figure            SGD lr 1e-2, momentum 0.9, weight decay 2e-4 (coupled, as PyTorch's)
``erm_delta_minus``    Δ = −0.1 (overlapping classes), ERM
``erm``                Δ = +0.1, ERM
``sd``                 Δ = +0.1, Spectral Decoupling
regularizer panels     Δ = +0.1; SGD lr 1e-2, momentum 0.9, *no* weight decay unless stated
``no_regularization``  ERM
``weight_decay``       ERM, weight decay 0.01
``train_longer``       ERM, 10× the epochs
``adam_small_lr``      ERM, Adam lr 1e-4
``adam_large_lr``      ERM, Adam lr 3e-3
``rotation_45``        ERM, the data rotated by 45°
``dropout``            ERM, dropout 0.7 on the hidden layer (off at evaluation)
``batch_norm``         ERM, batch norm of the hidden pre-activations (PyTorch's ``BatchNorm1d``)
``five_layers``        ERM, 2 → 500 → 500 → 500 → 500 → 1
``sd_no_decay``        Spectral Decoupling
=====================  =======================================================================

The panels follow the authors' ``moon_fig_3.py``: no panel has weight decay but the weight-decay
panel (its SGD, Adam and SD have none), so ``no_regularization`` and ``sd_no_decay`` differ from the
main figure's ``erm`` and ``sd``; 10,000 epochs (100,000 to train longer). Its dropout sits before
the ReLU, ours after it (the same function: ReLU is positively homogeneous, the mask ≥ 0); its
deeper network has four hidden layers; its rotation is X ← X·R(θ), as ours.

Metrics per configuration: :func:`ntkdyn.boundary.stacked_report` (mean ± std over seeds; the
figures' seed-averaged function under ``averaged``). The main figure's feature responses z_j(t):
:class:`ntkdyn.train.hooks.SeedResponses` (each seed's top directions at θ₀).

Command::

    ntkdyn moons --out runs/moons            # the paper's protocol (all 13 configurations)
    ntkdyn moons --quick --out /tmp/moons    # 2 seeds, 200 epochs, width 64: a smoke test
    ntkdyn moons --out runs/moons --replot   # redraw the figures from decision_functions.npz
    ntkdyn moons --out runs/moons --resume   # continue an interrupted run (same flags)

From Python: ``report(run(Config.quick()), "runs/moons")`` (:func:`run` writes nothing).

Expected (paper, Fig. 1–3): ERM at Δ = +0.1 draws a nearly straight boundary close to the data
(small ``boundary_line_residual``, ``boundary_min_distance`` near the margin Δ); SD's is curved
around the moons and farther from the data — larger ``boundary_min_distance`` and
``boundary_line_residual`` than every other regularizer panel. Δ = −0.1 ERM is curved too. Outputs:
``config.json``, ``metrics.jsonl``, ``results.json``, ``summary.md``, ``decision_functions.npz``,
``moons_main.{png,pdf}``, ``moons_regularizers.{png,pdf}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from typing import Any, NamedTuple

import numpy as np

from ntkdyn.objectives import ERM, Objective, SpectralDecoupling
from ntkdyn.runs import add_resume_flags, seed_records
from ntkdyn.runs.tables import seed_table
from ntkdyn.settings import (
    ConfigError,
    RestartSettings,
    add_arguments,
    check,
    from_arguments,
    integer,
    number,
)

HELP = __doc__.split("\n\n")[0] + "\n\nPaper protocol by default; --quick for a smoke test."

GRID_SIZE = 100  # the figures' grid: 100 × 100 over [−2, 2]²
METRIC_GRID_SIZE = 201  # a finer grid for the boundary metrics (spacing 0.02)
GRID_LIM = 2.0
RESPONSE_DIRECTIONS = 8  # feature responses kept for the top directions
PROGRESS_SECONDS = 10.0  # least time between two progress lines of a configuration


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration (module docstring): its key in results.json and panel title, the
    objective, the data's gap Δ and rotation, Adam or SGD with momentum 0.9, the learning rate
    (``None``: ``--lr``), coupled weight decay (PyTorch's), a multiple of ``--epochs``, dropout,
    batch norm before each hidden activation and the number of hidden layers of width ``--hidden``.
    """

    name: str
    title: str
    objective: Objective = ERM()
    delta: float = 0.1
    rotation_deg: float = 0.0
    adam: bool = False
    lr: float | None = None
    weight_decay: float = 0.0
    epoch_factor: int = 1
    dropout: float = 0.0
    batch_norm: bool = False
    hidden_layers: int = 1

    @property
    def shallow(self) -> bool:
        """One hidden layer without dropout or batch norm: trained through ``shallow_relu``."""
        return self.hidden_layers == 1 and not self.batch_norm and not self.dropout

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of the setting (for config.json)."""
        objective = {"name": type(self.objective).__name__, **dataclasses.asdict(self.objective)}
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "objective": objective}


_SD = SpectralDecoupling(coef=0.003)
_MAIN_DECAY = 2e-4
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("erm_delta_minus", "Δ = −0.1, ERM", delta=-0.1, weight_decay=_MAIN_DECAY),
        Setting("erm", "Δ = +0.1, ERM", weight_decay=_MAIN_DECAY),
        Setting("sd", "Δ = +0.1, SD", objective=_SD, weight_decay=_MAIN_DECAY),
        Setting("no_regularization", "No regularization"),
        Setting("weight_decay", "Weight decay 0.01", weight_decay=0.01),
        Setting("train_longer", "Train 10× longer", epoch_factor=10),
        Setting("adam_small_lr", "Adam, lr 1e-4", adam=True, lr=1e-4),
        Setting("adam_large_lr", "Adam, lr 3e-3", adam=True, lr=3e-3),
        Setting("rotation_45", "45° rotation", rotation_deg=45.0),
        Setting("dropout", "Dropout 0.7", dropout=0.7),
        Setting("batch_norm", "Batch norm", batch_norm=True),
        Setting("five_layers", "Deeper network (5 layers)", hidden_layers=4),
        Setting("sd_no_decay", "Spectral Decoupling", objective=_SD),
    )
}
MAIN_FIGURE = ("erm_delta_minus", "erm", "sd")
REGULARIZERS = tuple(c for c in SETTINGS if c not in MAIN_FIGURE)
PANEL_SD = "sd_no_decay"


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of a two-moons run; the defaults are the paper's protocol.

    Attributes:
        config: configurations to run (repeatable or comma-separated), in the order of the module docstring.
        seeds: number of seeds (paper: 10).
        epochs: full-batch epochs (paper: 10000; train_longer runs 10 times as many).
        lr: SGD learning rate (the Adam panels keep their own).
        n: number of training points.
        noise: make_moons noise.
        hidden: hidden width (paper: 500).
        seed: base seed (seed s uses seed + s).
        unroll: training steps per scan iteration.
        seed_layout: how the seeds are laid out, AXIS[:CHUNK][@DEVICES] (vmap, vmap:2, map@1, vmap@all).
    """

    config: tuple[str, ...] = tuple(SETTINGS)
    seeds: int = 10
    epochs: int = 10000
    lr: float = 1e-2
    n: int = 300
    noise: float = 0.1
    hidden: int = 500
    seed: int = 0
    unroll: int = 1
    seed_layout: str = "vmap@all"

    def __post_init__(self):
        names = []
        for item in (self.config,) if isinstance(self.config, str) else self.config:
            names.extend(part.strip() for part in str(item).split(",") if part.strip())
        unknown = [c for c in names if c not in SETTINGS]
        if unknown or not names:
            what = f"unknown configuration {unknown[0]!r}" if unknown else "no configuration given"
            raise ConfigError("config", f"{what}; choose from {', '.join(SETTINGS)}")
        object.__setattr__(self, "config", tuple(c for c in SETTINGS if c in names))
        counts = dict.fromkeys(("seeds", "epochs", "hidden", "unroll"), integer(1))
        check(self, {**counts, "n": integer(2), "lr": number(0, low_open=True), "noise": number(0)})
        self.layout()  # the seed layout is a setting too

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """``--quick``: 2 seeds, 200 epochs, width 64 (a smoke test, under a minute)."""
        return dataclasses.replace(cls(seeds=2, epochs=200, hidden=64), **overrides)

    def layout(self):
        """The ``SeedLayout`` of ``seed_layout`` (:meth:`ntkdyn.settings.RestartSettings.layout`)."""
        return RestartSettings(seed_layout=self.seed_layout).layout()


def logits(setting: Setting, params, stats, x, *, train: bool = False, key=None):
    """``(f (n,), new_stats)``: :func:`ntkdyn.models.mlp.mlp_logits` with the setting's dropout and
    PyTorch's ``BatchNorm1d`` conventions (momentum 0.1, unbiased running variance), as the
    authors' code."""
    from ntkdyn.models.mlp import mlp_logits

    options = dict(dropout_rate=setting.dropout, momentum=0.9, unbiased_running_var=True)
    return mlp_logits(params, x, batch_stats=stats, train=train, key=key, **options)


def make_loss(setting: Setting):
    """The trainer's ``loss_fn`` on ``(x, y01)`` (:func:`ntkdyn.train.fullbatch.classifier_loss`)."""
    from ntkdyn.train.fullbatch import classifier_loss

    return classifier_loss(functools.partial(logits, setting), setting.objective)


def initial_state(setting: Setting, config: Config):
    """``(train keys, params0, stats0)`` of every seed (:func:`ntkdyn.models.mlp.init_mlp_seeds`)."""
    import jax

    from ntkdyn.models.mlp import init_mlp_seeds

    hidden = [config.hidden] * setting.hidden_layers
    key = jax.random.key(config.seed)
    return init_mlp_seeds(key, config.seeds, 2, hidden, batch_norm=setting.batch_norm)


def setting_data(setting: Setting, config: Config) -> tuple[np.ndarray, np.ndarray]:
    """``(X (S, n, 2), y (S, n) in {−1, +1})``: seed s draws ``two_moons(seed=config.seed + s)``."""
    from ntkdyn.data.moons import two_moons

    shape = dict(n=config.n, noise=config.noise, delta=setting.delta)
    data = [
        two_moons(**shape, rotation_deg=setting.rotation_deg, seed=config.seed + s)
        for s in range(config.seeds)
    ]
    return np.stack([d[0] for d in data]), np.stack([d[1] for d in data])


def record_every(setting: Setting, config: Config, records: int) -> int:
    """Steps between metric records, for about ``records`` of them."""
    return max(1, config.epochs * setting.epoch_factor // records)


def response_hook(setting: Setting, config: Config, X, y, every: int, k=RESPONSE_DIRECTIONS):
    """The z(t) hook of the main figure: each seed's top-k directions at θ₀ on its own data."""
    from ntkdyn.models.mlp import DenseApply
    from ntkdyn.train.hooks import SeedResponses

    return SeedResponses(every, DenseApply(), initial_state(setting, config)[1], X, y, top=k)


def train_setting(
    setting: Setting,
    config: Config,
    X: np.ndarray,
    y: np.ndarray,
    *,
    layout=None,
    records: int = 200,
    hooks=(),
    progress_every: float | None = None,
    checkpoints=None,
):
    """The stacked ``TrainResult`` of one configuration on every seed at once
    (:func:`ntkdyn.train.restarts.train_restarts`): about ``records`` metric records, more
    ``hooks``, a progress line at most every ``progress_every`` s (``None``: silent), resumable
    with ``checkpoints`` (:class:`ntkdyn.train.checkpoint.Checkpoints`)."""
    import jax.numpy as jnp

    from ntkdyn.train.optimizers import pytorch_optimizer
    from ntkdyn.train.restarts import train_restarts

    num_steps, every = config.epochs * setting.epoch_factor, record_every(setting, config, records)
    train_keys, params0, stats0 = initial_state(setting, config)
    lr, sgd = (config.lr if setting.lr is None else setting.lr), not setting.adam
    optimizer = pytorch_optimizer(
        "sgd" if sgd else "adam",
        lr,
        momentum=0.9 if sgd else 0.0,
        weight_decay=setting.weight_decay,
    )
    batch = (jnp.asarray(X), jnp.asarray(((y + 1) / 2).astype(np.float32)))
    desc = None if progress_every is None else f"  {setting.name}"
    options = dict(log_every=every, desc=desc, progress_seconds=progress_every or 0.0)
    options |= dict(hooks=hooks, layout=layout, unroll=min(config.unroll, every))
    options |= dict(keys=train_keys, num_steps=num_steps, model_state=stats0)
    options["checkpoints"] = checkpoints
    return train_restarts(make_loss(setting), optimizer, params0, batch, **options).result


def evaluate(setting: Setting, result, X, y) -> tuple[dict[str, Any], np.ndarray]:
    """``(metrics, mean_values (100, 100))``: :func:`ntkdyn.boundary.stacked_report`, final loss,
    epochs."""
    from ntkdyn.boundary import stacked_report

    def forward(params, stats, x):
        return logits(setting, params, stats, x)[0]

    state, options = result.state, dict(lim=GRID_LIM, grid_size=GRID_SIZE)
    options["metric_grid_size"] = METRIC_GRID_SIZE
    metrics, values = stacked_report(forward, state.params, state.model_state, X, y, **options)
    history = result.history
    metrics["final_loss"] = float(history["loss"][:, -1].mean()) if history else None
    metrics["epochs"] = int(result.steps[-1]) if len(result.steps) else None
    return metrics, values


class Results(NamedTuple):
    """What :func:`run` computes, by configuration: metrics, the seed-mean decision function on the
    figure grid, seed 0's data, the main figure's seed-mean z(t); the verdict, metrics.jsonl rows
    and training times."""

    config: Config
    layout: dict[str, Any]
    configs: dict[str, dict[str, Any]]
    verdict: dict[str, Any]
    values: dict[str, np.ndarray]
    data: dict[str, tuple[np.ndarray, np.ndarray]]
    responses: dict[str, tuple[np.ndarray, np.ndarray]]
    records: list[dict[str, Any]]
    seconds: dict[str, float]


def run(config: Config, *, progress_every=PROGRESS_SECONDS, checkpoints=None) -> Results:
    """Train and evaluate the selected configurations; write nothing (``progress_every``, and
    ``checkpoints``, one stage per configuration: as :func:`train_setting`)."""
    layout = config.layout()
    configs, values, data, responses, seconds, records = {}, {}, {}, {}, {}, []
    for name in config.config:
        setting, main = SETTINGS[name], name in MAIN_FIGURE
        X, y = setting_data(setting, config)
        opts = dict(layout=layout, records=500 if main else 200, progress_every=progress_every)
        opts["checkpoints"] = checkpoints and checkpoints.stage(name)
        every = record_every(setting, config, opts["records"])
        z = [response_hook(setting, config, X, y, every)] if main and setting.shallow else []
        start = time.perf_counter()
        result = train_setting(setting, config, X, y, hooks=z, **opts)
        seconds[name] = time.perf_counter() - start
        configs[name], values[name] = evaluate(setting, result, X, y)
        data[name] = (X[0], y[0])
        if z:
            responses[name] = z[0].mean_curve()
        records += seed_records(result.history, result.steps, step_key="epoch", config=name)
        if progress_every is not None:
            m, took = configs[name], seconds[name]
            print(
                f"{name}: {m['epochs']} epochs x {config.seeds} seeds in {took:.1f} s; train acc "
                f"{m['train_accuracy']:.3f}, min dist {m['boundary_min_distance']:.3f}, line "
                f"residual {m['boundary_line_residual']:.3f}",
                file=sys.stderr,
                flush=True,
            )
    arrays = (values, data, responses, records, seconds)
    return Results(config, layout.describe(), configs, _verdict(configs), *arrays)


def _verdict(configs: dict[str, Any]) -> dict[str, Any]:
    """Whether the SD panel's boundary is farther and more curved than every other panel's."""
    others = [c for c in REGULARIZERS if c != PANEL_SD and c in configs]
    if PANEL_SD not in configs or not others:
        return {}
    out: dict[str, Any] = {"compared_with": others}
    for key in ("boundary_min_distance", "boundary_line_residual"):
        sd = configs[PANEL_SD][key]
        out[f"sd_largest_{key[9:]}"] = all(sd > configs[c][key] for c in others)  # boundary_*
    return out


COLUMNS = ("train_accuracy", "boundary_min_distance", "boundary_mean10_distance")
COLUMNS += ("boundary_line_residual",)


def _summary(results: Results) -> str:
    config = results.config
    spread = "mean ± std over seeds" if config.seeds > 1 else "one seed (n = 1), no spread"
    lines = [
        "# Two moons: decision boundaries of ERM, nine regularizers and Spectral Decoupling",
        "",
        f"{config.seeds} seed{'s' * (config.seeds > 1)}, {config.epochs} epochs (×10 for train_longer), n = {config.n}, "
        f"noise = {config.noise}, width {config.hidden}; {spread}. Main figure: "
        "erm_delta_minus, erm, sd (weight decay 2e-4); regularizer panels: the others (no weight "
        "decay but the weight_decay panel's).",
        "",
    ]
    lines += seed_table(results.configs, COLUMNS, spread=config.seeds > 1)
    if results.verdict:
        lines += ["", f"SD ({PANEL_SD}) against the other regularizer panels (Δ = +0.1):", ""]
        for key, value in results.verdict.items():
            lines.append(f"* {key}: {', '.join(value) if isinstance(value, list) else value}")
    return "\n".join(lines) + "\n"


def _draw(out, values, data, responses) -> None:
    from ntkdyn.boundary import grid
    from ntkdyn.plots.moons import moons_figures

    xs, ys, _ = grid(GRID_SIZE, GRID_LIM)
    titles = {c: SETTINGS[c].title for c in values}
    figures = moons_figures(xs, ys, values, data, responses, titles, others=REGULARIZERS)
    for stem, fig in figures.items():
        out.save_figure(fig, stem)


def report(results: Results, run_dir, *, quick: bool = False) -> dict[str, Any]:
    """Write config.json (``quick`` recorded), metrics.jsonl, results.json (returned), summary.md,
    decision_functions.npz and the figures into ``run_dir`` (a path or a ``RunDir``)."""
    from ntkdyn.boundary import grid
    from ntkdyn.plots.moons import decision_arrays
    from ntkdyn.runs import RunDir

    config, values = results.config, results.values
    out = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out.write_config(
        dataclasses.asdict(config)
        | dict(quick=quick, layout=results.layout, grid=dict(size=GRID_SIZE, lim=GRID_LIM))
        | dict(
            metric_grid_size=METRIC_GRID_SIZE,
            settings={c: SETTINGS[c].describe() for c in config.config},
        )
    )
    xs, ys, _ = grid(GRID_SIZE, GRID_LIM)
    arrays = decision_arrays(xs, ys, values, results.data, results.responses)
    out.write_npz("decision_functions.npz", **arrays)
    out.write_metrics(results.records)
    written = {"configs": results.configs, "verdict": results.verdict}
    out.write_results(written)
    out.write_text("summary.md", _summary(results))
    _draw(out, values, results.data, results.responses)
    return written


def _replot(path: str) -> None:
    from ntkdyn.plots.moons import from_decision_arrays
    from ntkdyn.runs import RunDir

    npz = os.path.join(path, "decision_functions.npz")
    if not os.path.isfile(npz):
        raise FileNotFoundError(f"--replot: {npz!r} not found; pass the --out of a finished run")
    with np.load(npz) as arrays:
        _draw(RunDir(path), *from_decision_arrays(arrays))


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ntkdyn moons``: one flag per :class:`Config` field, plus the run's own."""
    parser.add_argument("--out", default="runs/moons", help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 seeds, 200 epochs, width 64 (under a minute); flags override it",
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="redraw the figures of the run in --out from its decision_functions.npz (no training)",
    )
    parser.add_argument(
        "--config",
        action="append",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help=f"configuration(s) to run (repeatable or comma-separated; default all): "
        f"{', '.join(SETTINGS)}",
    )
    add_arguments(parser, Config(), skip=("config",))
    add_resume_flags(parser, 1000)


def resolve(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed arguments: the paper's (or ``quick()``), then the flags given
    (ConfigError naming the field of a bad value)."""
    base = Config.quick() if args.quick else Config()
    return from_arguments(base, args)


def cli(args: argparse.Namespace) -> int:
    """``ntkdyn moons``: settings and ``--out`` checked, then :func:`run` and :func:`report`.

    Raises:
        ConfigError: naming the flag of a bad value; InputError: an ``--out`` that cannot be
            written; FileNotFoundError: ``--replot`` of a folder without a finished run.
    """
    from ntkdyn.runs.files import check_writable
    from ntkdyn.train.checkpoint import resumable

    if args.replot:
        _replot(args.out)
        print(f"redrew the figures in {args.out}", file=sys.stderr)
        return 0
    config = resolve(args)
    check_writable(args.out)
    flags = dict(resume=args.resume, every=args.checkpoint_every)
    with resumable(args.out, "ntkdyn moons", dataclasses.asdict(config), **flags) as ckpt:
        report(run(config, checkpoints=ckpt), args.out, quick=bool(args.quick))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
