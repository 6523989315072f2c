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

The panels follow the authors' ``moon_fig_3.py`` where it differs from the SPEC's summary: no
panel has weight decay except the weight-decay panel itself (its "no regularization" is plain SGD
with momentum, its Adam has no decay, its SD no decay), so ``no_regularization`` and
``sd_no_decay`` are the panels' own entries, distinct from the main figure's ``erm`` and ``sd``.
The file's latest revision trains 10,000 epochs (100,000 for "train longer"; an earlier revision
had 1,000). Its dropout sits before the ReLU (fc2(relu(dropout(fc1 x)))); ours after it, the same
function because ReLU is positively homogeneous and the mask is ≥ 0. Its "deeper network" has five
linear layers, four hidden. Its rotation is X ← X·R(θ), as ours.

Metrics per configuration (mean and std over seeds, each seed's own boundary against its own data;
definitions in :mod:`ntkdyn.boundary`): train accuracy, ``boundary_min_distance``,
``boundary_mean10_distance``, ``boundary_line_residual``. The same metrics of the seed-averaged
decision function (the figures' boundary) against seed 0's data are under ``averaged``. The
feature responses z_j(t) of the main figure come from :func:`ntkdyn.analysis.analyse` (each seed's
spectrum at θ₀) and its ``measure`` of the outputs recorded during training.

Command::

    ntkdyn moons --out runs/moons            # the paper's protocol (all 13 configurations)
    ntkdyn moons --quick --out /tmp/moons    # 2 seeds, 200 epochs, width 64: a smoke test
    ntkdyn moons --out runs/moons --replot   # redraw the figures from decision_functions.npz

Expected (paper, Fig. 1–3): ERM at Δ = +0.1 draws a nearly straight boundary close to the data
(small ``boundary_line_residual``, ``boundary_min_distance`` near the margin Δ); SD's boundary is
curved around the moons and farther from the data — larger ``boundary_min_distance`` and
``boundary_line_residual`` than ERM and every other regularizer panel. Δ = −0.1 ERM is curved too
(the overlap forces it). Outputs: ``config.json``, ``metrics.jsonl``, ``results.json``,
``summary.md``, ``decision_functions.npz``, ``moons_main.{png,pdf}``,
``moons_regularizers.{png,pdf}``.

Training is one compiled call per configuration (:func:`ntkdyn.train.fullbatch.train_fullbatch`) on
the :class:`ntkdyn.MLP` parameter layout as a pure function: the plain 2 → 500 → 1 net through
:func:`ntkdyn.shallow_relu`, the others through :func:`ntkdyn.mlp_apply` (batch-norm statistics as
explicit state, dropout masks from ``fold_in(key, step)``). The seeds are laid out by
``--seed-layout`` (:class:`ntkdyn.train.layout.SeedLayout`; by default vmapped over all local
devices; on a CPU, expose the cores as devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Each configuration prints a progress
line to stderr at most every 10 s
(epochs done/total, elapsed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ntkdyn.objectives import ERM, Objective, SpectralDecoupling
from ntkdyn.runs import (
    CallCounter,
    StepProgress,
    format_mean_std,
    markdown_table,
    mean_std,
    seed_records,
)
from ntkdyn.settings import ConfigError, add_arguments, check, from_arguments, integer, number

HELP = (
    __doc__.split("\n\n")[0]
    + "\n\nPaper protocol by default; --quick for a smoke test. See the module docstring."
)

GRID_SIZE = 100  # the figures' grid: 100 × 100 over [−2, 2]²
METRIC_GRID_SIZE = 201  # a finer grid for the boundary metrics (spacing 0.02)
GRID_LIM = 2.0
RESPONSE_DIRECTIONS = 8  # feature responses kept for the top directions
PROGRESS_SECONDS = 10.0  # least time between two progress lines of a configuration


# --------------------------------------------------------------------------------------------------
# The configurations


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration of the two-moons experiment.

    Attributes:
        name: key in results.json.
        title: panel title.
        objective: the training objective (:class:`ntkdyn.ERM` or
            :class:`ntkdyn.SpectralDecoupling`).
        delta: the gap Δ of the data.
        rotation_deg: rotation of the data in degrees.
        adam: Adam instead of SGD with momentum 0.9.
        lr: learning rate (``None``: the command's ``--lr``, SGD's 1e-2 by default).
        weight_decay: coupled weight decay (added to the gradient, as PyTorch's ``weight_decay``).
        epoch_factor: multiple of the command's ``--epochs``.
        dropout: dropout probability on the hidden layers.
        batch_norm: batch normalisation before each hidden activation.
        hidden_layers: number of hidden layers of width ``--hidden``.
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
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        record["objective"] = {
            "name": type(self.objective).__name__,
            **dataclasses.asdict(self.objective),
        }
        return record


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
        check(
            self,
            {
                **dict.fromkeys(("seeds", "epochs", "hidden", "unroll"), integer(1)),
                "n": integer(2),
                "lr": number(0, low_open=True),
                "noise": number(0),
            },
        )

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """``--quick``: 2 seeds, 200 epochs, width 64 (a smoke test, under a minute)."""
        return dataclasses.replace(cls(seeds=2, epochs=200, hidden=64), **overrides)

    def layout(self):
        """The :class:`~ntkdyn.train.layout.SeedLayout` of ``seed_layout``.

        Raises:
            ConfigError: naming ``seed_layout`` when the text cannot be read.
        """
        from ntkdyn.train.layout import SeedLayout

        flag = "seed_layout"
        try:
            return SeedLayout.parse(self.seed_layout, flag=flag)
        except ValueError as exc:
            raise ConfigError(flag, str(exc).removeprefix(f"{flag}: ")) from None


# --------------------------------------------------------------------------------------------------
# Model and objective of one setting


def logits(setting: Setting, params, stats, x, *, train: bool = False, key=None):
    """``(f (n,), new_stats)``: the setting's network on ``x``, in train or eval mode.

    The plain one-hidden-layer net goes through :func:`ntkdyn.shallow_relu` (the same function,
    with a gradient that needs only the activation pattern); the others through
    :func:`ntkdyn.mlp_apply`, batch norm with PyTorch's ``BatchNorm1d`` conventions (running
    statistics with momentum 0.1 and the unbiased batch variance), as the authors' code.
    """
    from ntkdyn.models.mlp import mlp_apply, shallow_relu

    if setting.shallow and train:
        hidden, out = params["linears"][0], params["linears"][1]
        f = shallow_relu(hidden["kernel"], hidden["bias"], out["kernel"], out["bias"], x)
        return f, stats
    out, new_stats = mlp_apply(
        params,
        x,
        batch_stats=stats,
        train=train,
        key=key,
        dropout_rate=setting.dropout,
        momentum=0.9,
        unbiased_running_var=True,
    )
    return out[:, 0], new_stats


def make_loss(setting: Setting):
    """``loss_fn(params, stats, batch, step, key)`` of the trainer: the setting's objective.

    ``batch`` is ``(x, y01)`` with labels in {0, 1}; the metrics are the objective's (``nll``,
    SD's ``penalty``) and the training accuracy ``acc``.
    """
    import jax.numpy as jnp

    def loss_fn(params, stats, batch, step, key):
        x, y01 = batch
        f, new_stats = logits(setting, params, stats, x, train=True, key=key)
        value, (_, metrics) = setting.objective.loss(f, y01, step=step)
        acc = jnp.mean(jnp.where(y01 > 0.5, f > 0, f < 0))
        return value, (new_stats, {**metrics, "acc": acc})

    return loss_fn


# --------------------------------------------------------------------------------------------------
# Training and evaluation of one setting


@functools.cache
def _initial_state(seeds: int, hidden: int, hidden_layers: int, batch_norm: bool):
    """Compiled ``key -> (train keys, params0, stats0)`` of ``seeds`` seeds, one per architecture.

    Seed s initialises from ``fold_in(fold_in(key, s), 0)`` and trains with
    ``fold_in(fold_in(key, s), 1)``. One compiled call rather than many small vmapped ops, shared by
    every configuration of the same shape.
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.models.mlp import init_mlp_uniform

    @jax.jit
    def initial(base):
        seed_keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.arange(seeds))
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(seed_keys)
        train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys)
        params0, stats0 = jax.vmap(
            lambda k: init_mlp_uniform(k, 2, [hidden] * hidden_layers, batch_norm=batch_norm)
        )(init_keys)
        return train_keys, params0, stats0

    return initial


class Trained(NamedTuple):
    """A trained setting: stacked over seeds (leading axis S)."""

    setting: Setting
    X: np.ndarray  # (S, n, 2)
    y: np.ndarray  # (S, n), labels in {−1, +1}
    params0: Any
    params: Any
    stats: Any
    history: dict[str, np.ndarray]  # (S, R) each; "outputs" (S, R, n) when recorded
    epochs: np.ndarray  # (R,)
    seconds: float


def train_setting(
    setting: Setting,
    config: Config,
    *,
    layout=None,
    records: int = 200,
    record_outputs: bool = False,
    progress_every: float | None = None,
) -> Trained:
    """Train one configuration on ``config.seeds`` seeds at once (one compiled call).

    Seed s trains on ``two_moons(seed=config.seed + s)`` (labels converted once to {0, 1} for the
    objective) from the key ``fold_in(key(config.seed), s)``.

    Args:
        setting: the configuration.
        config: the protocol (``epochs`` before the setting's ``epoch_factor``, seeds, data,
            width, ``unroll``).
        layout: :class:`~ntkdyn.train.layout.SeedLayout` of the seeds (``None``: all seeds vmapped
            on the default device).
        records: about how many metric records to keep.
        record_outputs: also record f(X; θ_t) on the training set (for feature responses).
        progress_every: print a progress line to stderr (epochs done/total, elapsed) at most
            every this many seconds, and one at the end (:class:`ntkdyn.runs.StepProgress`);
            ``None``: silent.

    Returns:
        :class:`Trained`.
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.data.moons import two_moons
    from ntkdyn.train.fullbatch import train_fullbatch
    from ntkdyn.train.layout import SeedLayout
    from ntkdyn.train.optimizers import pytorch_optimizer

    layout = SeedLayout() if layout is None else layout
    seeds = config.seeds
    num_steps = config.epochs * setting.epoch_factor
    data = [
        two_moons(
            n=config.n,
            noise=config.noise,
            delta=setting.delta,
            rotation_deg=setting.rotation_deg,
            seed=config.seed + s,
        )
        for s in range(seeds)
    ]
    X = np.stack([d[0] for d in data])
    y = np.stack([d[1] for d in data])
    y01 = ((y + 1) / 2).astype(np.float32)

    initial = _initial_state(seeds, config.hidden, setting.hidden_layers, setting.batch_norm)
    train_keys, params0, stats0 = initial(jax.random.key(config.seed))

    log_every = max(1, num_steps // records)
    devices = len(layout.devices) if layout.devices else 1
    bar = StepProgress(
        f"  {setting.name}",
        num_steps,
        unit="epochs",
        enabled=progress_every is not None,
        every=progress_every or 0.0,
    )
    # one callback per padded seed and record: every seed's record done advances log_every epochs
    counter = CallCounter(bar, seeds + (-seeds) % devices, log_every)

    def eval_fn(params, stats, batch):
        if progress_every is not None:  # anchored on the chunk's params: runs when it is done
            jax.debug.callback(counter, params["linears"][0]["bias"][0])
        if not record_outputs:
            return {}
        return {"outputs": logits(setting, params, stats, batch[0])[0]}

    start = time.perf_counter()
    result = train_fullbatch(
        make_loss(setting),
        pytorch_optimizer(
            "adam" if setting.adam else "sgd",
            config.lr if setting.lr is None else setting.lr,
            momentum=0.0 if setting.adam else 0.9,
            weight_decay=setting.weight_decay,
        ),
        params0,
        (jnp.asarray(X), jnp.asarray(y01)),
        keys=train_keys,
        num_steps=num_steps,
        model_state=stats0,
        log_every=log_every,
        eval_fn=eval_fn,
        batch_axis=0,
        layout=layout,
        unroll=min(config.unroll, log_every),
    )
    jax.block_until_ready(result.state.params)
    seconds = time.perf_counter() - start
    bar.close()
    history = {k: np.asarray(v) for k, v in result.history.items()}
    return Trained(
        setting,
        X,
        y,
        params0,
        result.state.params,
        result.state.model_state,
        history,
        result.steps,
        seconds,
    )


def decision_functions(trained: Trained, points: np.ndarray) -> np.ndarray:
    """(S, m) eval-mode logits of every seed at ``points`` (m, 2)."""
    import jax
    import jax.numpy as jnp

    pts = jnp.asarray(points)
    fn = jax.jit(jax.vmap(lambda p, s: logits(trained.setting, p, s, pts)[0]))
    return np.asarray(fn(trained.params, trained.stats), dtype=np.float64)


def evaluate(trained: Trained) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of a trained setting and its seed-averaged decision function on the figure grid.

    Returns:
        ``(metrics, mean_values)``: metrics as in the module docstring; mean_values (100, 100).
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.boundary import boundary_metrics, grid, seed_metrics

    S = trained.X.shape[0]
    train_logits = np.asarray(
        jax.vmap(lambda p, s, x: logits(trained.setting, p, s, x)[0])(
            trained.params, trained.stats, jnp.asarray(trained.X)
        )
    )
    acc = np.mean(train_logits * trained.y > 0, axis=1)
    mxs, mys, mpts = grid(METRIC_GRID_SIZE, GRID_LIM)
    fine = decision_functions(trained, mpts).reshape(S, METRIC_GRID_SIZE, METRIC_GRID_SIZE)
    metrics: dict[str, Any] = {}
    metrics["train_accuracy"], metrics["train_accuracy_std"] = mean_std(acc)
    metrics.update(seed_metrics(mxs, mys, fine, trained.X))
    metrics["averaged"] = boundary_metrics(mxs, mys, fine.mean(0), trained.X[0])
    metrics["final_loss"] = (
        float(trained.history["loss"][:, -1].mean()) if trained.history else None
    )
    metrics["epochs"] = int(trained.epochs[-1]) if len(trained.epochs) else None
    _, _, pts = grid(GRID_SIZE, GRID_LIM)
    values = decision_functions(trained, pts).reshape(S, GRID_SIZE, GRID_SIZE).mean(0)
    return metrics, values


def feature_responses_over_training(
    trained: Trained, k: int = RESPONSE_DIRECTIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean z_j(t) = u_jᵀ Y (f(X; θ_t) − f(X; θ₀)) of the top-k NTK directions at θ₀.

    Each seed's spectrum at θ₀ (:func:`ntkdyn.analysis.analyse` of the initial network on its
    training set) and its measure of the outputs f(X; θ_t) recorded during training.

    Returns:
        ``(epochs (R + 1,), z (R + 1, k))`` starting at epoch 0 (z = 0).
    """
    import jax

    from ntkdyn.analysis import analyse
    from ntkdyn.models.mlp import DenseApply

    zs = []
    for s in range(trained.X.shape[0]):
        p0 = jax.tree.map(lambda a, s=s: a[s], trained.params0)
        a = analyse(DenseApply(), p0, trained.X[s], trained.y[s])
        m = a.measure(
            trained.history["outputs"][s], steps=trained.epochs, top=k, start_at_zero=True
        )
        zs.append(m.z)
    return m.steps, np.mean(zs, axis=0)


# --------------------------------------------------------------------------------------------------
# Report


def _summary(config: Config, results: dict[str, Any]) -> str:
    lines = [
        "# Two moons: decision boundaries of ERM, nine regularizers and Spectral Decoupling",
        "",
        f"{config.seeds} seeds, {config.epochs} epochs (×10 for train_longer), n = {config.n}, "
        f"noise = {config.noise}, width {config.hidden}; mean ± std over seeds. Main figure: "
        "erm_delta_minus, erm, sd (weight decay 2e-4); regularizer panels: the others (no weight "
        "decay but the weight_decay panel's).",
        "",
    ]
    columns = (
        "train_accuracy",
        "boundary_min_distance",
        "boundary_mean10_distance",
        "boundary_line_residual",
    )

    def cell(r, key):
        return format_mean_std(r.get(key), r.get(f"{key}_std"), scale=1.0, digits=3)

    rows = [
        [name, *(cell(results["configs"][name], key) for key in columns)]
        for name in config.config
        if name in results["configs"]
    ]
    lines += markdown_table(["configuration", *columns], rows)
    verdict = results.get("verdict")
    if verdict:
        lines += ["", f"SD ({PANEL_SD}) against the other regularizer panels (Δ = +0.1):", ""]
        for key, value in verdict.items():
            lines.append(f"* {key}: {value}")
    return "\n".join(lines) + "\n"


def _verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Whether the SD panel's boundary is farther and more curved than every other panel's."""
    configs = results["configs"]
    others = [c for c in REGULARIZERS if c != PANEL_SD and c in configs]
    if PANEL_SD not in configs or not others:
        return {}
    out: dict[str, Any] = {"compared_with": others}
    for key in ("boundary_min_distance", "boundary_line_residual"):
        sd = configs[PANEL_SD][key]
        out[f"sd_largest_{key.removeprefix('boundary_')}"] = bool(
            all(sd > configs[c][key] for c in others)
        )
    return out


def _write_arrays(out, values, data, responses) -> None:
    from ntkdyn.boundary import grid

    xs, ys, _ = grid(GRID_SIZE, GRID_LIM)
    arrays = {
        "xs": xs,
        "ys": ys,
        "names": np.array(list(values)),
        "values": np.stack([values[c] for c in values]),
    }
    for c in values:
        arrays[f"X_{c}"], arrays[f"y_{c}"] = data[c]
    for c in responses:
        arrays[f"epochs_{c}"], arrays[f"z_{c}"] = responses[c]
    out.write_npz("decision_functions.npz", **arrays)


def _read_arrays(out) -> tuple[dict, dict, dict]:
    path = out.file("decision_functions.npz")
    if not path.exists():
        raise FileNotFoundError(
            f"--replot: {str(path)!r} not found; run the experiment with this --out first"
        )
    with np.load(path) as npz:
        names = [str(c) for c in npz["names"]]
        values = {c: npz["values"][i] for i, c in enumerate(names)}
        data = {c: (npz[f"X_{c}"], npz[f"y_{c}"]) for c in names}
        responses = {c: (npz[f"epochs_{c}"], npz[f"z_{c}"]) for c in names if f"z_{c}" in npz.files}
    return values, data, responses


def _draw(out, values, data, responses) -> None:
    from ntkdyn.boundary import grid
    from ntkdyn.plots.moons import DecisionPanel, moons_main_figure, moons_regularizer_figure

    xs, ys, _ = grid(GRID_SIZE, GRID_LIM)
    if all(c in values for c in MAIN_FIGURE):
        panels = [DecisionPanel(SETTINGS[c].title, values[c], *data[c]) for c in MAIN_FIGURE]
        resp = {
            ("ERM" if c == "erm" else "SD"): responses[c] for c in ("erm", "sd") if c in responses
        }
        out.save_figure(moons_main_figure(xs, ys, panels, resp), "moons_main")
    regs = [c for c in REGULARIZERS if c in values]
    if regs:
        panels = [DecisionPanel(SETTINGS[c].title, values[c], *data[c]) for c in regs]
        out.save_figure(moons_regularizer_figure(xs, ys, panels), "moons_regularizers")


# --------------------------------------------------------------------------------------------------
# Command line


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


def resolve(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed arguments: the paper's (or ``quick()``), then the flags given.

    Raises:
        ConfigError: naming the field of a bad value (printed as its flag).
    """
    base = Config.quick() if args.quick else Config()
    return from_arguments(base, args)


def _record(config: Config, layout) -> dict[str, Any]:
    record = dataclasses.asdict(config)
    record.update(
        layout=layout.describe(),
        grid=dict(size=GRID_SIZE, lim=GRID_LIM),
        metric_grid_size=METRIC_GRID_SIZE,
        settings={c: SETTINGS[c].describe() for c in config.config},
    )
    return record


def run(args: argparse.Namespace) -> int:
    """Train the selected configurations, write metrics, results, summary and figures.

    Every setting is checked before the output folder is created.

    Raises:
        ConfigError: naming the flag of a bad value (unknown configuration, lr ≤ 0, epochs ≤ 0,
            n < 2, noise < 0, an unreadable --seed-layout, ...).
        FileNotFoundError: ``--replot`` of a folder without a finished run.
    """
    from ntkdyn.runs import RunDir

    if args.replot:
        if not os.path.isdir(args.out):
            raise FileNotFoundError(
                f"--replot: output directory {args.out!r} not found; pass the --out of a finished run"
            )
        out = RunDir(args.out)
        _draw(out, *_read_arrays(out))
        print(f"redrew the figures in {out.path}", file=sys.stderr)
        return 0
    config = resolve(args)
    layout = config.layout()
    quick = bool(args.quick)
    out = RunDir(args.out)
    out.write_config({**_record(config, layout), "quick": quick})
    results: dict[str, Any] = {"configs": {}}
    metrics_records: list[dict[str, Any]] = []
    values: dict[str, np.ndarray] = {}
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    responses: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in config.config:
        setting = SETTINGS[name]
        trained = train_setting(
            setting,
            config,
            layout=layout,
            record_outputs=name in MAIN_FIGURE,
            records=500 if name in MAIN_FIGURE else 200,
            progress_every=PROGRESS_SECONDS,
        )
        metrics, values[name] = evaluate(trained)
        data[name] = (trained.X[0], trained.y[0])
        if name in MAIN_FIGURE and setting.shallow:
            responses[name] = feature_responses_over_training(trained)
        results["configs"][name] = metrics
        metrics_records += seed_records(
            trained.history, trained.epochs, step_key="epoch", config=name
        )
        print(
            f"{name}: {trained.epochs[-1] if len(trained.epochs) else 0} epochs x "
            f"{config.seeds} seeds in {trained.seconds:.1f} s; train acc "
            f"{metrics['train_accuracy']:.3f}, min dist {metrics['boundary_min_distance']:.3f}, "
            f"line residual {metrics['boundary_line_residual']:.3f}",
            file=sys.stderr,
            flush=True,
        )
        results["verdict"] = _verdict(results)
        # After every configuration, so that --replot works on a partial run.
        _write_arrays(out, values, data, responses)
        out.write_metrics(metrics_records)
        out.write_results(results)
        out.write_text("summary.md", _summary(config, results))

    _draw(out, values, data, responses)
    print(f"wrote {out.path}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run as ``python -m ntkdyn.experiments.moons`` (same arguments as ``ntkdyn moons``)."""
    parser = argparse.ArgumentParser(
        prog="moons", description=HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
