"""Colored MNIST: ERM, IRMv1, V-REx, Spectral Decoupling and the grayscale oracle.

Pezeshki et al. 2021, Sec. 4, Table 1 and Fig. 4, on the environments of Arjovsky et al. 2019
(:mod:`ntkdyn.data.colored_mnist`). A colour predicts the training label (85 %) better than the
digit shape (75 %) and is reversed at test time; ERM learns the colour, SD learns the shape too.

Commands::

    ntkdyn cmnist --out runs/cmnist                        # 10 restarts, all five methods
    ntkdyn cmnist --method sd irm --data-dir ~/data/mnist  # chosen methods, MNIST from files
    ntkdyn cmnist --sweep --method sd --out runs/cmnist_sd # coefficient sweep, both selection rules
    ntkdyn cmnist --quick --out /tmp/cmnist                # smoke test (< 2 min on 2 CPU cores)
    ntkdyn cmnist --data-dir MNIST --restarts 5 --out runs/a                  # restarts 0-4 ...
    ntkdyn cmnist --data-dir MNIST --restarts 5 --first-restart 5 --out runs/b  # ... and 5-9 elsewhere
    ntkdyn cmnist --merge runs/a runs/b --out runs/cmnist_10                  # = one run of restarts 0-9

Expected on full MNIST (published, 10 restarts; train / test accuracy in %):

    ERM     91.1 ± 0.4 / 23.7 ± 0.8        SD      70.0 ± 0.9 / 68.4 ± 1.2
    IRM     70.5 ± 0.6 / 67.1 ± 1.4        V-REx   71.5 ± 1.0 / 68.7 ± 0.9
    grayscale oracle 73.5 ± 0.2 / 73.0 ± 0.4                optimum 75 / 75

and the probe (Fig. 4; accuracy % on digit-gray / digit-colour / blank-gray / blank-colour):
ERM 63.3 / 23.9 / 49.9 / 9.4, SD 68.3 / 67.2 / 50.0 / 9.4, IRM 66.9 / 66.6 / 49.7 / 49.6.
Measured with ``ntkdyn cmnist --data-dir MNIST`` (10 restarts, seed 0; run as restarts 0-4 and 5-9
and joined with ``--merge``):

    ERM     91.1 ± 0.3 / 23.1 ± 0.7        SD      70.1 ± 0.6 / 68.1 ± 1.1
    IRM     71.3 ± 0.9 / 66.0 ± 2.5        V-REx   71.3 ± 1.3 / 68.6 ± 1.1
    grayscale oracle 73.7 ± 0.2 / 73.0 ± 0.5

and the probe: ERM 63.1 / 23.1 / 50.0 / 10.0, SD 68.4 / 68.1 / 49.7 / 14.0, IRM 67.9 / 66.0 / 49.7 / 41.9
(the blank, colour input sits near the decision threshold, so it swings between 10 % and chance from
one restart to the next).

On the embedded 5,000-image subset (4,166 training images) the published hyperparameters transfer
only partly: every method fits the small training set further than on full MNIST. Measured with
``ntkdyn cmnist --data-source embedded`` (10 restarts, seed 0; train / test accuracy in %):

    ERM     100.0 ± 0.0 / 24.2 ± 1.4       SD      74.2 ± 1.1 / 60.3 ± 1.8
    IRM      92.9 ± 0.6 / 28.2 ± 2.9       V-REx   96.6 ± 0.4 / 27.0 ± 1.7
    grayscale oracle 87.1 ± 0.8 / 65.2 ± 1.5

(IRM's and V-REx's penalties, tuned for 50,000 training images, do not stop the colour here; SD keeps
the digit: probe accuracy on coloured digits 60.3 % vs ERM's 24.2 %.)

Model selection: every published hyperparameter on this task was tuned against the *test*
environment (test-domain selection), which the reports say. ``--sweep`` offers the honest
alternative: a grid over each method's key coefficient, selected by accuracy on a held-out part of the
training environments (training-domain validation), reported beside the test-domain choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

HELP = (
    "Colored MNIST (Pezeshki et al. 2021, Table 1, Fig. 4): ERM, IRMv1, V-REx, Spectral Decoupling and "
    "the grayscale oracle, with the four-input probe and the feature responses of the top NTK directions."
)

METHODS: tuple[str, ...] = ("erm", "irm", "vrex", "sd", "oracle")
PROBE_INPUTS: tuple[str, ...] = ("digit_gray", "digit_color", "blank_gray", "blank_color")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """One method's hyperparameters (full batch, Adam, MLP 2·196 → h → h → 1).

    Attributes:
        name: ``erm``, ``irm``, ``vrex``, ``sd`` or ``oracle``.
        hidden: width h of both hidden layers.
        lr: Adam learning rate.
        steps: number of full-batch steps.
        l2: coefficient of Σ‖w‖² over all parameters (weights and biases).
        penalty: IRMv1 λ, V-REx β or the SD coefficient c (unused by ERM and the oracle).
        anneal_steps: the step from which the penalty takes its final form.
        grayscale: train on the channel-summed images (the oracle).
    """

    name: str
    hidden: int
    lr: float
    steps: int
    l2: float = 0.0
    penalty: float = 0.0
    anneal_steps: int = 0
    grayscale: bool = False


#: Published settings (Pezeshki et al. 2021, App.; IRM and V-REx from their authors' released code).
DEFAULTS: dict[str, MethodConfig] = {
    "erm": MethodConfig("erm", hidden=300, lr=1e-4, steps=1001),
    "irm": MethodConfig(
        "irm",
        hidden=390,
        lr=0.0004898536566546834,
        steps=501,
        l2=0.00110794568,
        penalty=91257.18613115903,
        anneal_steps=190,
    ),
    "vrex": MethodConfig(
        "vrex", hidden=256, lr=1e-3, steps=501, l2=1e-3, penalty=1e4, anneal_steps=100
    ),
    "sd": MethodConfig("sd", hidden=300, lr=1e-4, steps=2001, penalty=2e-5, anneal_steps=450),
    "oracle": MethodConfig("oracle", hidden=83, lr=2.817e-3, steps=101, l2=8.6e-4, grayscale=True),
}

#: Published train / test accuracy (fractions; mean, std over 10 restarts) and probe results.
PUBLISHED: dict[str, dict[str, Any]] = {
    "erm": {
        "train": (0.911, 0.004),
        "test": (0.237, 0.008),
        "probe": {"acc": (0.633, 0.239, 0.499, 0.094), "entropy": (0.54, 0.44, 0.63, 0.00)},
    },
    "irm": {
        "train": (0.705, 0.006),
        "test": (0.671, 0.014),
        "probe": {"acc": (0.669, 0.666, 0.497, 0.496), "entropy": (0.60, 0.59, 0.65, 0.64)},
    },
    "vrex": {"train": (0.715, 0.010), "test": (0.687, 0.009)},
    "sd": {
        "train": (0.700, 0.009),
        "test": (0.684, 0.012),
        "probe": {"acc": (0.683, 0.672, 0.500, 0.094), "entropy": (0.66, 0.63, 0.66, 0.41)},
    },
    "oracle": {"train": (0.735, 0.002), "test": (0.730, 0.004)},
}

#: Multipliers of the swept coefficient (``--sweep``); ERM sweeps l2 over SWEEP_ERM_L2 instead.
SWEEP_FACTORS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
SWEEP_ERM_L2: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)

LABELS = {"erm": "ERM", "irm": "IRMv1", "vrex": "V-REx", "sd": "SD", "oracle": "Grayscale oracle"}


def quick_config(cfg: MethodConfig) -> MethodConfig:
    """The ``--quick`` version: 1/20 of the steps (annealing scaled alike), same hyperparameters."""
    return dataclasses.replace(
        cfg, steps=max(cfg.steps // 20, 5), anneal_steps=cfg.anneal_steps // 20
    )


# ------------------------------------------------------------------------------------------ losses


def method_loss(cfg: MethodConfig) -> Callable:
    """The training objective of ``cfg.name`` as ``(logits, labels, sqnorm, hp, step) -> (loss, metrics)``.

    ``logits``/``labels`` are pairs (environment 1, environment 2) of (n_e,) arrays, labels in {0, 1};
    ``sqnorm`` = Σ‖w‖² over all parameters; ``hp`` = {"penalty", "l2"} (per-seed scalars, so a sweep
    vmaps); ``step`` the 0-based step. R_e is the mean binary cross-entropy of environment e and
    R the pooled mean over both.

    * ERM, oracle: R + l2·Σ‖w‖².
    * SD (the authors' annealing): R + c·mean(ŷ²) before ``anneal_steps``, c·(R + mean(ŷ²)) after.
    * IRMv1: [½(R₁ + R₂) + l2·Σ‖w‖² + λ_t·½(P₁ + P₂)] / max(λ_t, 1), P_e = (∂R_e(w·ŷ)/∂w|_{w=1})²,
      λ_t = 1 before ``anneal_steps`` and λ after (Arjovsky et al. 2019).
    * V-REx: [R₁ + R₂ + l2·Σ‖w‖² + β_t(R₁ − R₂)²] / max(β_t, 1), β_t = 1 before ``anneal_steps`` and β
      after (Krueger et al. 2021).

    Raises:
        ValueError: on an unknown method name.
    """
    import jax.numpy as jnp

    from ntkdyn.losses import binary_cross_entropy, irm_penalty, sd_penalty, vrex_penalty

    if cfg.name not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {cfg.name!r}")
    name, anneal = cfg.name, cfg.anneal_steps

    def loss(logits, labels, sqnorm, hp, step):
        pooled, y = jnp.concatenate(logits), jnp.concatenate(labels)
        nll = binary_cross_entropy(pooled, y)
        metrics = {"nll": nll}
        if name in ("erm", "oracle"):
            return nll + hp["l2"] * sqnorm, metrics
        if name == "sd":
            sd = sd_penalty(pooled)
            c = hp["penalty"]
            metrics["penalty"] = sd
            return jnp.where(step < anneal, nll + c * sd, c * (nll + sd)), metrics
        risks = jnp.stack([binary_cross_entropy(f, t) for f, t in zip(logits, labels, strict=True)])
        weight = jnp.where(step >= anneal, hp["penalty"], 1.0)
        scale = jnp.where(weight > 1.0, weight, 1.0)
        if name == "irm":
            pen = jnp.mean(
                jnp.stack([irm_penalty(f, t) for f, t in zip(logits, labels, strict=True)])
            )
            metrics["penalty"] = pen
            return (jnp.mean(risks) + hp["l2"] * sqnorm + weight * pen) / scale, metrics
        pen = 4.0 * vrex_penalty(risks)  # (R₁ − R₂)²
        metrics["penalty"] = pen
        return (jnp.sum(risks) + hp["l2"] * sqnorm + weight * pen) / scale, metrics

    return loss


# -------------------------------------------------------------------------------------------- data


def prepare_batches(
    envs, *, grayscale: bool, val_frac: float = 0.0, n_z: int = 0, dtype=None
) -> dict[str, Any]:
    """Stacked per-restart batches from stacked :class:`~ntkdyn.data.colored_mnist.ColoredMNIST` environments.

    Args:
        envs: ColoredMNIST with a leading restart axis R on every leaf.
        grayscale: channel-summed (R, n, 196) inputs instead of (R, n, 392).
        val_frac: fraction of each training environment held out (its last images) as
            training-domain validation data.
        n_z: number of training examples (the first of each environment, alternating) on which
            outputs are recorded for the feature responses.
        dtype: input dtype (default float32).

    Returns:
        dict of arrays with a leading R axis: x1, y1, x2, y2 (training environments), xt, yt (test),
        xv, yv (validation, if ``val_frac``), xz, yz (feature-response examples, if ``n_z``).

    Raises:
        ValueError: if ``val_frac`` is not in [0, 0.5] or ``n_z`` exceeds the training data.
    """
    import jax.numpy as jnp

    from ntkdyn.data.colored_mnist import grayscale as to_gray

    dtype = jnp.float32 if dtype is None else dtype
    if not 0.0 <= val_frac <= 0.5:
        raise ValueError(f"val_frac: expected a fraction in [0, 0.5], got {val_frac}")

    def inputs(env):
        x = to_gray(env.images) if grayscale else env.flat
        return x.astype(dtype)

    out: dict[str, Any] = {}
    xs_v, ys_v = [], []
    for i, env in enumerate(envs.train, start=1):
        x, y = inputs(env), env.labels.astype(dtype)
        n = x.shape[1]
        n_val = int(round(val_frac * n))
        if n_val:
            xs_v.append(x[:, n - n_val :])
            ys_v.append(y[:, n - n_val :])
            x, y = x[:, : n - n_val], y[:, : n - n_val]
        out[f"x{i}"], out[f"y{i}"] = x, y
    out["xt"], out["yt"] = inputs(envs.test), envs.test.labels.astype(dtype)
    if xs_v:
        out["xv"], out["yv"] = jnp.concatenate(xs_v, axis=1), jnp.concatenate(ys_v, axis=1)
    if n_z:
        half = (n_z + 1) // 2
        if half > min(out["x1"].shape[1], out["x2"].shape[1]):
            raise ValueError(
                f"n_z: {n_z} feature-response examples exceed the training data ({out['x1'].shape[1]} per environment)"
            )
        xz = jnp.stack([out["x1"][:, :half], out["x2"][:, :half]], axis=2).reshape(
            out["x1"].shape[0], 2 * half, -1
        )
        yz = jnp.stack([out["y1"][:, :half], out["y2"][:, :half]], axis=2).reshape(
            out["x1"].shape[0], 2 * half
        )
        out["xz"], out["yz"] = xz[:, :n_z], yz[:, :n_z]
    return out


# ---------------------------------------------------------------------------------------- training


def binary_entropy_from_logits(logits):
    """Mean binary entropy (nats) of σ(logits): H = p·softplus(−f) + (1 − p)·softplus(f), p = σ(f)."""
    import jax
    import jax.numpy as jnp

    p = jax.nn.sigmoid(logits)
    return jnp.mean(p * jax.nn.softplus(-logits) + (1.0 - p) * jax.nn.softplus(logits))


def fit_metrics(logits_of, batch) -> dict[str, Any]:
    """Accuracy and mean binary cross-entropy on the pooled training environments and on the test environment.

    Args:
        logits_of: ``x -> (n,)`` logits of one model.
        batch: one seed's ``x1``, ``y1``, ``x2``, ``y2``, ``xt``, ``yt`` (see :func:`prepare_batches`).

    Returns:
        ``{"train_acc", "train_nll", "test_acc", "test_nll"}`` scalars.
    """
    import jax.numpy as jnp

    from ntkdyn.losses import binary_accuracy, binary_cross_entropy

    f = jnp.concatenate([logits_of(batch["x1"]), logits_of(batch["x2"])])
    y = jnp.concatenate([batch["y1"], batch["y2"]])
    ft = logits_of(batch["xt"])
    return {
        "train_acc": binary_accuracy(f, y),
        "train_nll": binary_cross_entropy(f, y),
        "test_acc": binary_accuracy(ft, batch["yt"]),
        "test_nll": binary_cross_entropy(ft, batch["yt"]),
    }


@dataclasses.dataclass
class MethodRun:
    """What :func:`train_method` returns (arrays with a leading seed axis S).

    Attributes:
        config: the method's configuration.
        apply_fn: pure ``apply_fn(params, x) -> (n, 1)``.
        params0: initial parameters (stacked).
        params: final parameters (stacked).
        history: logged arrays (S, records, ...).
        steps: (records,) step counts of the records.
        seconds: wall-clock training time (compilation included).
    """

    config: MethodConfig
    apply_fn: Any
    params0: Any
    params: Any
    history: dict[str, Any]
    steps: Any
    seconds: float


def init_params(cfg: MethodConfig, keys):
    """Stacked Xavier-uniform / zero-bias MLP parameters, one set per key, and the pure ``apply_fn``."""
    import jax

    from ntkdyn.models.mlp import init_mlp, xavier_uniform

    d_in = 196 if cfg.grayscale else 392
    apply_fn, _ = init_mlp(keys[0], d_in, [cfg.hidden, cfg.hidden], 1, kernel_init=xavier_uniform)
    params = jax.vmap(
        lambda k: init_mlp(k, d_in, [cfg.hidden, cfg.hidden], 1, kernel_init=xavier_uniform)[1]
    )(keys)
    return apply_fn, params


def train_method(
    cfg: MethodConfig,
    batches: dict[str, Any],
    keys,
    *,
    hp: dict[str, Any] | None = None,
    log_every: int | None = 10,
    devices: Sequence[Any] | None = None,
    seed_chunk: int | None = None,
    compiler_options: dict[str, Any] | None = None,
) -> MethodRun:
    """Train one method on S seeds at once (vmap over seeds, ``lax.scan`` over full-batch steps).

    Args:
        cfg: the method configuration.
        batches: per-seed data from :func:`prepare_batches` (leading axis S).
        keys: (S,) initialisation keys.
        hp: per-seed ``{"penalty": (S,), "l2": (S,)}`` (default: ``cfg``'s values for every seed).
        log_every: record train/test accuracy and loss (and outputs on ``xz``) every this many steps.
        devices: devices to shard the seed axis over (``None``: the default device).
        seed_chunk: seeds batched into each step, the chunks one after another (``None``: all;
            see :func:`ntkdyn.train.fullbatch.train_fullbatch`).
        compiler_options: XLA compiler options of the training call (e.g.
            :func:`ntkdyn.train.fullbatch.eigen_matmul_options`); ``None``: the defaults.

    Returns:
        :class:`MethodRun`.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from ntkdyn.losses import binary_accuracy
    from ntkdyn.train.fullbatch import train_fullbatch
    from ntkdyn.train.layout import SeedAxis, SeedLayout

    apply_fn, params0 = init_params(cfg, keys)
    S = keys.shape[0]
    dtype = batches["x1"].dtype
    if hp is None:
        hp = {"penalty": jnp.full((S,), cfg.penalty, dtype), "l2": jnp.full((S,), cfg.l2, dtype)}
    objective = method_loss(cfg)

    def logits_of(params, x):
        return apply_fn(params, x)[:, 0]

    def loss_fn(params, hp, batch, step, key):
        logits = (logits_of(params, batch["x1"]), logits_of(params, batch["x2"]))
        sqnorm = sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(params))
        loss, metrics = objective(logits, (batch["y1"], batch["y2"]), sqnorm, hp, step)
        return loss, (hp, metrics)

    def eval_fn(params, hp, batch):
        rec = fit_metrics(lambda x: logits_of(params, x), batch)
        if "xv" in batch:
            rec["val_acc"] = binary_accuracy(logits_of(params, batch["xv"]), batch["yv"])
        if "xz" in batch:
            rec["f_z"] = logits_of(params, batch["xz"])
        return rec

    start = time.perf_counter()
    result = train_fullbatch(
        loss_fn,
        optax.adam(cfg.lr),
        params0,
        batches,
        keys=keys,
        num_steps=cfg.steps,
        model_state=hp,
        log_every=log_every,
        eval_fn=eval_fn,
        batch_axis=0,
        layout=SeedLayout(SeedAxis.VMAP, seed_chunk, devices),
        compiler_options=compiler_options,
    )
    jax.block_until_ready(result.state.params)
    seconds = time.perf_counter() - start
    return MethodRun(
        cfg, apply_fn, params0, result.state.params, result.history, result.steps, seconds
    )


def evaluate(run: MethodRun, batches: dict[str, Any], probe: dict[str, Any]) -> dict[str, Any]:
    """Final accuracies and the four-input probe for every seed.

    Args:
        run: a trained :class:`MethodRun`.
        batches: the data it was trained on.
        probe: input name → (S, n, d_in) probe inputs (for the oracle already grayscale).

    Returns:
        dict of (S,) numpy arrays: ``train_acc``, ``test_acc``, ``val_acc`` (if validation data), and
        ``probe`` → name → {"acc", "entropy"} (S,) arrays.
    """
    import jax
    import numpy as np

    from ntkdyn.losses import binary_accuracy

    def per_seed(params, b, pr):
        def lg(x):
            return run.apply_fn(params, x)[:, 0]

        fit = fit_metrics(lg, b)
        out = {"train_acc": fit["train_acc"], "test_acc": fit["test_acc"]}
        if "xv" in b:
            out["val_acc"] = binary_accuracy(lg(b["xv"]), b["yv"])
        out["probe"] = {
            k: {
                "acc": binary_accuracy(lg(x), b["yt"]),
                "entropy": binary_entropy_from_logits(lg(x)),
            }
            for k, x in pr.items()
        }
        return out

    data = {k: v for k, v in batches.items() if k not in ("xz", "yz")}
    res = jax.jit(jax.vmap(per_seed))(run.params, data, probe)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), res)


def probe_batches(envs, *, grayscale: bool, dtype=None) -> dict[str, Any]:
    """Stacked probe inputs (Fig. 4) of the test environments, flattened for the MLP."""
    import jax
    import jax.numpy as jnp

    from ntkdyn.data.colored_mnist import grayscale as to_gray
    from ntkdyn.data.colored_mnist import probe_inputs

    dtype = jnp.float32 if dtype is None else dtype
    raw = jax.vmap(probe_inputs)(envs.test)
    if grayscale:
        return {k: to_gray(v).astype(dtype) for k, v in raw.items()}
    return {k: v.reshape(*v.shape[:-3], 392).astype(dtype) for k, v in raw.items()}


def feature_response_curves(
    run: MethodRun, batches: dict[str, Any], *, seed: int = 0, top: int = 100
) -> dict[str, Any]:
    """z(t) = Uᵀ Y (f(X; θ_t) − f(X; θ₀)) of the top NTK directions over training, for one seed.

    U comes from the spectrum of YΦ at θ₀ on the ``xz`` examples (:func:`ntkdyn.tangent.feature_spectrum`,
    structured NTK); the outputs f(X; θ_t) were recorded during training.

    Returns:
        dict: ``steps`` (R + 1,), ``z`` (R + 1, k), ``s`` (k,) singular values, and the train/test loss and
        accuracy curves (R + 1,), the first entry at step 0.
    """
    import jax
    import numpy as np

    from ntkdyn.tangent import NTKMethod, feature_spectrum, responses_from_outputs

    params0 = jax.tree_util.tree_map(lambda a: a[seed], run.params0)
    xz, yz = batches["xz"][seed], batches["yz"][seed]
    spec = feature_spectrum(run.apply_fn, params0, xz, yz, method=NTKMethod.STRUCTURED)
    U = spec.U[:, :top]
    z = np.asarray(
        responses_from_outputs(run.history["f_z"][seed], run.apply_fn(params0, xz)[:, 0], yz, U),
        np.float64,
    )
    z = np.concatenate([np.zeros((1, U.shape[1])), z], axis=0)  # (R + 1, k), z = 0 at step 0

    first = fit_metrics(
        lambda x: run.apply_fn(params0, x)[:, 0],
        {k: batches[k][seed] for k in ("x1", "y1", "x2", "y2", "xt", "yt")},
    )

    def curve(k):
        return np.concatenate([[float(first[k])], np.asarray(run.history[k][seed], np.float64)])

    return {
        "steps": np.concatenate([[0], np.asarray(run.steps)]),
        "z": z,
        "s": np.asarray(spec.s)[:top],
        "train_loss": curve("train_nll"),
        "test_loss": curve("test_nll"),
        "train_acc": curve("train_acc"),
        "test_acc": curve("test_acc"),
    }


# ------------------------------------------------------------------------------------------ driver


@dataclasses.dataclass(frozen=True)
class Config:
    """Resolved configuration of one ``ntkdyn cmnist`` run (written to config.json).

    Attributes:
        methods: methods to run, in order.
        restarts: number of restarts (independent environments + initialisations).
        first_restart: index of the first restart: the run trains restarts ``first_restart`` …
            ``first_restart + restarts − 1`` of the protocol, with the environments and
            initialisations those restarts get in a single longer run, so that a protocol can be
            split over jobs and joined with :func:`merge_runs`.
        seed: the root PRNG seed.
        data_source: ``auto``, ``files``, ``download`` or ``embedded``.
        data_dir: a directory with MNIST files, or ``None``.
        max_images: use at most this many MNIST training images (``None``: all).
        quick: 1/20 of the steps (smoke test).
        sweep: run the coefficient sweep with training-domain validation.
        val_frac: held-out fraction of each training environment when sweeping.
        n_z: examples for the feature responses (0 disables them).
        z_methods: methods whose feature responses are tracked.
        log_every: steps between records.
        shard: split the seed axis over all local devices.
        seed_chunk: restarts batched into each training step, the chunks one after another
            (``None``: 2 on a CPU, all of them on an accelerator).
        cpu_matmul: ``"eigen"`` computes the matrix products with Eigen on a CPU (measured faster
            for these steps, see :func:`ntkdyn.train.fullbatch.eigen_matmul_options`);
            ``"default"`` keeps XLA's choice. No effect on accelerators.
        methods_config: each method's :class:`MethodConfig`.
    """

    methods: tuple[str, ...] = METHODS
    restarts: int = 10
    first_restart: int = 0
    seed: int = 0
    data_source: str = "auto"
    data_dir: str | None = None
    max_images: int | None = None
    quick: bool = False
    sweep: bool = False
    val_frac: float = 0.1
    n_z: int = 500
    z_methods: tuple[str, ...] = ("erm", "sd")
    log_every: int = 10
    shard: bool = True
    seed_chunk: int | None = None
    cpu_matmul: str = "eigen"
    methods_config: dict[str, MethodConfig] = dataclasses.field(default_factory=dict)


#: Choices of :attr:`Config.cpu_matmul`.
CPU_MATMUL = ("eigen", "default")


def resolve_config(**kwargs) -> Config:
    """A :class:`Config` with defaults filled in and validated (``--quick`` applied).

    Raises:
        ValueError: on an unknown method, restarts < 1, bad ``val_frac``/``n_z``/``log_every``/``max_images``/
            ``seed_chunk``/``cpu_matmul``.
    """
    cfg = Config(**kwargs)
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ValueError(f"method: expected some of {METHODS} (or 'all'), got {list(cfg.methods)}")
    if cfg.restarts < 1:
        raise ValueError(f"restarts: must be >= 1, got {cfg.restarts}")
    if cfg.first_restart < 0:
        raise ValueError(f"first_restart: must be >= 0, got {cfg.first_restart}")
    if cfg.log_every < 1:
        raise ValueError(f"log_every: must be >= 1, got {cfg.log_every}")
    if cfg.seed_chunk is not None and cfg.seed_chunk < 1:
        raise ValueError(
            f"seed_chunk: must be >= 1 or None (all restarts at once), got {cfg.seed_chunk}"
        )
    if cfg.cpu_matmul not in CPU_MATMUL:
        raise ValueError(f"cpu_matmul: expected one of {CPU_MATMUL}, got {cfg.cpu_matmul!r}")
    if cfg.n_z < 0:
        raise ValueError(f"n_z: must be >= 0, got {cfg.n_z}")
    if cfg.max_images is not None and cfg.max_images < 12:
        raise ValueError(f"max_images: need at least 12 images, got {cfg.max_images}")
    if not 0.0 < cfg.val_frac <= 0.5:
        raise ValueError(f"val_frac: expected a fraction in (0, 0.5], got {cfg.val_frac}")
    mc = {m: (quick_config(DEFAULTS[m]) if cfg.quick else DEFAULTS[m]) for m in cfg.methods}
    mc.update({m: c for m, c in cfg.methods_config.items() if m in cfg.methods})
    return dataclasses.replace(cfg, methods=tuple(dict.fromkeys(cfg.methods)), methods_config=mc)


def restart_keys(seed: int, stream: str, first: int, count: int):
    """PRNG keys of restarts ``first`` … ``first + count − 1``: their environments or initialisations.

    Restart r's key is entry r of one split over restarts 0 … r, the same in every run that trains
    it, so restarts trained in separate runs (``first_restart``) are those of one longer run.

    Args:
        seed: the root seed of the run.
        stream: ``"data"`` (the environments: shuffle, label noise, colours) or ``"init"``.
        first, count: the restarts.
    """
    import jax

    root = jax.random.fold_in(jax.random.PRNGKey(seed), {"data": 0, "init": 1}[stream])
    return jax.random.split(root, first + count)[first:]


def _sweep_grid(cfg: MethodConfig) -> list[dict[str, float]]:
    if cfg.name == "erm":
        return [{"penalty": 0.0, "l2": v} for v in SWEEP_ERM_L2]
    if cfg.name == "oracle":
        return [{"penalty": 0.0, "l2": cfg.l2 * f} for f in SWEEP_FACTORS]
    return [{"penalty": cfg.penalty * f, "l2": cfg.l2} for f in SWEEP_FACTORS]


def run_experiment(config: Config, out: str, *, verbose: bool = True) -> dict[str, Any]:
    """Run the Colored MNIST protocol and write config.json, metrics.jsonl, results.json, figures, summary.md.

    Args:
        config: a resolved :class:`Config` (see :func:`resolve_config`).
        out: the run directory.
        verbose: progress and timings on stderr.

    Returns:
        The results dictionary (as written to results.json).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.data.colored_mnist import colored_mnist, split_sizes
    from ntkdyn.data.mnist import load_mnist
    from ntkdyn.runs import RunDir, progress
    from ntkdyn.train.layout import SeedLayout, eigen_matmul_options

    run_dir = RunDir(out)
    mnist = load_mnist(config.data_dir, source=config.data_source)
    images, digits = mnist.images, mnist.labels
    if config.max_images is not None:
        images, digits = images[: config.max_images], digits[: config.max_images]
    n_images = int(images.shape[0])
    n_train, n_test = split_sizes(n_images)
    data_info = {
        "source": mnist.source,
        "n_images": n_images,
        "origin": mnist.origin,
        "description": mnist.describe()
        if n_images == mnist.n_images
        else f"{mnist.describe()}; first {n_images} used",
        "n_train": n_train,
        "n_test": n_test,
    }
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    log(f"cmnist: {data_info['description']}")
    # Restarts per training step: all at once on an accelerator; on a CPU two at a time keep a
    # step's working set in cache, and Eigen's matrix products beat XLA's default library
    # (benchmarks/cmnist.py: two per step with Eigen match sequential restarts, 0.96–1.02×; all
    # ten at once run 1–11 % slower, and two per step with the default library 3–9 % slower).
    seed_chunk = (
        config.seed_chunk
        if config.seed_chunk is not None
        else (2 if jax.default_backend() == "cpu" else None)
    )
    compiler_options = eigen_matmul_options() if config.cpu_matmul == "eigen" else {}
    run_dir.write_config(
        {
            **dataclasses.asdict(config),
            "seed_chunk": seed_chunk,
            "compiler_options": compiler_options,
            "data": data_info,
            "out": str(out),
        }
    )

    data_keys = restart_keys(config.seed, "data", config.first_restart, config.restarts)
    init_keys = restart_keys(config.seed, "init", config.first_restart, config.restarts)
    envs = jax.jit(jax.vmap(lambda k: colored_mnist(k, images, digits)))(data_keys)
    devices = SeedLayout.local().devices if config.shard else None

    metrics_records: list[dict[str, Any]] = []
    methods_out: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    probe_means: dict[str, Any] = {}
    for name in progress(
        config.methods, desc="cmnist methods", unit="method", enabled=None if verbose else False
    ):
        cfg = config.methods_config[name]
        grid = _sweep_grid(cfg) if config.sweep else [{"penalty": cfg.penalty, "l2": cfg.l2}]
        G, R = len(grid), config.restarts
        n_z = config.n_z if (name in config.z_methods and not config.sweep) else 0
        batches = prepare_batches(
            envs,
            grayscale=cfg.grayscale,
            val_frac=config.val_frac if config.sweep else 0.0,
            n_z=n_z,
        )
        probe = probe_batches(envs, grayscale=cfg.grayscale)
        if G > 1:  # seed axis = grid value × restart

            def rep(a, G=G):
                return jnp.tile(a, (G,) + (1,) * (a.ndim - 1))

            batches = {k: rep(v) for k, v in batches.items()}
            probe = {k: rep(v) for k, v in probe.items()}
        keys = jnp.tile(init_keys, (G, 1))
        hp = {
            k: jnp.repeat(jnp.asarray([g[k] for g in grid], batches["x1"].dtype), R)
            for k in ("penalty", "l2")
        }
        run = train_method(
            cfg,
            batches,
            keys,
            hp=hp,
            log_every=config.log_every,
            devices=devices,
            seed_chunk=seed_chunk,
            compiler_options=compiler_options,
        )
        log(f"cmnist: {name}: {G * R} runs x {cfg.steps} steps in {run.seconds:.1f} s")
        ev = evaluate(run, batches, probe)
        hist = {k: np.asarray(v, np.float64) for k, v in run.history.items() if k != "f_z"}
        for g, point in enumerate(grid):
            sl = slice(g * R, (g + 1) * R)
            for r_i, step in enumerate(run.steps):
                rec = {"method": name, "step": int(step)}
                if G > 1:
                    rec.update(point)
                rec.update({k: float(v[sl, r_i].mean()) for k, v in hist.items()})
                metrics_records.append(rec)

        def summarize(sl, ev=ev):
            out = {
                "train_acc_mean": float(ev["train_acc"][sl].mean()),
                "train_acc_std": float(ev["train_acc"][sl].std()),
                "test_acc_mean": float(ev["test_acc"][sl].mean()),
                "test_acc_std": float(ev["test_acc"][sl].std()),
                "train_acc": ev["train_acc"][sl],
                "test_acc": ev["test_acc"][sl],
                "probe": {
                    k: {
                        "acc": float(v["acc"][sl].mean()),
                        "entropy": float(v["entropy"][sl].mean()),
                        "acc_std": float(v["acc"][sl].std()),
                        "entropy_std": float(v["entropy"][sl].std()),
                    }
                    for k, v in ev["probe"].items()
                },
            }
            if "val_acc" in ev:
                out["val_acc_mean"] = float(ev["val_acc"][sl].mean())
                out["val_acc_std"] = float(ev["val_acc"][sl].std())
            return out

        if G == 1:
            entry = summarize(slice(0, R))
            entry["selection"] = (
                "published hyperparameters (tuned on the test environment by their authors)"
            )
        else:
            points = [{**grid[g], **summarize(slice(g * R, (g + 1) * R))} for g in range(G)]
            by_val = max(range(G), key=lambda g: (points[g]["val_acc_mean"], -g))
            by_test = max(range(G), key=lambda g: (points[g]["test_acc_mean"], -g))
            entry = {
                **{k: v for k, v in points[by_val].items() if k not in ("penalty", "l2")},
                "selection": "training-domain validation (held-out part of the training environments)",
                "selected": {"penalty": grid[by_val]["penalty"], "l2": grid[by_val]["l2"]},
                "test_domain_choice": {
                    "penalty": grid[by_test]["penalty"],
                    "l2": grid[by_test]["l2"],
                    "train_acc_mean": points[by_test]["train_acc_mean"],
                    "test_acc_mean": points[by_test]["test_acc_mean"],
                },
                "sweep": points,
            }
        entry["config"] = dataclasses.asdict(cfg)
        methods_out[name] = entry
        probe_means[LABELS[name]] = entry["probe"]
        if n_z:
            curves[LABELS[name]] = feature_response_curves(run, batches, seed=0)

    results = {
        "data": {
            "source": data_info["source"],
            "n_images": n_images,
            "description": data_info["description"],
            "n_train": n_train,
            "n_test": n_test,
        },
        "selection": (
            "test-domain: published hyperparameters, tuned on the test environment by their authors"
            if not config.sweep
            else "training-domain validation over a grid; the test-domain choice is reported beside it"
        ),
        "methods": methods_out,
        "published": {m: PUBLISHED[m] for m in config.methods},
    }
    run_dir.write_metrics(metrics_records)
    run_dir.write_results(results)
    if curves:
        run_dir.write_npz(
            "feature_responses.npz",
            **{f"{m}_{k}": v for m, c in curves.items() for k, v in c.items()},
        )
    _figures(run_dir, envs, probe_means, curves)
    run_dir.write_text("summary.md", summary_markdown(results, config))
    return results


def _probe_examples(envs):
    """Two test images of each colour, as the four probe inputs (for the probe figure), or ``None``."""
    import jax
    import numpy as np

    from ntkdyn.data.colored_mnist import probe_inputs

    test0 = jax.tree_util.tree_map(lambda a: a[0], envs.test)
    raw = probe_inputs(test0)
    colors = np.asarray(test0.colors)
    idx = list(np.flatnonzero(colors == 1)[:2]) + list(np.flatnonzero(colors == 0)[:2])
    return {k: np.asarray(v)[idx] for k, v in raw.items()} if len(idx) == 4 else None


def _figures(run_dir, envs, probe_means, curves) -> None:
    from ntkdyn.plots.cmnist import feature_response_figure, probe_figure

    examples = _probe_examples(envs)
    if probe_means:
        run_dir.save_figure(probe_figure(probe_means, examples), "cmnist_probe")
    if curves:
        run_dir.save_figure(
            feature_response_figure(curves), "cmnist_feature_responses_over_training"
        )


# ------------------------------------------------------------------------------------------- merging

#: Settings that runs must share to be parts of one protocol.
_MERGE_KEYS = (
    "seed",
    "methods",
    "methods_config",
    "quick",
    "sweep",
    "max_images",
    "n_z",
    "log_every",
)


def _pool(parts: list[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and (population) std of the union of groups given as (count, mean, std)."""
    total = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / total
    second = sum(n * (sd**2 + m**2) for n, m, sd in parts) / total
    return mean, math.sqrt(max(second - mean**2, 0.0))


def _recorded_probe_examples(cfg: dict[str, Any], restart: int):
    """The probe figure's example inputs of ``restart``, rebuilt from the run's recorded data, or ``None``.

    Only local data is read (the embedded subset, or the files the run read or downloaded); when
    they are gone the figure is drawn without examples.
    """
    import jax

    from ntkdyn.data.colored_mnist import colored_mnist
    from ntkdyn.data.mnist import load_mnist

    data = cfg.get("data", {})
    try:
        if data.get("source") == "embedded":
            mnist = load_mnist(source="embedded")
        else:
            mnist = load_mnist(data.get("origin"), source="files")
    except (OSError, ValueError, TypeError):
        return None
    n = data.get("n_images", mnist.n_images)
    key = restart_keys(cfg["seed"], "data", restart, 1)
    envs = jax.vmap(lambda k: colored_mnist(k, mnist.images[:n], mnist.labels[:n]))(key)
    return _probe_examples(envs)


def merge_runs(run_dirs: Sequence[str], out: str) -> dict[str, Any]:
    """Join runs of one Colored MNIST protocol over disjoint restarts (``--first-restart``) into one run.

    The runs must share data, seed, methods and their settings, and together cover a contiguous
    range of restarts (e.g. ``--restarts 5`` and ``--restarts 5 --first-restart 5`` give restarts
    0–9, the same restarts as one ``--restarts 10`` run). Per-restart accuracies are concatenated
    and their mean and std recomputed; the probe's means and stds are pooled exactly from each
    run's mean, std and restart count; the recorded curves (metrics.jsonl) are averaged weighted by
    restart count. The feature responses (one restart) are copied from the run whose restarts come
    first. Writes config.json, metrics.jsonl, results.json, summary.md and the figures to ``out``.

    Args:
        run_dirs: two or more ``ntkdyn cmnist`` run directories.
        out: the merged run directory (not one of ``run_dirs``).

    Returns:
        The merged results dictionary (as written to results.json).

    Raises:
        ValueError: naming ``merge`` when fewer than two runs are given, a run lacks its
            config.json or results.json, the runs differ in data or settings, used ``--sweep``,
            overlap or leave a gap in their restarts, or ``out`` is one of them.
    """
    import json
    import shutil
    from pathlib import Path

    import numpy as np

    from ntkdyn.plots.cmnist import probe_figure
    from ntkdyn.runs import RunDir

    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise ValueError(f"merge: expected two or more run directories, got {len(dirs)}")
    if any(Path(out).resolve() == d.resolve() for d in dirs):
        raise ValueError(
            f"merge: --out {out} is one of the runs being merged; choose a new directory"
        )
    runs = []
    for d in dirs:
        try:
            cfg = json.loads((d / "config.json").read_text())
            res = json.loads((d / "results.json").read_text())
        except FileNotFoundError as exc:
            raise ValueError(
                f"merge: {d} is not a finished `ntkdyn cmnist` run (missing {Path(exc.filename).name})"
            ) from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"merge: {d}: unreadable run file ({exc})") from exc
        if cfg.get("sweep"):
            raise ValueError(
                f"merge: {d} is a --sweep run; only runs of the published hyperparameters can be merged"
            )
        runs.append((d, cfg, res))
    runs.sort(key=lambda r: r[1].get("first_restart", 0))
    d0, cfg0, res0 = runs[0]
    for d, cfg, res in runs[1:]:
        for key in _MERGE_KEYS:
            if cfg.get(key) != cfg0.get(key):
                raise ValueError(
                    f"merge: {d} and {d0} differ in {key} ({cfg.get(key)!r} vs {cfg0.get(key)!r}); "
                    "merge only runs of one protocol"
                )
        for key in ("source", "n_images", "n_train", "n_test"):
            if res["data"].get(key) != res0["data"].get(key):
                raise ValueError(
                    f"merge: {d} and {d0} ran on different data ({key}: {res['data'].get(key)!r} vs "
                    f"{res0['data'].get(key)!r})"
                )
    ranges = [
        (c.get("first_restart", 0), c.get("first_restart", 0) + c["restarts"]) for _, c, _ in runs
    ]
    for (d_a, _, _), (d_b, _, _), (a0, a1), (b0, b1) in zip(
        runs, runs[1:], ranges, ranges[1:], strict=False
    ):
        if b0 != a1:
            what = "overlap" if b0 < a1 else f"leave restarts {a1}–{b0 - 1} out"
            raise ValueError(
                f"merge: {d_a} (restarts {a0}–{a1 - 1}) and {d_b} (restarts {b0}–{b1 - 1}) {what}; "
                "merge runs whose --first-restart ranges follow each other"
            )
    counts = [c["restarts"] for _, c, _ in runs]
    total = sum(counts)

    methods_out: dict[str, Any] = {}
    for name in cfg0["methods"]:  # the order the run trained them (results.json sorts its keys)
        entries = [r["methods"][name] for _, _, r in runs]
        train = [float(a) for e in entries for a in e["train_acc"]]
        test = [float(a) for e in entries for a in e["test_acc"]]
        probe = {}
        for k in entries[0]["probe"]:
            cell = {}
            for stat in ("acc", "entropy"):
                cell[stat], cell[f"{stat}_std"] = _pool(
                    [
                        (n, e["probe"][k][stat], e["probe"][k][f"{stat}_std"])
                        for n, e in zip(counts, entries, strict=True)
                    ]
                )
            probe[k] = cell
        methods_out[name] = {
            **entries[0],
            "train_acc": train,
            "test_acc": test,
            "train_acc_mean": float(np.mean(train)),
            "train_acc_std": float(np.std(train)),
            "test_acc_mean": float(np.mean(test)),
            "test_acc_std": float(np.std(test)),
            "probe": probe,
        }
    results = {**res0, "methods": methods_out}

    curves: dict[tuple[str, int], dict[str, float]] = {}
    weights: dict[tuple[str, int], int] = {}
    for (d, _, _), n in zip(runs, counts, strict=True):
        path = d / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            rec = json.loads(line)
            key = (rec["method"], rec["step"])
            acc = curves.setdefault(key, {})
            for k, v in rec.items():
                if k not in ("method", "step"):
                    acc[k] = acc.get(k, 0.0) + n * v
            weights[key] = weights.get(key, 0) + n
    records = [
        {"method": m, "step": step, **{k: v / weights[(m, step)] for k, v in acc.items()}}
        for (m, step), acc in curves.items()
    ]

    settable = {f.name for f in dataclasses.fields(Config)} - {
        "methods_config",
        "methods",
        "z_methods",
        "restarts",
        "first_restart",
    }
    recorded = {k: v for k, v in cfg0.items() if k in settable}
    config = resolve_config(
        **recorded, methods=tuple(cfg0["methods"]), restarts=total, first_restart=ranges[0][0]
    )
    run_dir = RunDir(out)
    run_dir.write_config(
        {
            **cfg0,
            "restarts": total,
            "first_restart": ranges[0][0],
            "out": str(out),
            "merged_from": [
                {
                    "dir": str(d),
                    "first_restart": a,
                    "restarts": b - a,
                    "compiler_options": c.get("compiler_options"),
                }
                for (d, c, _), (a, b) in zip(runs, ranges, strict=True)
            ],
        }
    )
    run_dir.write_metrics(records)
    run_dir.write_results(results)
    for f in (
        "feature_responses.npz",
        "cmnist_feature_responses_over_training.png",
        "cmnist_feature_responses_over_training.pdf",
    ):
        if (d0 / f).is_file():
            shutil.copyfile(d0 / f, Path(out) / f)
    examples = _recorded_probe_examples(cfg0, ranges[0][0])
    run_dir.save_figure(
        probe_figure({LABELS[m]: r["probe"] for m, r in methods_out.items()}, examples),
        "cmnist_probe",
    )
    parts = ", ".join(
        f"`{d}` (restarts {a}–{b - 1})" for (d, _, _), (a, b) in zip(runs, ranges, strict=True)
    )
    run_dir.write_text(
        "summary.md", summary_markdown(results, config) + f"\nMerged from {parts}.\n"
    )
    return results


def _pct(mean, std=None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def _restart_range(config: Config) -> str:
    if config.first_restart == 0:
        return str(config.restarts)
    return f"{config.restarts} (restarts {config.first_restart}–{config.first_restart + config.restarts - 1})"


def summary_markdown(results: dict[str, Any], config: Config) -> str:
    """The Markdown summary: our accuracies beside the published ones, the probe, data and selection."""
    d = results["data"]
    lines = [
        "# Colored MNIST (Pezeshki et al. 2021, Table 1)",
        "",
        f"Data: {d['description']} — {d['n_images']} images ({d['n_train']} training, {d['n_test']} test); "
        f"source `{d['source']}`.",
        f"Restarts: {_restart_range(config)}; seed {config.seed}{'; quick mode (1/20 of the steps)' if config.quick else ''}.",
        f"Model selection: {results['selection']}.",
        "",
        "| method | train acc (ours) | test acc (ours) | train acc (published) | test acc (published) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, r in results["methods"].items():
        pub = PUBLISHED[m]
        lines.append(
            f"| {LABELS[m]} | {_pct(r['train_acc_mean'], r['train_acc_std'])} | "
            f"{_pct(r['test_acc_mean'], r['test_acc_std'])} | {_pct(*pub['train'])} | {_pct(*pub['test'])} |"
        )
    lines += [
        "",
        "Published figures are on full MNIST (60,000 images); accuracies in %, mean ± std over restarts.",
        "",
        "## Probe (Fig. 4): accuracy % / mean binary entropy (nats), ours (published)",
        "",
        "Ours: mean over restarts on the test environment; published: one restart.",
        "",
        "| method | digit, gray | digit, colour | blank, gray | blank, colour |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, r in results["methods"].items():
        pub = PUBLISHED[m].get("probe")
        cells = []
        for i, k in enumerate(PROBE_INPUTS):
            p = r["probe"][k]
            cell = f"{100 * p['acc']:.1f} / {p['entropy']:.2f}"
            if pub:
                cell += f" ({100 * pub['acc'][i]:.1f} / {pub['entropy'][i]:.2f})"
            cells.append(cell)
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    sweeps = {m: r for m, r in results["methods"].items() if "sweep" in r}
    if sweeps:
        lines += [
            "",
            "## Sweeps",
            "",
            "| method | penalty | l2 | train acc | validation acc | test acc |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for m, r in sweeps.items():
            for p in r["sweep"]:
                mark = (
                    " (selected)"
                    if (p["penalty"], p["l2"]) == (r["selected"]["penalty"], r["selected"]["l2"])
                    else ""
                )
                lines.append(
                    f"| {LABELS[m]}{mark} | {p['penalty']:.4g} | {p['l2']:.4g} | {_pct(p['train_acc_mean'], p['train_acc_std'])} | "
                    f"{_pct(p['val_acc_mean'], p['val_acc_std'])} | {_pct(p['test_acc_mean'], p['test_acc_std'])} |"
                )
    lines += [
        "",
        "Figures: `cmnist_probe.png`, `cmnist_feature_responses_over_training.png` (when ERM or SD ran).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``ntkdyn cmnist`` arguments."""
    parser.add_argument(
        "--method", nargs="+", default=["all"], choices=[*METHODS, "all"], help="methods to run"
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=10,
        help="independent restarts (environments and initialisations)",
    )
    parser.add_argument(
        "--first-restart",
        type=int,
        default=0,
        help="index of the first restart, to split a protocol over jobs (join them with --merge)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="join the results of runs of the same protocol over disjoint restarts into --out "
        "(no training)",
    )
    parser.add_argument("--seed", type=int, default=0, help="root PRNG seed")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="directory with MNIST IDX files (optionally .gz) or mnist.npz",
    )
    parser.add_argument(
        "--data-source",
        default="auto",
        choices=["auto", "files", "download", "embedded"],
        help="where MNIST comes from (auto: files, else download, else the embedded 5k subset)",
    )
    parser.add_argument(
        "--max-images", type=int, default=None, help="use only the first N MNIST training images"
    )
    parser.add_argument("--out", default="runs/cmnist", help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 2 restarts, 1/20 of the steps, 1,200 images",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="sweep each method's coefficient and select by training-domain validation",
    )
    parser.add_argument(
        "--val-frac",
        type=float,
        default=0.1,
        help="held-out fraction of each training environment (--sweep)",
    )
    parser.add_argument(
        "--n-z", type=int, default=500, help="training examples for the feature responses (0: off)"
    )
    parser.add_argument("--log-every", type=int, default=10, help="steps between recorded metrics")
    parser.add_argument(
        "--no-shard", action="store_true", help="do not split restarts over local devices"
    )
    parser.add_argument(
        "--seed-chunk",
        type=int,
        default=None,
        help="restarts batched into each training step, the chunks one after another "
        "(default: 2 on a CPU, where they keep a step's working set in cache; all on a GPU)",
    )
    parser.add_argument(
        "--cpu-matmul",
        default="eigen",
        choices=CPU_MATMUL,
        help="library for matrix products on a CPU: eigen (measured faster for these steps) or XLA's default",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ntkdyn cmnist``; returns the exit status."""
    if args.merge:
        results = merge_runs(args.merge, args.out)
        for m, r in results["methods"].items():
            print(
                f"{LABELS[m]:>16}: train {_pct(r['train_acc_mean'], r['train_acc_std'])}  "
                f"test {_pct(r['test_acc_mean'], r['test_acc_std'])}  ({len(r['train_acc'])} restarts)"
            )
        print(f"merged results in {args.out}")
        return 0
    methods = METHODS if "all" in args.method else tuple(args.method)
    quick = bool(args.quick)
    config = resolve_config(
        methods=methods,
        restarts=2 if quick and args.restarts == 10 else args.restarts,
        first_restart=args.first_restart,
        seed=args.seed,
        data_source=args.data_source,
        data_dir=args.data_dir,
        max_images=args.max_images if args.max_images is not None else (1200 if quick else None),
        quick=quick,
        sweep=bool(args.sweep),
        val_frac=args.val_frac,
        n_z=min(args.n_z, 100) if quick else args.n_z,
        log_every=min(args.log_every, 5) if quick else args.log_every,
        shard=not args.no_shard,
        seed_chunk=args.seed_chunk,
        cpu_matmul=args.cpu_matmul,
    )
    results = run_experiment(config, args.out)
    for m, r in results["methods"].items():
        print(
            f"{LABELS[m]:>16}: train {_pct(r['train_acc_mean'], r['train_acc_std'])}  "
            f"test {_pct(r['test_acc_mean'], r['test_acc_std'])}"
        )
    print(f"results in {args.out} ({results['data']['description']})")
    return 0
