"""Colored MNIST: ERM, IRMv1, V-REx, Spectral Decoupling and the grayscale oracle.

Pezeshki et al. 2021, Sec. 4, Table 1 and Fig. 4, on the environments of Arjovsky et al. 2019
(:mod:`ntkdyn.data.colored_mnist`). A colour predicts the training label (85 %) better than the
digit shape (75 %) and is reversed at test time; ERM learns the colour, SD learns the shape too.

Protocol: an MLP 2·196 → h → h → 1 (Xavier-uniform weights, zero biases), full-batch Adam on the two
training environments, each method with its published width, learning rate, steps and objective
(:data:`PROTOCOL`, :class:`Config`; :mod:`ntkdyn.objectives`); 10 restarts (environments and
initialisations); train/test accuracy and the four-input probe of Fig. 4. For ERM and SD (one
restart), the feature responses z_j(t) = u_jᵀY(f(X; θ_t) − f(X; θ₀)) on *all* training examples:
the k leading directions of YΦ at θ₀ are found matrix-free before training
(:func:`ntkdyn.feature_spectrum` with ``k``; --spectrum-k), and the compiled loop records only the
k-vector U_kᵀYf. Beside them, the theory's starvation matrix ∂z_j*/∂s_i of that measured spectrum
under CE and SD (:func:`ntkdyn.analysis.predict`; λ by :func:`ntkdyn.objectives.theory_lam`).
The spectrum's cost grows with n·k: measured 1.5 min for k = 30 on the embedded subset's 4,166
training images and 6–12 min for k = 20 on full MNIST's 50,000 (2 busy CPU cores, before the
block-Lanczos solver); --quick takes k = 8 on 1,000 images, seconds.

Commands::

    ntkdyn cmnist --out runs/cmnist                         # 10 restarts, all five methods
    ntkdyn cmnist --methods sd irm --data-dir ~/data/mnist  # chosen methods, MNIST from files
    ntkdyn cmnist --methods sd --sd-coef 1e-4               # another SD coefficient
    ntkdyn cmnist --sweep --methods sd --out runs/cmnist_sd # coefficient sweep, both selection rules
    ntkdyn cmnist --quick --out /tmp/cmnist                 # smoke test (< 2 min on 2 CPU cores)
    ntkdyn cmnist --seed-layout map@1                       # restarts one after another, one device
    ntkdyn cmnist --data-dir MNIST --restarts 5 --out runs/a                  # restarts 0-4 ...
    ntkdyn cmnist --data-dir MNIST --restarts 5 --first-restart 5 --out runs/b  # ... and 5-9 elsewhere
    ntkdyn cmnist --merge runs/a runs/b --out runs/cmnist_10                  # = one run of restarts 0-9

Without ``--data-dir`` (or ``$NTKDYN_DATA_DIR``) the embedded 5,000-image subset is used;
``--data-source download`` fetches full MNIST.

Expected on full MNIST (published, 10 restarts; train / test accuracy in %):

    ERM     91.1 ± 0.4 / 23.7 ± 0.8        SD      70.0 ± 0.9 / 68.4 ± 1.2
    IRM     70.5 ± 0.6 / 67.1 ± 1.4        V-REx   71.5 ± 1.0 / 68.7 ± 0.9
    grayscale oracle 73.5 ± 0.2 / 73.0 ± 0.4                optimum 75 / 75

and the probe (Fig. 4; accuracy % on digit-gray / digit-colour / blank-gray / blank-colour):
ERM 63.3 / 23.9 / 49.9 / 9.4, SD 68.3 / 67.2 / 50.0 / 9.4, IRM 66.9 / 66.6 / 49.7 / 49.6.
Measured with ``ntkdyn cmnist --data-dir MNIST`` (10 restarts, seed 0; run as restarts 0-4 and 5-9
and joined with ``--merge``; ``docs/results/cmnist_full_mnist_10_restarts.md``):

    ERM     91.1 ± 0.3 / 23.1 ± 0.7        SD      70.1 ± 0.6 / 68.1 ± 1.1
    IRM     71.3 ± 0.9 / 66.0 ± 2.5        V-REx   71.3 ± 1.3 / 68.6 ± 1.1
    grayscale oracle 73.7 ± 0.2 / 73.0 ± 0.5

and the probe: ERM 63.1 / 23.1 / 50.0 / 10.0, SD 68.4 / 68.1 / 49.7 / 14.0, IRM 67.9 / 66.0 / 49.7 / 41.9
(the blank, colour input sits near the decision threshold, so it swings between 10 % and chance from
one restart to the next).

On the embedded 5,000-image subset (4,166 training images) the published hyperparameters transfer
only partly: every method fits the small training set further than on full MNIST. Measured with
``ntkdyn cmnist`` (10 restarts, seed 0; ``docs/results/cmnist_embedded_5k.md``):

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
import functools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

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

HELP = (
    "Colored MNIST (Pezeshki et al. 2021, Table 1, Fig. 4): ERM, IRMv1, V-REx, Spectral Decoupling and "
    "the grayscale oracle, with the four-input probe and the feature responses of the top NTK directions."
)

METHODS: tuple[str, ...] = ("erm", "irm", "vrex", "sd", "oracle")
LABELS = {"erm": "ERM", "irm": "IRMv1", "vrex": "V-REx", "sd": "SD", "oracle": "Grayscale oracle"}
PROBE_INPUTS: tuple[str, ...] = ("digit_gray", "digit_color", "blank_gray", "blank_color")
#: Methods whose feature responses z(t) are recorded (the paper's Fig. 5 pair).
Z_METHODS: tuple[str, ...] = ("erm", "sd")
#: The hyperparameters of each method's objective (names of :mod:`ntkdyn.objectives` fields; the
#: flag of ``irm``'s ``penalty_weight`` is ``--irm-penalty-weight``), the swept one first.
COEFFICIENTS: dict[str, tuple[str, ...]] = {
    "erm": ("l2",),
    "irm": ("penalty_weight", "l2"),
    "vrex": ("penalty_weight", "l2"),
    "sd": ("coef",),
    "oracle": ("l2",),
}
#: ``--sweep``: multipliers of the swept coefficient; ERM's l2 (0 when published) takes SWEEP_ERM_L2.
SWEEP_FACTORS: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
SWEEP_ERM_L2: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2, 1e-1)


class Method(NamedTuple):
    """A method's network and optimisation (published; Pezeshki et al. 2021, App.).

    Attributes:
        hidden: width h of both hidden layers.
        lr: Adam learning rate.
        steps: full-batch steps.
        anneal_steps: the step from which the penalty takes its final form.
        grayscale: train on the channel-summed images (the oracle).
    """

    hidden: int
    lr: float
    steps: int
    anneal_steps: int = 0
    grayscale: bool = False


PROTOCOL: dict[str, Method] = {
    "erm": Method(300, 1e-4, 1001),
    "irm": Method(390, 0.0004898536566546834, 501, anneal_steps=190),
    "vrex": Method(256, 1e-3, 501, anneal_steps=100),
    "sd": Method(300, 1e-4, 2001, anneal_steps=450),
    "oracle": Method(83, 2.817e-3, 101, grayscale=True),
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


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of ``ntkdyn cmnist``; the defaults are the published protocol.

    Attributes:
        methods: methods to run, in order (erm irm vrex sd oracle, or all)
        restarts: independent restarts (environments and initialisations)
        first_restart: index of the first restart, to split a protocol over jobs (join with --merge)
        seed: root PRNG seed
        data_dir: directory with MNIST IDX files (optionally .gz) or mnist.npz
        data_source: auto (local files, else the embedded 5k subset), files, download or embedded
        max_images: use only the first N MNIST training images (none: all)
        erm_l2: ERM's coefficient of the sum of squared parameters
        irm_penalty_weight: IRMv1's penalty weight after its annealing step
        irm_l2: IRMv1's coefficient of the sum of squared parameters
        vrex_penalty_weight: V-REx's penalty weight after its annealing step
        vrex_l2: V-REx's coefficient of the sum of squared parameters
        sd_coef: Spectral Decoupling coefficient c of mean(logits²), annealed as the authors do
        oracle_l2: the grayscale oracle's coefficient of the sum of squared parameters
        step_divisor: divide every method's steps and annealing step by this (--quick: 20)
        sweep: sweep each method's coefficient and select by training-domain validation
        val_frac: held-out fraction of each training environment (with --sweep)
        spectrum_k: leading NTK directions, found matrix-free on all training examples of the first
            restart, whose responses z(t) and starvation matrix are reported (ERM, SD; 0: off)
        log_every: steps between recorded metrics
        seed_layout: restarts per step and devices, AXIS[:CHUNK][@DEVICES] (vmap:2, map@1, vmap:2@all);
            auto: two restarts per step on a CPU, all at once elsewhere, over all local devices
        cpu_matmul: library for matrix products on a CPU: eigen (measured faster here) or default
    """

    methods: tuple[str, ...] = METHODS
    restarts: int = 10
    first_restart: int = 0
    seed: int = 0
    data_dir: str | None = None
    data_source: str = "auto"
    max_images: int | None = None
    erm_l2: float = 0.0
    irm_penalty_weight: float = 91257.18613115903
    irm_l2: float = 0.00110794568
    vrex_penalty_weight: float = 1e4
    vrex_l2: float = 1e-3
    sd_coef: float = 2e-5
    oracle_l2: float = 8.6e-4
    step_divisor: int = 1
    sweep: bool = False
    val_frac: float = 0.1
    spectrum_k: int = 20
    log_every: int = 10
    seed_layout: str = "auto"
    cpu_matmul: str = "eigen"

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """``--quick``: 2 restarts, 1,200 images, 1/20 of every method's steps, 8 directions."""
        base = dict(step_divisor=20, restarts=2, max_images=1200, spectrum_k=8, log_every=5)
        return cls(**{**base, **overrides})

    def __post_init__(self):
        methods = tuple(self.methods) if not isinstance(self.methods, str) else (self.methods,)
        methods = METHODS if "all" in methods else tuple(dict.fromkeys(methods))
        if not methods or any(m not in METHODS for m in methods):
            raise ConfigError(
                "methods", f"expected some of {' '.join(METHODS)} or all, got {list(self.methods)}"
            )
        object.__setattr__(self, "methods", methods)
        check(
            self,
            {
                **dict.fromkeys(("restarts", "log_every", "step_divisor"), integer(1)),
                **dict.fromkeys(("first_restart", "spectrum_k"), integer(0)),
                "max_images": optional(integer(12)),
                "data_source": one_of("auto", "files", "download", "embedded"),
                "val_frac": number(0, 0.5, low_open=True),
                "cpu_matmul": one_of("eigen", "default"),
                **{f"{m}_{c}": number(0) for m in METHODS for c in COEFFICIENTS[m]},
            },
        )
        if self.spectrum_k == 1:
            raise ConfigError("spectrum_k", "expected 0 (off) or >= 2 (a matrix of pairs), got 1")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise ConfigError(
                "data_dir",
                f"{self.data_dir} is not a directory; pass the folder with the MNIST files",
            )
        self.layout()

    def layout(self):
        """The :class:`~ntkdyn.train.layout.SeedLayout` of ``seed_layout``."""
        from ntkdyn.train.layout import SeedLayout, cpu_restart_layout

        if self.seed_layout == "auto":
            return cpu_restart_layout()
        try:
            return SeedLayout.parse(self.seed_layout, flag="seed_layout")
        except ValueError as exc:
            raise ConfigError("seed_layout", str(exc).removeprefix("seed_layout: ")) from None

    def method(self, name: str) -> Method:
        """``name``'s network and optimisation, steps and annealing divided by ``step_divisor``."""
        m, d = PROTOCOL[name], self.step_divisor
        if d > 1:
            m = m._replace(steps=max(m.steps // d, 5), anneal_steps=m.anneal_steps // d)
        return m

    def coefficients(self, name: str) -> dict[str, float]:
        """``name``'s objective hyperparameters, by their :mod:`ntkdyn.objectives` field names."""
        return {c: getattr(self, f"{name}_{c}") for c in COEFFICIENTS[name]}


def objective(name: str, anneal_steps: int, *, coef=0.0, penalty_weight=0.0, l2=0.0):
    """The training objective of ``name`` (values may be traced, so a sweep vmaps over them).

    ERM and the oracle: :class:`~ntkdyn.objectives.ERM` (l2); SD: the authors' annealing
    ℓ + c·mean(f²) before ``anneal_steps``, c·(ℓ + mean(f²)) after
    (:meth:`~ntkdyn.objectives.SpectralDecoupling.annealed`); IRMv1 and V-REx: penalty weight 1
    before ``anneal_steps`` and ``penalty_weight`` after, the loss divided by the weight.
    """
    from ntkdyn.objectives import ERM, IRMv1, SpectralDecoupling, VREx, switch

    if name in ("erm", "oracle"):
        return ERM(l2=l2)
    if name == "sd":
        return SpectralDecoupling.annealed(coef, anneal_steps)
    cls = IRMv1 if name == "irm" else VREx
    return cls(penalty_weight=switch(1.0, penalty_weight, anneal_steps), l2=l2)


def sweep_grid(config: Config, name: str) -> list[dict[str, float]]:
    """The hyperparameters of ``name`` tried by ``--sweep`` (the published point alone without)."""
    hp = config.coefficients(name)
    if not config.sweep:
        return [hp]
    field = COEFFICIENTS[name][0]
    values = SWEEP_ERM_L2 if name == "erm" else [hp[field] * f for f in SWEEP_FACTORS]
    return [{**hp, field: float(v)} for v in values]


def restart_keys(seed: int, stream: str, first: int, count: int):
    """PRNG keys of restarts ``first`` … ``first + count − 1`` (``stream``: data, init or spectrum).

    Restart r's key is entry r of one split over restarts 0 … r, the same in every run that trains
    it, so restarts trained in separate runs (``--first-restart``) are those of one longer run.
    """
    import jax

    root = jax.random.fold_in(
        jax.random.PRNGKey(seed), {"data": 0, "init": 1, "spectrum": 2}[stream]
    )
    return jax.random.split(root, first + count)[first:]


# ---------------------------------------------------------------------------------------- training


class Trained(NamedTuple):
    """One method trained on S seeds (leading axis S): apply_fn, parameters and the records."""

    apply_fn: Any
    params0: Any
    params: Any
    history: dict[str, Any]
    steps: Any


def init_params(method: Method, keys):
    """Stacked Xavier-uniform / zero-bias MLP parameters, one set per key, and the pure ``apply_fn``."""
    import jax

    from ntkdyn.models.mlp import init_mlp, xavier_uniform

    d_in, widths = (196 if method.grayscale else 392), [method.hidden, method.hidden]
    apply_fn, _ = init_mlp(keys[0], d_in, widths, 1, kernel_init=xavier_uniform)
    init = jax.vmap(lambda k: init_mlp(k, d_in, widths, 1, kernel_init=xavier_uniform)[1])
    return apply_fn, init(keys)


def loss_fn(name: str, method: Method, apply_fn):
    """``train_fullbatch``'s loss: the objective of ``name`` on the two training environments.

    The hyperparameters come in with the data, ``batch["hp"]`` (one value per seed), so a sweep is
    one vmapped call.
    """

    def loss(params, model_state, batch, step, key):
        obj = objective(name, method.anneal_steps, **batch["hp"])
        logits = (apply_fn(params, batch["x1"])[:, 0], apply_fn(params, batch["x2"])[:, 0])
        value, (_, metrics) = obj.loss(logits, (batch["y1"], batch["y2"]), step=step, params=params)
        return value, (model_state, metrics)

    return loss


def train(
    name,
    method: Method,
    batches,
    keys,
    *,
    log_every=10,
    layout=None,
    compiler_options=None,
    progress=None,
) -> Trained:
    """Train ``name`` on S seeds at once (``lax.scan`` over full-batch Adam steps, seeds by ``layout``).

    Args:
        name: the method.
        method: its network and optimisation.
        batches: per-seed data (leading axis S; :func:`ntkdyn.data.colored_mnist.environment_batches`)
            with the objective's hyperparameters under ``"hp"`` and, for the feature responses,
            directions U_k (n × k) under ``"uz"``.
        keys: (S,) initialisation keys.
        log_every: steps between records (:func:`ntkdyn.metrics.environment_metrics`, and the
            k-vector U_kᵀ Y f of the whole training set with ``uz``, never the n outputs).
        layout: :class:`~ntkdyn.train.layout.SeedLayout` (``None``: all seeds vmapped).
        compiler_options: XLA options (:func:`~ntkdyn.train.layout.eigen_matmul_options`).
        progress: a :class:`~ntkdyn.runs.StepProgress` counting restart-steps, or ``None``.
    """
    import jax
    import optax

    from ntkdyn.metrics import environment_metrics, signed_projection
    from ntkdyn.train.fullbatch import train_fullbatch

    apply_fn, params0 = init_params(method, keys)

    def eval_fn(params, model_state, batch):
        if progress is not None:  # one tick per seed and record, from inside the compiled loop
            tick = functools.partial(progress.advance, log_every)
            jax.debug.callback(tick, jax.tree_util.tree_leaves(batch["hp"])[0])
        rec = environment_metrics(lambda x: apply_fn(params, x)[:, 0], batch)
        if "uz" in batch:
            rec["uyf"] = signed_projection(lambda x: apply_fn(params, x)[:, 0], batch, batch["uz"])
        return rec

    result = train_fullbatch(
        loss_fn(name, method, apply_fn),
        optax.adam(method.lr),
        params0,
        batches,
        keys=keys,
        num_steps=method.steps,
        log_every=log_every,
        eval_fn=eval_fn,
        batch_axis=0,
        layout=layout,
        compiler_options=compiler_options,
    )
    jax.block_until_ready(result.state.params)
    return Trained(apply_fn, params0, result.state.params, result.history, result.steps)


def evaluate(run: Trained, batches, probe) -> dict[str, Any]:
    """(S,) final train/test(/validation) accuracies and the probe's accuracy and entropy per seed."""
    import jax
    import numpy as np

    from ntkdyn.metrics import environment_metrics, probe_metrics

    def per_seed(params, b, pr):
        def lg(x):
            return run.apply_fn(params, x)[:, 0]

        out = {k: v for k, v in environment_metrics(lg, b).items() if k.endswith("_acc")}
        return {**out, "probe": probe_metrics(lg, pr, b["yt"])}

    data = {k: v for k, v in batches.items() if k not in ("uz", "hp")}
    res = jax.jit(jax.vmap(per_seed))(run.params, data, probe)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, dtype=np.float64), res)


# ------------------------------------------------------------------------------ feature responses


def response_spectrum(method: Method, batches, init_key, k: int, key):
    """The k leading directions of YΦ = U S Vᵀ at θ₀ of seed 0 on all its training examples.

    θ₀ is the initialisation :func:`train` draws from ``init_key`` (deterministic), so the spectrum
    is taken before training, matrix-free (:func:`ntkdyn.feature_spectrum` with ``k``: JVPs and
    VJPs over batches, no n × n Gram matrix), and U_k goes into the batch (``uz``).

    Returns:
        ``(spectrum, report, seconds)``: the :class:`~ntkdyn.tangent.FeatureSpectrum`, the solver's
        :class:`~ntkdyn.linalg.TruncatedSVD` (float64 U, s, residuals) and the wall time.
    """
    import time

    import jax
    import jax.numpy as jnp

    from ntkdyn.tangent import feature_spectrum

    apply_fn, p0 = init_params(method, init_key[None])
    p0 = jax.tree_util.tree_map(lambda a: a[0], p0)
    x = jnp.concatenate([batches["x1"][0], batches["x2"][0]])
    y = jnp.concatenate([batches["y1"][0], batches["y2"][0]])
    start = time.perf_counter()
    spectrum, report = feature_spectrum(apply_fn, p0, x, y, k=k, key=key, return_report=True)
    return spectrum, report, time.perf_counter() - start


def response_curves(run: Trained, batches, *, seed: int = 0) -> dict[str, Any]:
    """Measured z(t) = U_kᵀ Y (f(X; θ_t) − f(X; θ₀)) on all training examples, with the fit curves.

    z(t) is the record U_kᵀ Y f(X; θ_t) of the compiled loop minus the same projection at θ₀;
    ``captured`` is ‖U_kᵀ Y Δf‖² / ‖Δf‖² of the final Δf = f(X; θ_T) − f(X; θ₀): how much of the
    change of the outputs the k directions hold (1 in the linearized theory's span).
    """
    import jax
    import numpy as np

    from ntkdyn.metrics import environment_metrics, signed_projection

    p0, pT = (jax.tree_util.tree_map(lambda a: a[seed], p) for p in (run.params0, run.params))
    b = {k: v[seed] for k, v in batches.items() if k != "hp"}
    z0 = signed_projection(lambda x: run.apply_fn(p0, x)[:, 0], b, b["uz"])
    z = np.asarray(run.history["uyf"][seed], np.float64) - np.asarray(z0, np.float64)
    x = np.concatenate([b["x1"], b["x2"]])
    y = 2.0 * np.concatenate([b["y1"], b["y2"]]).astype(np.float64) - 1.0
    df = np.asarray(run.apply_fn(pT, x)[:, 0] - run.apply_fn(p0, x)[:, 0], np.float64)
    captured = np.sum((np.asarray(b["uz"], np.float64).T @ (y * df)) ** 2) / np.sum(df**2)
    first = environment_metrics(lambda x: run.apply_fn(p0, x)[:, 0], b)

    def curve(k):
        return np.concatenate([[float(first[k])], np.asarray(run.history[k][seed], np.float64)])

    return {
        "steps": np.concatenate([[0], np.asarray(run.steps)]),
        "z": np.concatenate([np.zeros((1, z.shape[1])), z]),
        "captured": np.asarray(captured),
        **{f"{s}_loss": curve(f"{s}_nll") for s in ("train", "test")},
        **{f"{s}_acc": curve(f"{s}_acc") for s in ("train", "test")},
    }


def theory_starvation(report, *, n: int, erm_l2: float, sd_coef: float) -> dict[str, Any]:
    """The starvation matrix M[j, i] = ∂z_j*/∂s_i of the measured (U_k, s_k) under CE and SD.

    :func:`ntkdyn.analysis.starvation_summary` on the truncated system, at the λ of
    :func:`ntkdyn.objectives.theory_lam`: SD's λ = 2c; CE's λ = n·wd with wd = 2·l2 (ERM's
    l2·Σ‖θ‖² is coupled weight decay wd/2·‖θ‖²). ERM trains without weight decay here, and at
    λ = 0 CE has no finite fixed point, so CE is then taken at SD's λ (the same strength, only the
    penalty's form differs).

    Returns:
        JSON-ready ``{"ce": ..., "sd": ...}``: each a starvation summary with ``lam_source``.
    """
    from ntkdyn.analysis import starvation_summary
    from ntkdyn.objectives import ERM, SpectralDecoupling, theory_lam
    from ntkdyn.tangent import FeatureSpectrum

    sd = (*theory_lam(SpectralDecoupling(coef=sd_coef), num_examples=n), "sd_coef: 2c")
    ce = (*theory_lam(ERM(), num_examples=n, weight_decay=2.0 * erm_l2), "erm_l2: n·2·l2")
    if ce[1] == 0.0:
        ce = (ce[0], sd[1], "SD's λ (ERM has no weight decay; CE at λ = 0 has no fixed point)")
    spectrum = FeatureSpectrum(report.U, report.s)
    return {
        name: {**starvation_summary(spectrum, lam, field), "lam_source": source}
        for name, (field, lam, source) in (("ce", ce), ("sd", sd))
    }


# ------------------------------------------------------------------------------------------ driver


def load_data(config: Config):
    """MNIST as ``config`` says (:func:`ntkdyn.data.colored_mnist.load_images`), checked against
    the settings that depend on its size; errors name the flag.

    Returns:
        ``(images, digits, data_info)``.
    """
    from ntkdyn.data.colored_mnist import load_images

    try:
        images, digits, info = load_images(
            config.data_dir, source=config.data_source, max_images=config.max_images
        )
    except (FileNotFoundError, ValueError) as exc:  # name the flag that chose the files
        if config.data_dir is None:
            raise
        raise ConfigError("data_dir", str(exc)) from exc
    if config.spectrum_k and not config.sweep and config.spectrum_k > info["n_train"]:
        raise ConfigError(
            "spectrum_k",
            f"{config.spectrum_k} directions exceed the {info['n_train']} training images; "
            "ask for fewer",
        )
    return images, digits, info


def train_method(
    config: Config, name: str, envs, init_keys, *, spectra, log, progress=None, **train_kw
):
    """Train one method on every restart (and grid point with ``--sweep``), then evaluate it.

    ``spectra`` caches the feature-response spectrum per network; ``log`` prints a line;
    ``progress`` enables the progress lines (``None``: when stderr is a terminal); ``train_kw`` go
    to :func:`train`.

    Returns:
        ``(entry, records, curves)``: the method's results, its metrics.jsonl records and its
        feature-response curves (``None`` when not recorded).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.data.colored_mnist import environment_batches, probe_batches
    from ntkdyn.runs import StepProgress, restart_summary, sweep_selection

    method, grid, R = config.method(name), sweep_grid(config, name), config.restarts
    G = len(grid)
    k = config.spectrum_k if (name in Z_METHODS and not config.sweep) else 0
    val_frac = config.val_frac if config.sweep else 0.0
    batches = environment_batches(envs, grayscale=method.grayscale, val_frac=val_frac)
    probe = probe_batches(envs, grayscale=method.grayscale)
    if G > 1:  # seed axis = grid point × restart
        batches, probe = jax.tree_util.tree_map(
            lambda a: jnp.tile(a, (G,) + (1,) * (a.ndim - 1)), (batches, probe)
        )
    dtype = batches["x1"].dtype
    batches["hp"] = {h: jnp.repeat(jnp.asarray([g[h] for g in grid], dtype), R) for h in grid[0]}
    if k:  # one spectrum per network: ERM and SD share width and θ₀
        net = (method.hidden, method.grayscale)
        if net not in spectra:
            log(f"cmnist: top-{k} NTK directions at θ₀ on all training examples (matrix-free)")
            key = restart_keys(config.seed, "spectrum", config.first_restart, 1)[0]
            spectra[net] = response_spectrum(method, batches, init_keys[0], k, key)
            log(f"cmnist: spectrum in {spectra[net][2]:.1f} s")
        U = spectra[net][0].U.astype(dtype)
        batches["uz"] = jnp.zeros((R,) + U.shape, dtype).at[0].set(U)  # restart 0's only
    i = config.methods.index(name) + 1
    bar = StepProgress(
        f"cmnist {name} [{i}/{len(config.methods)}]",
        G * R * method.steps,
        unit="restart-steps",
        enabled=progress,
    )
    run = train(name, method, batches, jnp.tile(init_keys, (G, 1)), progress=bar, **train_kw)
    done = f"{G * R} runs x {method.steps} steps"
    seconds = bar.close(done)
    if not bar.enabled:
        log(f"cmnist: {name}: {done} in {seconds:.1f} s")
    ev = evaluate(run, batches, probe)
    hist = {h: np.asarray(v, np.float64) for h, v in run.history.items() if h != "uyf"}
    records = [
        {
            "method": name,
            "step": int(step),
            **(point if G > 1 else {}),
            **{h: float(v[g * R : (g + 1) * R, r].mean()) for h, v in hist.items()},
        }
        for g, point in enumerate(grid)
        for r, step in enumerate(run.steps)
    ]

    def summary(g):
        part = jax.tree_util.tree_map(lambda a: a[g * R : (g + 1) * R], ev)
        return restart_summary(part, keep=("train_acc", "test_acc"))

    if G == 1:
        entry = {
            **summary(0),
            "selection": "published hyperparameters (tuned on the test "
            "environment by their authors)",
        }
    else:
        entry = {
            **sweep_selection([{**grid[g], **summary(g)} for g in range(G)], grid),
            "selection": "training-domain validation (held-out part of the training environments)",
        }
    hp = config.coefficients(name)
    # "penalty" and "l2" keep the results format of earlier versions beside the objective's names.
    entry["config"] = {
        "name": name,
        **method._asdict(),
        "l2": hp.get("l2", 0.0),
        "penalty": hp.get("coef", hp.get("penalty_weight", 0.0)),
        **hp,
    }
    return entry, records, (response_curves(run, batches) if k else None)


def run_experiment(config: Config, out: str, *, verbose: bool = True) -> dict[str, Any]:
    """Run the protocol and write config.json, metrics.jsonl, results.json, figures and summary.md.

    Everything is checked and trained before the run directory is created, so a failed run leaves
    no folder behind.

    Args:
        config: the settings.
        out: the run directory.
        verbose: progress and timings on stderr.

    Returns:
        The results dictionary (as written to results.json).
    """
    import jax

    from ntkdyn.data.colored_mnist import colored_mnist, probe_examples
    from ntkdyn.runs import RunDir, svd_report
    from ntkdyn.train.layout import eigen_matmul_options

    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out: {out} exists and is not a directory; choose another --out")
    images, digits, data_info = load_data(config)
    layout = config.layout()
    compiler_options = eigen_matmul_options() if config.cpu_matmul == "eigen" else {}

    def log(msg):
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    log(f"cmnist: {data_info['description']}")
    R = config.restarts
    data_keys = restart_keys(config.seed, "data", config.first_restart, R)
    init_keys = restart_keys(config.seed, "init", config.first_restart, R)
    envs = jax.jit(jax.vmap(lambda k: colored_mnist(k, images, digits)))(data_keys)
    records, methods_out, curves, spectra = [], {}, {}, {}
    for name in config.methods:
        entry, recs, curve = train_method(
            config,
            name,
            envs,
            init_keys,
            spectra=spectra,
            log=log,
            log_every=config.log_every,
            layout=layout,
            compiler_options=compiler_options,
            progress=None if verbose else False,
        )
        methods_out[name], records = entry, records + recs
        if curve is not None:
            curves[LABELS[name]] = curve
    results = {
        "data": {
            k: data_info[k] for k in ("source", "n_images", "description", "n_train", "n_test")
        },
        "selection": (
            "training-domain validation over a grid; the test-domain choice is reported beside it"
            if config.sweep
            else "test-domain: published hyperparameters, tuned on the test environment by their authors"
        ),
        "methods": methods_out,
        "published": {m: PUBLISHED[m] for m in config.methods},
    }
    if spectra:
        _, report, seconds = next(iter(spectra.values()))
        n = int(report.U.shape[0])  # every training example of the first restart
        results["spectrum"] = svd_report(
            report,
            method="matrix-free truncated SVD of YΦ at θ₀ (ntkdyn.feature_spectrum, k)",
            restart=config.first_restart,
            seconds=seconds,
        )
        results["starvation"] = theory_starvation(
            report, n=n, erm_l2=config.erm_l2, sd_coef=config.sd_coef
        )
        results["responses"] = {
            m: {"z_final": c["z"][-1], "captured": float(c["captured"])} for m, c in curves.items()
        }
    run_dir = RunDir(out)
    run_dir.write_config(
        {
            **dataclasses.asdict(config),
            "layout": layout.describe(),
            "compiler_options": compiler_options,
            "data": data_info,
            "out": str(out),
        }
    )
    run_dir.write_metrics(records)
    run_dir.write_results(results)
    if curves:
        run_dir.write_npz(
            "feature_responses.npz",
            **{f"{m}_{k}": v for m, c in curves.items() for k, v in c.items()},
        )
    _figures(run_dir, methods_out, probe_examples(envs), curves, results.get("starvation"))
    run_dir.write_text("summary.md", summary_markdown(results, config))
    return results


def _figures(run_dir, methods_out, examples, curves=None, starvation=None) -> None:
    from ntkdyn.plots.cmnist import feature_response_figure, probe_figure, starvation_figure

    probe = {LABELS[m]: r["probe"] for m, r in methods_out.items()}
    run_dir.save_figure(probe_figure(probe, examples), "cmnist_probe")
    if curves:
        run_dir.save_figure(
            feature_response_figure(curves), "cmnist_feature_responses_over_training"
        )
    if starvation and all("matrix" in v for v in starvation.values()):
        matrices = {f"{k.upper()}, λ = {v['lam']:.3g}": v["matrix"] for k, v in starvation.items()}
        run_dir.save_figure(starvation_figure(matrices), "cmnist_starvation_matrix")


# ------------------------------------------------------------------------------------------- merging

#: Settings that runs must share to be parts of one protocol.
MERGE_MATCH = (
    *("seed", "methods", "step_divisor", "sweep", "max_images", "spectrum_k", "log_every"),
    *(f"{m}_{c}" for m in METHODS for c in COEFFICIENTS[m]),
    *("data/source", "data/n_images", "data/n_train", "data/n_test"),
)


def merge(run_dirs: Sequence[str], out: str) -> dict[str, Any]:
    """Join runs over disjoint restarts (``--first-restart``) into the run of all of them.

    :func:`ntkdyn.runs.merge_runs` concatenates the per-restart accuracies, pools the probe's mean
    and std exactly and weights the curves by restart count; the feature responses, spectrum and
    starvation matrix (the first restart of the protocol) come from the first run, the probe
    figure's examples are rebuilt from its data.

    Raises:
        ValueError: as :func:`ntkdyn.runs.merge_runs`, and for ``--sweep`` runs.
    """
    from ntkdyn.data.colored_mnist import recorded_probe_examples
    from ntkdyn.runs import merge_runs

    def check(path, cfg):
        if cfg.get("sweep"):
            raise ValueError(
                f"merge: {path} is a --sweep run; only runs of the published "
                "hyperparameters can be merged"
            )

    figures = ("feature_responses_over_training", "starvation_matrix")
    merged = merge_runs(
        run_dirs,
        out,
        concat=("train_acc", "test_acc"),
        match=MERGE_MATCH,
        record_keys=("method", "step"),
        copy=["feature_responses.npz"]
        + [f"cmnist_{f}.{x}" for f in figures for x in ("png", "pdf")],
        check=check,
        command="ntkdyn cmnist",
    )
    cfg0 = merged.config
    recorded = {f.name for f in dataclasses.fields(Config)} - {"data_dir"}  # maybe not here
    config = Config(**{k: v for k, v in cfg0.items() if k in recorded})
    methods = {m: merged.results["methods"][m] for m in config.methods}
    key = restart_keys(cfg0["seed"], "data", config.first_restart, 1)[0]
    _figures(merged.run_dir, methods, recorded_probe_examples(cfg0.get("data", {}), key))
    parts = ", ".join(
        f"`{p.path}` (restarts {p.first}–{p.first + p.count - 1})" for p in merged.parts
    )
    summary = summary_markdown(merged.results, config) + f"\nMerged from {parts}.\n"
    merged.run_dir.write_text("summary.md", summary)
    return merged.results


# ------------------------------------------------------------------------------------------ report


def summary_markdown(results: dict[str, Any], config: Config) -> str:
    """The Markdown summary: our accuracies beside the published ones, the probe, data and selection."""
    from ntkdyn.runs import format_mean_std as pct
    from ntkdyn.runs import markdown_table, restarts_label, versus_published_table

    d, methods, div = results["data"], results["methods"], config.step_divisor
    quick = f"; quick mode (1/{div} of the steps)" if div > 1 else ""
    columns = [(f"{s}_acc", s, f"{s} acc") for s in ("train", "test")]
    lines = [
        "# Colored MNIST (Pezeshki et al. 2021, Table 1)",
        "",
        f"Data: {d['description']} — {d['n_images']} images ({d['n_train']} training, "
        f"{d['n_test']} test); source `{d['source']}`.",
        f"Restarts: {restarts_label(config.first_restart, config.restarts)}; seed {config.seed}"
        f"{quick}.",
        f"Model selection: {results['selection']}.",
        "",
        *versus_published_table(methods, PUBLISHED, columns, labels=LABELS),
        "",
        "Published figures are on full MNIST (60,000 images); accuracies in %, mean ± std over restarts.",
        "",
        "## Probe (Fig. 4): accuracy % / mean binary entropy (nats), ours (published)",
        "",
        "Ours: mean over restarts on the test environment; published: one restart.",
        "",
    ]

    def cell(m, i, k):
        p, pub = methods[m]["probe"][k], PUBLISHED[m].get("probe")
        text = f"{100 * p['acc']:.1f} / {p['entropy']:.2f}"
        return text + (f" ({100 * pub['acc'][i]:.1f} / {pub['entropy'][i]:.2f})" if pub else "")

    lines += markdown_table(
        ["method", "digit, gray", "digit, colour", "blank, gray", "blank, colour"],
        [[LABELS[m]] + [cell(m, i, k) for i, k in enumerate(PROBE_INPUTS)] for m in methods],
    )
    rows = [
        [
            LABELS[m]
            + (" (selected)" if all(p[c] == r["selected"][c] for c in COEFFICIENTS[m]) else ""),
            ", ".join(f"{c} {p[c]:.4g}" for c in COEFFICIENTS[m]),
            *(pct(p[f"{s}_acc_mean"], p[f"{s}_acc_std"]) for s in ("train", "val", "test")),
        ]
        for m, r in methods.items()
        for p in r.get("sweep", [])
    ]
    if rows:
        header = ["method", "hyperparameters", "train acc", "validation acc", "test acc"]
        lines += ["", "## Sweeps", "", *markdown_table(header, rows)]
    if "starvation" in results:
        lines += theory_markdown(results, config)
    lines += [
        "",
        "Figures: `cmnist_probe.png`, `cmnist_feature_responses_over_training.png` and "
        "`cmnist_starvation_matrix.png` (the last two when ERM or SD ran).",
        "",
    ]
    return "\n".join(lines)


def theory_markdown(results: dict[str, Any], config: Config) -> list[str]:
    """Summary lines: the measured spectrum, the starvation matrices and where the theory holds."""
    sp, st, resp = results["spectrum"], results["starvation"], results["responses"]
    s = ", ".join(f"{v:.1f}" for v in sp["s"][:5])
    lines = [
        "",
        "## Feature responses and the theory's starvation matrix",
        "",
        f"Spectrum of YΦ at θ₀ (restart {sp['restart']}, all {sp['n']} training examples, top "
        f"{sp['k']} directions matrix-free): s₁…s₅ = {s}; max residual "
        f"{max(sp['residuals']):.1e} ({'converged' if sp['converged'] else 'NOT converged'}) in "
        f"{sp['seconds']:.0f} s.",
        "",
    ]
    for m, r in resp.items():
        top = sorted(range(len(r["z_final"])), key=lambda j: -abs(r["z_final"][j]))[:3]
        zs = ", ".join(f"z{j + 1} = {r['z_final'][j]:.1f}" for j in top)
        lines.append(
            f"* {m}, measured at the end: {zs}; the {sp['k']} directions hold "
            f"{100 * r['captured']:.0f} % of ‖Δf‖² on the training set."
        )
    for name, t in st.items():
        if "matrix" not in t:
            lines.append(f"* Theory, {name.upper()} (λ = {t['lam']:.3g}): {t['error'][:160]}")
            continue
        zs = sorted(range(len(t["z_star"])), key=lambda j: -abs(t["z_star"][j]))[:3]
        lines.append(
            f"* Theory, {name.upper()} (λ = {t['lam']:.3g}, {t['lam_source']}): z* has "
            + ", ".join(f"z{j + 1}* = {t['z_star'][j]:.1f}" for j in zs)
            + f"; ∂z_j*/∂s₁ < 0 for {100 * t['negative_fraction_col1']:.0f} % of j > 1 "
            f"(least {t['col1_min']:.2g}), ∂z_j*/∂s_{t['dominant']} < 0 for "
            f"{100 * t['negative_fraction_dominant']:.0f} % of j ≠ {t['dominant']} (least "
            f"{t['dominant_min']:.2g}); max |∂z*/∂s| = {t['max_abs']:.2g}."
        )
    anneal = config.method("sd").anneal_steps
    lines += [
        "",
        "Where the theory holds and where it breaks: SD's fixed point does not depend on s "
        "(its matrix is rounding noise), so SD predicts no starvation on any spectrum; CE's "
        "coupling is of order λ/s_j², tiny at this λ, and the 25 % label noise keeps the "
        "fixed point of both losses near the unregularized logistic fit on the k directions. "
        "The theory is gradient descent on the linearized network from z = 0; the run is Adam "
        "(per-parameter steps, no fixed kernel) with large steps, and the network leaves the "
        "linear regime: the share of Δf the directions at θ₀ hold (above) measures how far. "
        f"SD's published annealing makes its loss c·(ℓ + mean f²) from step {anneal} on, "
        "the theory's λ = 2 (coefficient 1), not λ = 2c: the responses are pulled back then.",
    ]
    return lines


# --------------------------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    """``ntkdyn cmnist``'s flags: one per :class:`Config` field, plus ``--out`` and ``--merge``."""
    add_arguments(parser, Config())
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: the defaults of Config.quick() (2 "
        "restarts, 1,200 images, 1/20 of the steps); other flags override them",
    )
    parser.add_argument("--out", default="runs/cmnist", help="output directory")
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="RUN_DIR",
        help="join runs of one protocol over disjoint restarts into --out (no training)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``ntkdyn cmnist``; returns the exit status."""
    from ntkdyn.runs import format_mean_std as pct

    if args.merge:
        results = merge(args.merge, args.out)
    else:
        base = Config.quick() if args.quick else Config()
        results = run_experiment(from_arguments(base, args), args.out)
    for m, r in results["methods"].items():
        print(
            f"{LABELS[m]:>16}: train {pct(r['train_acc_mean'], r['train_acc_std'])}  "
            f"test {pct(r['test_acc_mean'], r['test_acc_std'])}  ({len(r['train_acc'])} restarts)"
        )
    print(f"results in {args.out} ({results['data']['description']})")
    return 0
