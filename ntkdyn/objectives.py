"""Training objectives: ERM, Spectral Decoupling and the baselines as small objects.

Every experiment trains through one of these, in the spirit of optax's ``(init, update)`` pairs:
an objective is a frozen dataclass holding its hyperparameters (floats or optax schedules of the
step), with two pure functions

* ``init() -> state`` — the objective's own state (``()`` for all but Group DRO), and
* ``loss(logits, y01, *, step=0, state=(), groups=None, params=None) -> (value, (state, metrics))``.

``logits`` are (n,) model outputs, ``y01`` (n,) labels in {0, 1}. The objectives that compare
environments (:class:`IRMv1`, :class:`VREx`) take tuples of per-environment arrays instead; every
other objective accepts either and pools a tuple. ``metrics`` is a dict of scalars, always with
``"nll"`` (the mean logistic loss) and, for penalised objectives, ``"penalty"``. Objectives are
cheap to build and hold no arrays of their own, so they may be built inside a ``jit``/``vmap``
from traced hyperparameters (a sweep vmaps over the coefficient).

**One name, one convention.** The Spectral Decoupling coefficient is ``coef`` everywhere, in the
*mean* form of the authors' code: loss = mean(ℓ) + coef·mean(ŷ²). The theory (``ntkdyn.dynamics``)
writes the sum form Σℓ + (λ/2)‖ŷ‖², which is n times the mean form with λ = 2·coef. Coupled weight
decay ``wd`` on a mean loss (gradient + wd·θ) is the sum form's (λ/2)‖θ‖² with λ = n·wd.
:func:`theory_lam` is the one place that converts.

References: Pezeshki et al. 2021 (SD, Sec. 4; class-conditional SD, Sec. 5); Arjovsky et al. 2019
(IRMv1); Krueger et al. 2021 (V-REx); Sagawa et al. 2020 (Group DRO, Alg. 1 and the
kohpangwei/group_DRO reference code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ntkdyn.dynamics import ce_field, sd_field
from ntkdyn.losses import irm_penalty, sd_penalty, vrex_penalty

__all__ = [
    "Objective",
    "Composite",
    "Logistic",
    "Penalty",
    "L2",
    "LogitPenalty",
    "IRMPenalty",
    "VRExPenalty",
    "Terms",
    "ERM",
    "SpectralDecoupling",
    "ClassConditionalSD",
    "IRMv1",
    "VREx",
    "GroupDRO",
    "GroupDROState",
    "switch",
    "theory_lam",
]

Schedule = float | Callable[[Any], Any]
Logits = Float[Array, " n"] | Sequence[Float[Array, " n_e"]]


def switch(before: float, after: Any, at: int) -> optax.Schedule:
    """The step schedule ``before`` for step < ``at``, ``after`` from step ``at`` on.

    The penalty annealing of IRMv1, V-REx and the authors' SD is this shape. ``after`` may be a
    traced value (a vmapped sweep).

    Args:
        before: value before step ``at``.
        after: value from step ``at`` on.
        at: the first step of ``after`` (≥ 0).

    Raises:
        ValueError: if ``at`` is negative.
    """
    if not isinstance(at, (int, np.integer)) or at < 0:
        raise ValueError(f"at: expected an integer step >= 0, got {at!r}")

    def schedule(step):
        return jnp.where(jnp.asarray(step) >= at, after, before)

    return schedule


def _value(schedule: Schedule, step) -> Any:
    return schedule(step) if callable(schedule) else schedule


def _check_scalar(name: str, value: Schedule, *, positive: bool = False) -> None:
    if callable(value) or isinstance(value, jax.core.Tracer):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number or an optax schedule, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or (positive and v == 0):
        need = "> 0" if positive else ">= 0"
        raise ValueError(f"{name}: expected a finite number {need}, got {value!r}")


def _pool(logits: Logits, y01) -> tuple[Array, Array]:
    if isinstance(logits, (tuple, list)):
        if not isinstance(y01, (tuple, list)) or len(y01) != len(logits):
            raise ValueError(
                "y01: with logits given per environment (a tuple), pass the labels as a tuple of "
                "the same length"
            )
        return jnp.concatenate(logits), jnp.concatenate(y01)
    return logits, y01


def _check_pair(logits: Array, y01: Array) -> None:
    if logits.ndim != 1 or jnp.shape(y01) != logits.shape:
        raise ValueError(
            f"logits, y01: expected two 1-D arrays of the same length, got shapes {logits.shape} "
            f"and {jnp.shape(y01)}; squeeze a trailing output axis of size 1 first"
        )


def _nll(logits: Array, y01: Array, reduction: str = "mean") -> Array:
    """Logistic loss softplus(−y± f) with y± = 2·y01 − 1 (accurate for large |f|)."""
    _check_pair(logits, y01)
    per = jax.nn.softplus(-(2.0 * jnp.asarray(y01, logits.dtype) - 1.0) * logits)
    return jnp.mean(per) if reduction == "mean" else per


def _sqnorm(params: Any, l2: Any) -> Any:
    if isinstance(l2, (int, float)) and l2 == 0:
        return 0.0
    if params is None:
        raise ValueError("params: required when l2 > 0 (the l2·Σ‖w‖² term)")
    return sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(params))


class Objective:
    """Base of the objectives: a stateless ``init`` and the ``loss`` contract (module docstring).

    Objectives compose: ``objective + penalty`` (or ``+`` another objective, whose penalties are
    added) gives a :class:`Composite` with the left one's base risk.
    """

    def init(self) -> Any:
        """The objective's initial state (``()``: none)."""
        return ()

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):  # pragma: no cover
        raise NotImplementedError

    def parts(self) -> tuple[Any, tuple[Penalty, ...]]:
        """``(base, penalties)``: the base risk and the penalties added to it."""
        return self, ()

    def __add__(self, other: Any) -> Composite:
        base, mine = self.parts()
        if isinstance(other, Penalty):
            return Composite(base, (*mine, other))
        if isinstance(other, Objective):
            return Composite(base, (*mine, *other.parts()[1]))
        return NotImplemented


@dataclasses.dataclass(frozen=True)
class Terms:
    """What a penalty sees: the pooled and per-environment logits and labels, the step, params.

    Attributes:
        f, y: pooled (n,) logits and labels in {0, 1}.
        fs, ys: per-environment tuples (``None`` when the logits came pooled).
        step: the step (penalties anneal with it).
        params: the model parameters (``None`` if the loop passes none).
    """

    f: Any
    y: Any
    fs: Any
    ys: Any
    step: Any
    params: Any

    def risks(self) -> Array:
        """(e,) mean logistic loss R_e of each environment."""
        if self.fs is None:
            raise ValueError(
                "logits: this penalty compares environments; pass a tuple of >= 2 "
                "per-environment logit arrays (and y01 as a matching tuple)"
            )
        return jnp.stack([_nll(f, y) for f, y in zip(self.fs, self.ys, strict=True)])


class Penalty:
    """A term added to a base risk: ``term(terms) -> (added value, reported value or None)``.

    ``divisor(step)`` divides the whole objective (1 for all but the annealed environment
    penalties, whose published form divides by max(weight, 1)); ``key`` names the reported value
    in the metrics (``"penalty"`` when it is the composite's only reported penalty,
    ``"penalty_<key>"`` otherwise).
    """

    key = "penalty"

    def term(self, terms: Terms) -> tuple[Any, Any]:  # pragma: no cover
        raise NotImplementedError

    def divisor(self, step) -> Any:
        """What the whole objective is divided by at ``step`` (1: nothing)."""
        return 1.0


@dataclasses.dataclass(frozen=True)
class L2(Penalty):
    """weight·Σ_w ‖w‖² over every parameter (needs ``params``); written once for every objective.

    Attributes:
        weight: the coefficient (float or schedule), ≥ 0.
    """

    weight: Schedule = 0.0
    key = "l2"

    def __post_init__(self):
        _check_scalar("l2", self.weight)

    def term(self, terms):
        w = _value(self.weight, terms.step)
        if _is_zero(w):
            return None, None
        return w * _sqnorm(terms.params, w), None


@dataclasses.dataclass(frozen=True)
class LogitPenalty(Penalty):
    """Spectral Decoupling's penalty coef(t)·mean_i f_i² (Pezeshki et al. 2021, Sec. 4).

    Attributes:
        coef: the mean-form coefficient c (float or schedule), ≥ 0.
    """

    coef: Schedule = 0.0
    key = "sd"

    def __post_init__(self):
        _check_scalar("coef", self.coef)

    def term(self, terms):
        pen = sd_penalty(terms.f)
        return _value(self.coef, terms.step) * pen, pen


@dataclasses.dataclass(frozen=True)
class IRMPenalty(Penalty):
    """IRMv1's λ(t)·mean_e (∂R_e(w·f)/∂w |_{w=1})², the objective divided by max(λ(t), 1).

    Attributes:
        weight: λ (float or schedule), ≥ 0.
    """

    weight: Schedule = 1.0
    key = "irm"

    def __post_init__(self):
        _check_scalar("penalty_weight", self.weight)

    def term(self, terms):
        terms.risks()  # checks the environments
        pens = [
            irm_penalty(f, jnp.asarray(y, f.dtype)) for f, y in zip(terms.fs, terms.ys, strict=True)
        ]
        pen = jnp.mean(jnp.stack(pens))
        return _value(self.weight, terms.step) * pen, pen

    def divisor(self, step):
        return jnp.maximum(_value(self.weight, step), 1.0)


@dataclasses.dataclass(frozen=True)
class VRExPenalty(Penalty):
    """V-REx's β(t)·e²·Var_e(R_e) ((R₁ − R₂)² for two environments), divided by max(β(t), 1).

    Attributes:
        weight: β (float or schedule), ≥ 0.
    """

    weight: Schedule = 1.0
    key = "vrex"

    def __post_init__(self):
        _check_scalar("penalty_weight", self.weight)

    def term(self, terms):
        risks = terms.risks()
        pen = len(terms.fs) ** 2 * vrex_penalty(risks)
        return _value(self.weight, terms.step) * pen, pen

    def divisor(self, step):
        return jnp.maximum(_value(self.weight, step), 1.0)


@dataclasses.dataclass(frozen=True)
class Logistic(Objective):
    """The base risk: weight(t)·mean logistic loss, pooled or over environments.

    Attributes:
        weight: the risk's weight w(t) (float or schedule; SD's annealing).
        over: ``"examples"`` (mean over all examples), ``"environments"`` (mean_e R_e, IRMv1) or
            ``"environments_sum"`` (Σ_e R_e, V-REx's released code).
    """

    weight: Schedule = 1.0
    over: str = "examples"

    def __post_init__(self):
        _check_scalar("nll_weight", self.weight)
        if self.over not in ("examples", "environments", "environments_sum"):
            raise ValueError(
                f"over: expected examples, environments or environments_sum, got {self.over!r}"
            )

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(w·risk, (state, {"nll"})) with "nll" the pooled mean logistic loss."""
        terms = _terms(logits, y01, step, params, self.over != "examples")
        nll = _nll(terms.f, terms.y)
        if self.over == "examples":
            risk = nll
        else:
            risk = terms.risks()
            risk = jnp.mean(risk) if self.over == "environments" else jnp.sum(risk)
        w = _value(self.weight, step)
        return (risk if _is_one(w) else w * risk), (state, {"nll": nll})


def _is_one(v) -> bool:
    return (
        isinstance(v, (int, float)) and not isinstance(v, bool) and v == 1 and callable(v) is False
    )


def _terms(logits, y01, step, params, environments: bool) -> Terms:
    if environments:
        fs, ys = _environments(logits, y01, "this objective")
    elif isinstance(logits, (tuple, list)):
        _pool(logits, y01)
        fs, ys = list(logits), list(y01)
    else:
        fs = ys = None
    f, y = _pool(logits, y01)
    _check_pair(f, y)
    return Terms(f, y, fs, ys, step, params)


@dataclasses.dataclass(frozen=True)
class Composite(Objective):
    """A base risk plus penalties: L = [base + Σ_p term_p] / max_p divisor_p (each term once).

    Like optax's ``chain``: ``ERM(l2=1e-3)`` is ``Composite(Logistic(), (L2(1e-3),))``, and
    ``SpectralDecoupling(coef=c) + IRMPenalty(λ)`` adds IRMv1's penalty to SD. The metrics are the
    base's, plus each reported penalty value (``"penalty"`` for a single one, else
    ``"penalty_<key>"``).

    Attributes:
        base: the base risk (:class:`Logistic`, :class:`GroupDRO`, or any objective).
        penalties: the :class:`Penalty` terms, added in order.
    """

    base: Any = dataclasses.field(default_factory=lambda: Logistic())
    penalties: tuple = ()

    def __post_init__(self):
        for i, p in enumerate(self.penalties):
            if not isinstance(p, Penalty):
                raise ValueError(f"penalties[{i}]: expected a Penalty (e.g. L2(1e-4)), got {p!r}")

    def parts(self):
        return self.base, tuple(self.penalties)

    def init(self, *args) -> Any:
        return self.base.init(*args)

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(L, (state, metrics)); see the class docstring."""
        value, (state, metrics) = self.base.loss(
            logits, y01, step=step, state=state, groups=groups, params=params
        )
        envs = isinstance(logits, (tuple, list))
        terms = _terms(logits, y01, step, params, False) if self.penalties else None
        if terms is not None and not envs:
            terms = dataclasses.replace(terms, fs=None, ys=None)
        reported = [p for p in self.penalties if p.key != "l2"]
        metrics = dict(metrics)
        divisor = None
        for p in self.penalties:
            add, shown = p.term(terms)
            if add is not None:
                value = value + add
            if shown is not None:
                metrics["penalty" if len(reported) == 1 else f"penalty_{p.key}"] = shown
            d = p.divisor(step)
            if not (isinstance(d, float) and d == 1.0):
                divisor = d if divisor is None else jnp.maximum(divisor, d)
        if divisor is not None:
            value = value / divisor
        return value, (state, metrics)


@dataclasses.dataclass(frozen=True)
class ERM(Objective):
    """Empirical risk minimisation: mean logistic loss (+ l2·Σ‖w‖² when ``l2`` > 0).

    L = mean_i softplus(−y±_i f_i) + l2·Σ_w ‖w‖² (the l2 term over every parameter, as in the IRM
    authors' Colored MNIST code; use the optimizer's weight decay for PyTorch-style decay).
    ``Composite(Logistic(), (L2(l2),))``.

    Attributes:
        l2: coefficient of Σ‖w‖² (needs ``params`` in :meth:`loss`).
    """

    l2: Schedule = 0.0

    def __post_init__(self):
        _check_scalar("l2", self.l2)

    def parts(self):
        return Logistic(), (L2(self.l2),)

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(L, (state, {"nll"})); see the class docstring."""
        return Composite(*self.parts()).loss(logits, y01, step=step, state=state, params=params)


def _is_zero(v) -> bool:
    return isinstance(v, (int, float)) and v == 0


@dataclasses.dataclass(frozen=True)
class SpectralDecoupling(Objective):
    """Spectral Decoupling (Pezeshki et al. 2021, Sec. 4): an L2 penalty on the logits.

    L = w(t)·mean_i softplus(−y±_i f_i) + coef(t)·mean_i f_i² (+ l2·Σ‖w‖²);
    ``Composite(Logistic(w), (LogitPenalty(coef), L2(l2)))``.

    ``coef`` is the mean-form coefficient c of the authors' code (theory's λ = 2c, see
    :func:`theory_lam`). ``nll_weight`` w(t) is 1 except in the authors' Colored MNIST annealing,
    ``nll_weight=switch(1.0, c, at=450)``: L = ℓ + c·sd before step 450 and c·(ℓ + sd) after
    (:meth:`annealed`).

    Attributes:
        coef: SD coefficient c (float or schedule), ≥ 0.
        nll_weight: weight of the logistic loss (float or schedule).
        l2: coefficient of Σ‖w‖² (needs ``params``).
    """

    coef: Schedule = 0.0
    nll_weight: Schedule = 1.0
    l2: Schedule = 0.0

    def __post_init__(self):
        _check_scalar("coef", self.coef)
        _check_scalar("nll_weight", self.nll_weight)
        _check_scalar("l2", self.l2)

    @classmethod
    def annealed(cls, coef: Any, at: int, **kwargs) -> SpectralDecoupling:
        """The authors' Colored MNIST form: ℓ + c·sd before step ``at``, c·(ℓ + sd) from it on."""
        return cls(coef=coef, nll_weight=switch(1.0, coef, at), **kwargs)

    def parts(self):
        return Logistic(self.nll_weight), (LogitPenalty(self.coef), L2(self.l2))

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(L, (state, {"nll", "penalty"})); see the class docstring."""
        return Composite(*self.parts()).loss(logits, y01, step=step, state=state, params=params)


@dataclasses.dataclass(frozen=True)
class ClassConditionalSD(Objective):
    """Class-conditional SD (Pezeshki et al. 2021, Sec. 5, CelebA).

    L = mean_i ℓ_i + Σ_c coef_c · mean_{i: y_i = c} (f_i − target_c)²; a class absent from the
    batch contributes 0. Paper values: coef = (0.1, 0.1), target = (0.44, 2.5).

    Attributes:
        coef: (c₀, c₁), per-class mean-form coefficients, ≥ 0.
        target: (γ₀, γ₁), per-class logit targets.
    """

    coef: tuple[float, float] = (0.1, 0.1)
    target: tuple[float, float] = (0.44, 2.5)

    def __post_init__(self):
        for name in ("coef", "target"):
            v = getattr(self, name)
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                raise ValueError(f"{name}: expected a pair (class 0, class 1), got {v!r}")
        for c in self.coef:
            _check_scalar("coef", c)

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(L, (state, {"nll", "penalty"})); see the class docstring."""
        f, y = _pool(logits, y01)
        nll = _nll(f, y)
        y = jnp.asarray(y, f.dtype)
        pen = jnp.zeros((), f.dtype)
        for c in (0, 1):
            mask = (y == c).astype(f.dtype)
            mean_sq = jnp.sum(mask * (f - self.target[c]) ** 2) / jnp.maximum(jnp.sum(mask), 1.0)
            pen = pen + self.coef[c] * mean_sq
        return nll + pen, (state, {"nll": nll, "penalty": pen})


def _environments(logits, y01, name: str) -> tuple[list[Array], list[Array]]:
    if not isinstance(logits, (tuple, list)) or len(logits) < 2:
        raise ValueError(
            f"logits: {name} compares environments; pass a tuple of >= 2 per-environment logit "
            f"arrays (and y01 as a matching tuple), got {type(logits).__name__}"
        )
    if not isinstance(y01, (tuple, list)) or len(y01) != len(logits):
        raise ValueError(f"y01: expected a tuple of {len(logits)} per-environment label arrays")
    for f, y in zip(logits, y01, strict=True):
        _check_pair(f, y)
    return list(logits), list(y01)


@dataclasses.dataclass(frozen=True)
class IRMv1(Objective):
    """IRMv1 (Arjovsky et al. 2019), as in the authors' Colored MNIST code.

    L = [mean_e R_e + l2·Σ‖w‖² + λ(t)·mean_e P_e] / max(λ(t), 1), with R_e the mean logistic loss of
    environment e and P_e = (∂R_e(w·f)/∂w |_{w=1})²;
    ``Composite(Logistic(over="environments"), (L2(l2), IRMPenalty(λ)))``. The published protocol
    anneals the penalty: ``penalty_weight=switch(1.0, 91257.19, at=190)``.

    Attributes:
        penalty_weight: λ (float or schedule), ≥ 0.
        l2: coefficient of Σ‖w‖² (needs ``params``).
    """

    penalty_weight: Schedule = 1.0
    l2: Schedule = 0.0

    def __post_init__(self):
        _check_scalar("penalty_weight", self.penalty_weight)
        _check_scalar("l2", self.l2)

    def parts(self):
        return Logistic(over="environments"), (L2(self.l2), IRMPenalty(self.penalty_weight))

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(L, (state, {"nll", "penalty"})); ``logits``/``y01`` are per-environment tuples."""
        _environments(logits, y01, "IRMv1")
        return Composite(*self.parts()).loss(logits, y01, step=step, state=state, params=params)


@dataclasses.dataclass(frozen=True)
class VREx(Objective):
    """V-REx (Krueger et al. 2021), as in their released Colored MNIST code.

    L = [Σ_e R_e + l2·Σ‖w‖² + β(t)·(R₁ − R₂)²] / max(β(t), 1) for two environments (in general
    β·e²·Var_e(R_e), which is (R₁ − R₂)² for e = 2);
    ``Composite(Logistic(over="environments_sum"), (L2(l2), VRExPenalty(β)))``. Published:
    ``penalty_weight=switch(1.0, 1e4, at=100)``.

    Attributes:
        penalty_weight: β (float or schedule), ≥ 0.
        l2: coefficient of Σ‖w‖² (needs ``params``).
    """

    penalty_weight: Schedule = 1.0
    l2: Schedule = 0.0

    def __post_init__(self):
        _check_scalar("penalty_weight", self.penalty_weight)
        _check_scalar("l2", self.l2)

    def parts(self):
        return Logistic(over="environments_sum"), (L2(self.l2), VRExPenalty(self.penalty_weight))

    def loss(self, logits, y01, *, step=0, state=(), groups=None, params=None):
        """(L, (state, {"nll", "penalty"})); ``logits``/``y01`` are per-environment tuples."""
        _environments(logits, y01, "VREx")
        return Composite(*self.parts()).loss(logits, y01, step=step, state=state, params=params)


class GroupDROState(NamedTuple):
    """Online group weights q (sum to 1) of Group DRO."""

    q: Float[Array, " g"]


@dataclasses.dataclass(frozen=True)
class GroupDRO(Objective):
    """Online Group DRO (Sagawa et al. 2020, Alg. 1), as kohpangwei/group_DRO computes it.

    Per batch: group mean losses L_g (0 for a group absent from the batch), adjusted losses
    L̃_g = L_g + C/√n_g when C > 0 (also for absent groups, whose weight then grows by
    exp(η·C/√n_g); with C = 0 it stays), weights q_g ← q_g·exp(η·L̃_g), renormalised, and the
    robust loss Σ_g q_g L̃_g with the *new* q held constant (no gradient through q). The reference
    adjusts the group losses in place, so its robust loss carries the constant C/√n_g as well.

    Attributes:
        num_groups: number of groups g ≥ 1.
        step_size: η_q (0.01 in Sagawa et al.), > 0.
        adjustment: C of the generalisation adjustment (0: none), ≥ 0.
        group_counts: training-set size n_g of each group (needed when C > 0).
    """

    num_groups: int = 4
    step_size: float = 0.01
    adjustment: float = 0.0
    group_counts: tuple[int, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.num_groups, (int, np.integer)) or self.num_groups < 1:
            raise ValueError(f"num_groups: expected an integer >= 1, got {self.num_groups!r}")
        _check_scalar("step_size", self.step_size, positive=True)
        _check_scalar("adjustment", self.adjustment)
        if self.adjustment and self.group_counts is None:
            raise ValueError(
                "group_counts: required when adjustment > 0 (the C/sqrt(n_g) term); pass the "
                "training-set size of each group"
            )
        if self.group_counts is not None:
            counts = np.asarray(self.group_counts)
            if counts.shape != (self.num_groups,) or np.any(counts <= 0):
                raise ValueError(
                    f"group_counts: expected {self.num_groups} positive counts, got "
                    f"{self.group_counts!r}"
                )

    def init(self, dtype=jnp.float32) -> GroupDROState:
        """Uniform weights q_g = 1/g."""
        return GroupDROState(jnp.full((self.num_groups,), 1.0 / self.num_groups, dtype))

    def loss(self, logits, y01, *, step=0, state=None, groups=None, params=None):
        """(robust loss, (new state, {"nll", "q", "group_loss"})); ``groups`` (n,) ints in [0, g)."""
        f, y = _pool(logits, y01)
        if groups is None:
            raise ValueError("groups: GroupDRO needs the (n,) group id of every example")
        if state is None or state == ():
            state = self.init(f.dtype)
        per = _nll(f, y, reduction="none")
        onehot = jax.nn.one_hot(groups, self.num_groups, dtype=per.dtype)
        counts = onehot.sum(0)
        group_loss = (onehot * per[:, None]).sum(0) / jnp.maximum(counts, 1.0)
        if self.adjustment:
            # The reference adds C/sqrt(n_g) to the group losses in place, so the robust loss
            # carries it too: a constant, the gradient is the same.
            n_g = jnp.asarray(self.group_counts, per.dtype)
            group_loss = group_loss + self.adjustment / jnp.sqrt(n_g)
        q = state.q * jnp.exp(self.step_size * jax.lax.stop_gradient(group_loss))
        q = jax.lax.stop_gradient(q / q.sum())
        metrics = {"nll": jnp.mean(per), "q": q, "group_loss": group_loss}
        return jnp.sum(q * group_loss), (GroupDROState(q), metrics)


def theory_lam(
    objective: Objective, *, num_examples: int, weight_decay: float = 0.0
) -> tuple[Callable, float]:
    """The theory's field and λ for a training objective: the one place the conventions meet.

    The theory (Pezeshki et al. 2021, Sec. 3; ``ntkdyn.dynamics``) writes sum-form losses,
    Σᵢ ℓᵢ + (λ/2)‖θ‖² (CE with weight decay) and Σᵢ ℓᵢ + (λ/2)‖ŷ‖² (SD). Training writes mean
    forms: mean ℓ + coef·mean(ŷ²) is (1/n)[Σℓ + coef·‖ŷ‖²], so λ_SD = 2·coef; coupled weight
    decay wd on mean ℓ is (1/n)[Σℓ + (n·wd/2)‖θ‖²], so λ_CE = n·wd.

    An l2 term l2·Σθ² of the objective (:class:`L2`) is coupled weight decay wd = 2·l2, added to
    ``weight_decay``. Composed objectives are read through their parts (:meth:`Objective.parts`):
    the logistic base with :class:`L2` terms is CE, with :class:`LogitPenalty` terms SD.

    Args:
        objective: :class:`ERM`, :class:`SpectralDecoupling` or a :class:`Composite` of the
            logistic base with those penalties (constant coefficients).
        num_examples: n, the number of training examples of the mean.
        weight_decay: the optimizer's coupled weight decay wd (ERM only).

    Returns:
        ``(field, lam)``: ``ce_field`` with λ = n·(wd + 2·l2), or ``sd_field`` with λ = 2·coef.

    Raises:
        ValueError: for other objectives, scheduled coefficients, SD with weight decay, or
            ``num_examples`` < 1.
    """
    if not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples: expected an integer >= 1, got {num_examples!r}")
    _check_scalar("weight_decay", weight_decay)
    if not isinstance(objective, Objective):
        raise ValueError(f"objective: expected an ntkdyn.objectives objective, got {objective!r}")
    base, penalties = objective.parts()
    covered = (
        isinstance(base, Logistic)
        and base.over == "examples"
        and all(isinstance(p, (L2, LogitPenalty)) for p in penalties)
    )
    if not covered:
        raise ValueError(
            "objective: the theory covers the logistic loss with an l2 term (cross-entropy, "
            "ERM) or Spectral Decoupling's logit penalty, got "
            f"{type(objective).__name__} ({type(base).__name__} + "
            f"{', '.join(type(p).__name__ for p in penalties) or 'no penalty'})"
        )
    for value in (base.weight, *(getattr(p, "weight", getattr(p, "coef", 0.0)) for p in penalties)):
        if callable(value) or isinstance(value, jax.core.Tracer):
            raise ValueError(
                "objective: the theory needs constant coefficients, got a schedule or a traced "
                "value; pass numbers, e.g. SpectralDecoupling(coef=c)"
            )
    if float(base.weight) != 1.0:
        raise ValueError(
            "objective: the theory needs nll_weight 1; pass SpectralDecoupling(coef=c)"
        )
    coef = sum(float(p.coef) for p in penalties if isinstance(p, LogitPenalty))
    l2 = sum(float(p.weight) for p in penalties if isinstance(p, L2))
    if any(isinstance(p, LogitPenalty) for p in penalties):
        if weight_decay or l2:
            raise ValueError("weight_decay: the SD theory has no weight decay; pass 0 (and l2 = 0)")
        return sd_field, 2.0 * coef
    # l2·Σθ² has the gradient 2·l2·θ: coupled weight decay wd = 2·l2.
    return ce_field, float(num_examples) * (float(weight_decay) + 2.0 * l2)
