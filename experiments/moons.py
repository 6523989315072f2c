"""Two-moons toy: ERM vs Spectral Decoupling decision boundaries, nine regularizers, feature responses.

Pezeshki et al. 2021, §3 and Fig. 1–3 (appendix: the regularizer comparison). A 2 → 500 → 1 ReLU
network is trained full batch on 300 two-moons points (:func:`ntkdyn.data.moons.two_moons`) with
SGD (lr 1e-2, momentum 0.9, weight decay 2e-4 — PyTorch-style, added to the gradient before the
momentum), the mean logistic loss softplus(−yŷ) and, for SD, the penalty 0.003·mean(ŷ²); 10 seeds
(seed s draws the data with seed s and its own initialisation), 10,000 epochs. Initialisation is
PyTorch's ``nn.Linear`` default, W, b ~ U(±1/√fan_in), as in the authors' code. The decision
function is averaged over the seeds on a 100 × 100 grid over [−2, 2]².

Configurations (``--config NAME``, repeatable; all by default):

===================  =========================================================================
``erm_delta_minus``  Δ = −0.1 (overlapping classes), ERM
``erm``              Δ = +0.1, ERM (the "no regularization" panel)
``sd``               Spectral Decoupling, 0.003·mean(ŷ²)
``weight_decay``     weight decay 0.01 instead of 2e-4
``train_longer``     10× the epochs
``adam_small_lr``    Adam, lr 1e-4 (with the same coupled weight decay 2e-4)
``adam_large_lr``    Adam, lr 3e-3
``rotation_45``      the data rotated by 45°
``dropout``          dropout 0.7 on the hidden layer (off at evaluation)
``batch_norm``       batch normalisation of the hidden pre-activations (running stats at evaluation)
``five_layers``      2 → 500 → 500 → 500 → 500 → 1
===================  =========================================================================

Metrics per configuration (mean and std over seeds, each seed's own boundary against its own data;
definitions in :mod:`ntkdyn.boundary`): train accuracy, ``boundary_min_distance``,
``boundary_mean10_distance``, ``boundary_line_residual``. The same metrics of the seed-averaged
decision function (the figures' boundary) against seed 0's data are under ``averaged``.

Command::

    ntkdyn moons --out runs/moons            # the paper's protocol (all 11 configurations)
    ntkdyn moons --quick --out /tmp/moons    # 2 seeds, 200 epochs, width 64: a smoke test
    ntkdyn moons --out runs/moons --replot   # redraw the figures from decision_functions.npz

Expected (paper, Fig. 1–3): ERM at Δ = +0.1 draws a nearly straight boundary close to the data
(small ``boundary_line_residual``, ``boundary_min_distance`` near the margin Δ); SD's boundary is
curved around the moons and farther from the data — larger ``boundary_min_distance`` and
``boundary_line_residual`` than ERM and every other regularizer. Δ = −0.1 ERM is curved too (the
overlap forces it). Outputs: ``config.json``, ``metrics.jsonl``, ``results.json``, ``summary.md``,
``decision_functions.npz``, ``moons_main.{png,pdf}``, ``moons_regularizers.{png,pdf}``.

The network is trained as a pure function of the :class:`ntkdyn.models.MLP` parameter PyTree (the
same layout, ``{"linears": {i: {"kernel", "bias"}}, "norms": …}``), not through the stateful
module: dropout masks come from ``fold_in(key, step)`` and batch-norm statistics are carried as
explicit state by the trainer (:func:`ntkdyn.train.fullbatch.train_fullbatch`). A single hidden
layer without dropout or batch norm trains through :func:`ntkdyn.models.mlp.shallow_relu` (the same
function, with a gradient that needs only the activation pattern). The seeds are split over all
local devices (``--no-shard`` keeps one); on a CPU, expose the cores as devices with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

HELP = (
    __doc__.split("\n\n")[0]
    + "\n\nPaper protocol by default; --quick for a smoke test. See the module docstring."
)

GRID_SIZE = 100  # the figures' grid: 100 × 100 over [−2, 2]²
METRIC_GRID_SIZE = 201  # a finer grid for the boundary metrics (spacing 0.02)
GRID_LIM = 2.0
RESPONSE_DIRECTIONS = 8  # feature responses kept for the top directions


@dataclasses.dataclass(frozen=True)
class Setting:
    """One training configuration of the two-moons experiment.

    Attributes:
        name: key in results.json.
        title: panel title.
        delta: the gap Δ of the data.
        rotation_deg: rotation of the data in degrees.
        adam: Adam instead of SGD with momentum.
        lr: learning rate (``None``: the command's ``--lr``, SGD's 1e-2 by default).
        weight_decay: coupled weight decay (added to the gradient, as PyTorch's ``weight_decay``).
        epoch_factor: multiple of the command's ``--epochs``.
        sd_coef: Spectral Decoupling coefficient c in c·mean(ŷ²).
        dropout: dropout probability on the hidden layers.
        batch_norm: batch normalisation before each hidden activation.
        hidden_layers: number of hidden layers of width ``--hidden``.
    """

    name: str
    title: str
    delta: float = 0.1
    rotation_deg: float = 0.0
    adam: bool = False
    lr: float | None = None
    weight_decay: float = 2e-4
    epoch_factor: int = 1
    sd_coef: float = 0.0
    dropout: float = 0.0
    batch_norm: bool = False
    hidden_layers: int = 1


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("erm_delta_minus", "Δ = −0.1, ERM", delta=-0.1),
        Setting("erm", "No regularization"),
        Setting("sd", "Spectral Decoupling", sd_coef=0.003),
        Setting("weight_decay", "Weight decay 0.01", weight_decay=0.01),
        Setting("train_longer", "Train 10× longer", epoch_factor=10),
        Setting("adam_small_lr", "Adam, lr 1e-4", adam=True, lr=1e-4),
        Setting("adam_large_lr", "Adam, lr 3e-3", adam=True, lr=3e-3),
        Setting("rotation_45", "45° rotation", rotation_deg=45.0),
        Setting("dropout", "Dropout 0.7", dropout=0.7),
        Setting("batch_norm", "Batch norm", batch_norm=True),
        Setting("five_layers", "Deeper network (5 layers)", hidden_layers=4),
    )
}
MAIN_FIGURE = ("erm_delta_minus", "erm", "sd")
MAIN_TITLES = {"erm_delta_minus": "Δ = −0.1, ERM", "erm": "Δ = +0.1, ERM", "sd": "Δ = +0.1, SD"}
REGULARIZERS = (
    "erm",
    "weight_decay",
    "train_longer",
    "adam_small_lr",
    "adam_large_lr",
    "rotation_45",
    "dropout",
    "batch_norm",
    "five_layers",
    "sd",
)


# --------------------------------------------------------------------------------------------------
# Model: the MLP's parameter PyTree trained as a pure function


def init_params(key, *, hidden: int, hidden_layers: int, batch_norm: bool) -> tuple[Any, Any]:
    """Initial (params, batch-norm state) of 2 → hidden^hidden_layers → 1, PyTorch's default init.

    Every weight and bias of layer l is U(±1/√fan_inₗ), as ``torch.nn.Linear``. All of them come
    from one uniform draw, sliced per layer (one random-bits kernel to compile, not one per array).

    Args:
        key: PRNG key.
        hidden: width of the hidden layers.
        hidden_layers: number of hidden layers.
        batch_norm: include batch-norm scale/shift params and running statistics.

    Returns:
        ``(params, stats)``: ``params`` in the layout of the :class:`ntkdyn.models.MLP` Param state
        (``{"linears": {l: {"kernel", "bias"}}, "norms": {l: {"scale", "bias"}}}``, kernels
        (fan_in, fan_out)); ``stats`` ``{"mean": {l: 0}, "var": {l: 1}}`` or ``None``.
    """
    import jax
    import jax.numpy as jnp

    widths = [2] + [hidden] * hidden_layers + [1]
    sizes = [(fan_in, fan_out) for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True)]
    u = jax.random.uniform(key, (sum((a + 1) * b for a, b in sizes),), jnp.float32, -1.0, 1.0)
    linears, offset = {}, 0
    for i, (fan_in, fan_out) in enumerate(sizes):
        block = u[offset : offset + (fan_in + 1) * fan_out].reshape(
            fan_in + 1, fan_out
        ) / math.sqrt(fan_in)
        linears[i] = {"kernel": block[:fan_in], "bias": block[fan_in]}
        offset += (fan_in + 1) * fan_out
    params: dict[str, Any] = {"linears": linears}
    stats = None
    if batch_norm:
        params["norms"] = {
            i: {
                "scale": jnp.ones((hidden,), jnp.float32),
                "bias": jnp.zeros((hidden,), jnp.float32),
            }
            for i in range(hidden_layers)
        }
        stats = {
            "mean": {i: jnp.zeros((hidden,), jnp.float32) for i in range(hidden_layers)},
            "var": {i: jnp.ones((hidden,), jnp.float32) for i in range(hidden_layers)},
        }
    return params, stats


def forward(
    params,
    stats,
    x,
    *,
    train: bool,
    key=None,
    dropout: float = 0.0,
    bn_momentum: float = 0.1,
    bn_eps: float = 1e-5,
):
    """Logits (n,) of the MLP and the updated batch-norm statistics.

    Hidden layer: h ← relu(BN(W h + b)), then dropout (train mode only; inverted scaling 1/(1 − p)).
    Batch norm (PyTorch semantics): train mode normalises with the batch mean and biased variance
    and updates running stats with momentum 0.1 (unbiased variance); eval mode uses running stats.

    Args:
        params: pure-dict MLP params (see :func:`init_params`).
        stats: batch-norm running statistics or ``None``.
        x: (n, 2) inputs.
        train: training mode (dropout on, batch statistics).
        key: PRNG key for dropout (train mode with dropout > 0).
        dropout: dropout probability.
        bn_momentum, bn_eps: batch-norm momentum and epsilon.

    Returns:
        ``(logits (n,), new_stats)``.
    """
    import jax
    import jax.numpy as jnp

    layers = [params["linears"][i] for i in sorted(params["linears"])]
    h = x
    new_stats = None if stats is None else {"mean": {}, "var": {}}
    for i, layer in enumerate(layers[:-1]):
        h = h @ layer["kernel"] + layer["bias"]
        if stats is not None:
            if train:
                mean = jnp.mean(h, axis=0)
                var = jnp.var(h, axis=0)
                n = h.shape[0]
                new_stats["mean"][i] = (1 - bn_momentum) * stats["mean"][i] + bn_momentum * mean
                new_stats["var"][i] = (1 - bn_momentum) * stats["var"][
                    i
                ] + bn_momentum * var * n / (n - 1)
            else:
                mean, var = stats["mean"][i], stats["var"][i]
                new_stats["mean"][i], new_stats["var"][i] = mean, var
            norm = params["norms"][i]
            h = (h - mean) * jax.lax.rsqrt(var + bn_eps) * norm["scale"] + norm["bias"]
        h = jax.nn.relu(h)
        if train and dropout > 0:
            keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout), 0.0)
    out = h @ layers[-1]["kernel"] + layers[-1]["bias"]
    return out[:, 0], new_stats


def make_optimizer(setting: Setting, lr: float):
    """PyTorch-style coupled weight decay followed by SGD with momentum 0.9 or Adam.

    Args:
        setting: the configuration (its own ``lr`` wins over ``lr``).
        lr: the SGD learning rate.

    Returns:
        An optax gradient transformation.
    """
    import optax

    lr = setting.lr if setting.lr is not None else lr
    base = optax.adam(lr) if setting.adam else optax.sgd(lr, momentum=0.9)
    return optax.chain(optax.add_decayed_weights(setting.weight_decay), base)


def make_loss(setting: Setting):
    """``loss_fn(params, stats, batch, step, key)`` of the trainer: mean softplus(−yŷ) + c·mean(ŷ²).

    Args:
        setting: the configuration (SD coefficient, dropout).

    Returns:
        The loss function for :func:`ntkdyn.train.fullbatch.train_fullbatch`.
    """
    import jax.numpy as jnp

    from ntkdyn.losses import logistic_loss, sd_penalty
    from ntkdyn.models.mlp import shallow_relu

    shallow = setting.hidden_layers == 1 and not setting.batch_norm and not setting.dropout

    def loss_fn(params, stats, batch, step, key):
        x, y = batch
        if shallow:  # the same function, with the activation-pattern gradient of shallow_relu
            hidden, out = params["linears"][0], params["linears"][1]
            f, new_stats = (
                shallow_relu(hidden["kernel"], hidden["bias"], out["kernel"], out["bias"], x),
                stats,
            )
        else:
            f, new_stats = forward(params, stats, x, train=True, key=key, dropout=setting.dropout)
        nll = logistic_loss(f, y)
        loss = nll + setting.sd_coef * sd_penalty(f) if setting.sd_coef else nll
        return loss, (new_stats, {"nll": nll, "acc": jnp.mean((f * y) > 0)})

    return loss_fn


# --------------------------------------------------------------------------------------------------
# Training and evaluation of one setting


@functools.cache
def _initial_state(seeds: int, hidden: int, hidden_layers: int, batch_norm: bool):
    """Compiled ``key -> (train keys, params0, stats0)`` of ``seeds`` seeds, one per architecture.

    Seed s initialises from ``fold_in(fold_in(key, s), 0)`` and trains with ``fold_in(fold_in(key, s), 1)``.
    One compiled call rather than many small vmapped ops, shared by every configuration of the same
    shape.
    """
    import jax
    import jax.numpy as jnp

    @jax.jit
    def initial(base):
        seed_keys = jax.vmap(jax.random.fold_in, (None, 0))(base, jnp.arange(seeds))
        init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(seed_keys)
        train_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(seed_keys)
        params0, stats0 = jax.vmap(
            lambda k: init_params(
                k, hidden=hidden, hidden_layers=hidden_layers, batch_norm=batch_norm
            )
        )(init_keys)
        return train_keys, params0, stats0

    return initial


class Trained(NamedTuple):
    """A trained setting: stacked over seeds (leading axis S)."""

    setting: Setting
    X: np.ndarray  # (S, n, 2)
    y: np.ndarray  # (S, n)
    params0: Any
    params: Any
    stats: Any
    history: dict[str, np.ndarray]  # (S, R) each; "outputs" (S, R, n) when recorded
    epochs: np.ndarray  # (R,)
    seconds: float


def train_setting(
    setting: Setting,
    *,
    seeds: int,
    epochs: int,
    lr: float,
    n: int,
    noise: float,
    hidden: int,
    seed: int,
    records: int = 200,
    record_outputs: bool = False,
    unroll: int = 1,
    seed_axis: str = "vmap",
    devices: Sequence[Any] | None = None,
) -> Trained:
    """Train one configuration on ``seeds`` seeds at once (one compiled call).

    Seed s trains on ``two_moons(seed=seed + s)`` from the key ``fold_in(key(seed), s)``.

    Args:
        setting: the configuration.
        seeds, epochs, lr, n, noise, hidden, seed: the protocol (``epochs`` before ``epoch_factor``).
        records: about how many metric records to keep.
        record_outputs: also record f(X; θ_t) on the training set (for feature responses).
        unroll: steps per scan iteration.
        seed_axis: ``"vmap"`` (all seeds in every step) or ``"map"`` (seeds one after another).
        devices: devices to split the seeds over (``None``: the default device). On a CPU, expose
            the cores as devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set
            before JAX starts.

    Returns:
        :class:`Trained`.
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.data.moons import two_moons
    from ntkdyn.train.fullbatch import train_fullbatch
    from ntkdyn.train.layout import SeedAxis, SeedLayout

    num_steps = epochs * setting.epoch_factor
    data = [
        two_moons(
            n=n, noise=noise, delta=setting.delta, rotation_deg=setting.rotation_deg, seed=seed + s
        )
        for s in range(seeds)
    ]
    X = np.stack([d[0] for d in data])
    y = np.stack([d[1] for d in data])

    initial = _initial_state(seeds, hidden, setting.hidden_layers, setting.batch_norm)
    train_keys, params0, stats0 = initial(jax.random.key(seed))

    eval_fn = None
    if record_outputs:

        def eval_fn(params, stats, batch):
            return {"outputs": forward(params, stats, batch[0], train=False)[0]}

    log_every = max(1, num_steps // records)
    start = time.perf_counter()
    result = train_fullbatch(
        make_loss(setting),
        make_optimizer(setting, lr),
        params0,
        (jnp.asarray(X), jnp.asarray(y)),
        keys=train_keys,
        num_steps=num_steps,
        model_state=stats0,
        log_every=log_every,
        eval_fn=eval_fn,
        batch_axis=0,
        layout=SeedLayout(SeedAxis(seed_axis), None, devices),
        unroll=min(unroll, log_every),
    )
    jax.block_until_ready(result.state.params)
    seconds = time.perf_counter() - start
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


def grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``xs``, ``ys`` (both linspace(−2, 2, size)) and the (size², 2) points in meshgrid order."""
    xs = np.linspace(-GRID_LIM, GRID_LIM, size)
    gx, gy = np.meshgrid(xs, xs)
    return xs, xs.copy(), np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def decision_functions(trained: Trained, points: np.ndarray) -> np.ndarray:
    """(S, m) eval-mode logits of every seed at ``points`` (m, 2)."""
    import jax
    import jax.numpy as jnp

    fn = jax.jit(jax.vmap(lambda p, s: forward(p, s, jnp.asarray(points), train=False)[0]))
    return np.asarray(fn(trained.params, trained.stats), dtype=np.float64)


def evaluate(trained: Trained) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of a trained setting and its seed-averaged decision function on the figure grid.

    Returns:
        ``(metrics, mean_values)``: metrics as in the module docstring; mean_values (100, 100).
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.boundary import boundary_metrics

    S = trained.X.shape[0]
    train_logits = np.asarray(
        jax.vmap(lambda p, s, x: forward(p, s, x, train=False)[0])(
            trained.params, trained.stats, jnp.asarray(trained.X)
        )
    )
    acc = np.mean(train_logits * trained.y > 0, axis=1)
    mxs, mys, mpts = grid(METRIC_GRID_SIZE)
    fine = decision_functions(trained, mpts).reshape(S, METRIC_GRID_SIZE, METRIC_GRID_SIZE)
    per_seed = [boundary_metrics(mxs, mys, fine[s], trained.X[s]) for s in range(S)]
    metrics: dict[str, Any] = {
        "train_accuracy": float(acc.mean()),
        "train_accuracy_std": float(acc.std()),
    }
    for key in per_seed[0]:
        vals = np.array([m[key] for m in per_seed])
        metrics[key] = float(np.mean(vals))
        metrics[f"{key}_std"] = float(np.std(vals))
    metrics["averaged"] = boundary_metrics(mxs, mys, fine.mean(0), trained.X[0])
    metrics["final_loss"] = (
        float(trained.history["loss"][:, -1].mean()) if trained.history else None
    )
    metrics["epochs"] = int(trained.epochs[-1]) if len(trained.epochs) else None
    xs, ys, pts = grid(GRID_SIZE)
    values = decision_functions(trained, pts).reshape(S, GRID_SIZE, GRID_SIZE).mean(0)
    return metrics, values


def feature_responses_over_training(
    trained: Trained, k: int = RESPONSE_DIRECTIONS
) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean z_j(t) = u_jᵀ Y (f(X; θ_t) − f(X; θ₀)) of the top-k NTK directions at θ₀.

    U is each seed's own (:func:`ntkdyn.tangent.feature_spectrum` of the initial network on its
    training set, signs fixed by u_jᵀ1 ≥ 0); f(X; θ_t) are the outputs recorded during training.

    Returns:
        ``(epochs (R + 1,), z (R + 1, k))`` starting at epoch 0 (z = 0).
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.models.mlp import DenseApply
    from ntkdyn.tangent import feature_spectrum, responses_from_outputs

    S = trained.X.shape[0]
    zs = []
    for s in range(S):
        p0 = jax.tree_util.tree_map(lambda a, s=s: a[s], trained.params0)
        spec = feature_spectrum(
            DenseApply(), p0, jnp.asarray(trained.X[s]), jnp.asarray(trained.y[s])
        )
        f0 = forward(p0, None, jnp.asarray(trained.X[s]), train=False)[0]
        z = responses_from_outputs(
            trained.history["outputs"][s], f0, trained.y[s], spec.U[:, :k]
        )  # (R, k)
        zs.append(np.asarray(z, np.float64))
    z = np.mean(zs, axis=0)
    return np.concatenate([[0], trained.epochs]), np.concatenate([np.zeros((1, z.shape[1])), z])


# --------------------------------------------------------------------------------------------------
# Command line


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``ntkdyn moons`` (the paper's protocol by default)."""
    parser.add_argument("--out", default="runs/moons", help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 seeds, 200 epochs, width 64 (under a minute)",
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
        help=f"configuration(s) to run (repeatable; default all): {', '.join(SETTINGS)}",
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (paper: 10)")
    parser.add_argument("--epochs", type=int, default=None, help="full-batch epochs (paper: 10000)")
    parser.add_argument(
        "--lr", type=float, default=1e-2, help="SGD learning rate (Adam settings keep their own)"
    )
    parser.add_argument("--n", type=int, default=300, help="number of training points")
    parser.add_argument("--noise", type=float, default=0.1, help="make_moons noise")
    parser.add_argument("--hidden", type=int, default=None, help="hidden width (paper: 500)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (seed s uses seed + s)")
    parser.add_argument("--unroll", type=int, default=1, help="training steps per scan iteration")
    parser.add_argument(
        "--no-shard",
        action="store_true",
        help="do not split the seeds over the local devices (on a CPU there is one device unless "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N is set before the command)",
    )
    parser.add_argument(
        "--seed-axis",
        choices=("map", "vmap"),
        default="vmap",
        help="seeds batched into every step (vmap; measured fastest on a 2-core CPU for every "
        "configuration here) or one after another in the same compiled call (map)",
    )


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    names = []
    for item in args.config or list(SETTINGS):
        names.extend(part for part in item.split(",") if part)
    unknown = [c for c in names if c not in SETTINGS]
    if unknown:
        raise ValueError(
            f"--config: unknown configuration {unknown[0]!r}; choose from {', '.join(SETTINGS)}"
        )
    names = [c for c in SETTINGS if c in names]  # canonical order, no duplicates
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 10)
    epochs = args.epochs if args.epochs is not None else (200 if args.quick else 10000)
    hidden = args.hidden if args.hidden is not None else (64 if args.quick else 500)
    checks = [
        ("--seeds", seeds, seeds >= 1, "an integer >= 1"),
        ("--epochs", epochs, epochs >= 1, "an integer >= 1"),
        ("--lr", args.lr, math.isfinite(args.lr) and args.lr > 0, "a finite number > 0"),
        ("--n", args.n, args.n >= 2, "an integer >= 2"),
        (
            "--noise",
            args.noise,
            math.isfinite(args.noise) and args.noise >= 0,
            "a finite number >= 0",
        ),
        ("--hidden", hidden, hidden >= 1, "an integer >= 1"),
        ("--unroll", args.unroll, args.unroll >= 1, "an integer >= 1"),
    ]
    for name, value, ok, what in checks:
        if not ok:
            raise ValueError(f"{name}: expected {what}, got {value!r}")
    return dict(
        configs=names,
        seeds=seeds,
        epochs=epochs,
        lr=args.lr,
        n=args.n,
        noise=args.noise,
        hidden=hidden,
        seed=args.seed,
        unroll=args.unroll,
        seed_axis=args.seed_axis,
        shard=not args.no_shard,
        quick=bool(args.quick),
        grid=dict(size=GRID_SIZE, lim=GRID_LIM),
        metric_grid_size=METRIC_GRID_SIZE,
        settings={c: dataclasses.asdict(SETTINGS[c]) for c in names},
    )


def _summary(config: dict[str, Any], results: dict[str, Any]) -> str:
    lines = [
        "# Two moons: decision boundaries of ERM, nine regularizers and Spectral Decoupling",
        "",
        f"{config['seeds']} seeds, {config['epochs']} epochs (×10 for train_longer), n = {config['n']}, "
        f"noise = {config['noise']}, width {config['hidden']}; mean ± std over seeds.",
        "",
        "| configuration | train acc | boundary_min_distance | boundary_mean10_distance | boundary_line_residual |",
        "| --- | --- | --- | --- | --- |",
    ]

    def fmt(r, key, digits=3):
        v, sd = r.get(key), r.get(f"{key}_std")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.{digits}f} ± {sd:.{digits}f}"

    for name in config["configs"]:
        r = results["configs"].get(name)
        if r is not None:
            lines.append(
                f"| {name} | {fmt(r, 'train_accuracy')} | {fmt(r, 'boundary_min_distance')} | "
                f"{fmt(r, 'boundary_mean10_distance')} | {fmt(r, 'boundary_line_residual')} |"
            )
    verdict = results.get("verdict")
    if verdict:
        lines += ["", "SD against ERM and the other regularizers (Δ = +0.1):", ""]
        for key, value in verdict.items():
            lines.append(f"* {key}: {value}")
    return "\n".join(lines) + "\n"


def _verdict(results: dict[str, Any]) -> dict[str, Any]:
    configs = results["configs"]
    if "sd" not in configs:
        return {}
    others = [c for c in REGULARIZERS if c != "sd" and c in configs]
    if not others:
        return {}
    out = {"compared_with": others}
    for key in ("boundary_min_distance", "boundary_line_residual"):
        sd = configs["sd"][key]
        out[f"sd_largest_{key.removeprefix('boundary_')}"] = bool(
            all(sd > configs[c][key] for c in others)
        )
    return out


def _write_arrays(out, values, data, responses) -> None:
    xs, ys, _ = grid(GRID_SIZE)
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
    from ntkdyn.plots.moons import DecisionPanel, moons_main_figure, moons_regularizer_figure

    xs, ys, _ = grid(GRID_SIZE)
    if all(c in values for c in MAIN_FIGURE):
        panels = [DecisionPanel(MAIN_TITLES[c], values[c], *data[c]) for c in MAIN_FIGURE]
        resp = {
            ("ERM" if c == "erm" else "SD"): responses[c] for c in ("erm", "sd") if c in responses
        }
        out.save_figure(moons_main_figure(xs, ys, panels, resp), "moons_main")
    regs = [c for c in REGULARIZERS if c in values]
    if regs:
        panels = [DecisionPanel(SETTINGS[c].title, values[c], *data[c]) for c in regs]
        out.save_figure(moons_regularizer_figure(xs, ys, panels), "moons_regularizers")


def run(args: argparse.Namespace) -> int:
    """Train the selected configurations, write metrics, results, summary and figures.

    Raises:
        ValueError: naming the argument on bad input (unknown configuration, lr ≤ 0, epochs ≤ 0,
            n < 2, noise < 0, ...).
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
    from ntkdyn.train.layout import SeedLayout

    config = _resolve(args)
    devices = SeedLayout.local().devices if config["shard"] else None
    config["devices"] = len(devices) if devices else 1
    out = RunDir(args.out)
    out.write_config(config)
    results: dict[str, Any] = {"configs": {}}
    metrics_records: list[dict[str, Any]] = []
    values: dict[str, np.ndarray] = {}
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    responses: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in config["configs"]:
        setting = SETTINGS[name]
        trained = train_setting(
            setting,
            seeds=config["seeds"],
            epochs=config["epochs"],
            lr=config["lr"],
            n=config["n"],
            noise=config["noise"],
            hidden=config["hidden"],
            seed=config["seed"],
            record_outputs=name in MAIN_FIGURE,
            records=500 if name in MAIN_FIGURE else 200,
            unroll=config["unroll"],
            seed_axis=config["seed_axis"],
            devices=devices,
        )
        metrics, values[name] = evaluate(trained)
        data[name] = (trained.X[0], trained.y[0])
        if name in MAIN_FIGURE and setting.hidden_layers == 1 and not setting.batch_norm:
            responses[name] = feature_responses_over_training(trained)
        results["configs"][name] = metrics
        for r, epoch in enumerate(trained.epochs):
            rec = {"config": name, "epoch": int(epoch)}
            for key, hist in trained.history.items():
                if hist.ndim == 2:
                    rec[key] = float(hist[:, r].mean())
                    rec[f"{key}_std"] = float(hist[:, r].std())
            metrics_records.append(rec)
        print(
            f"{name}: {trained.epochs[-1] if len(trained.epochs) else 0} epochs x {config['seeds']} seeds in "
            f"{trained.seconds:.1f} s; train acc {metrics['train_accuracy']:.3f}, "
            f"min dist {metrics['boundary_min_distance']:.3f}, line residual {metrics['boundary_line_residual']:.3f}",
            file=sys.stderr,
            flush=True,
        )
        results["verdict"] = _verdict(results)
        _write_arrays(
            out, values, data, responses
        )  # after every configuration: --replot works on partial runs
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
