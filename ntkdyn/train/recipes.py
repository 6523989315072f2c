"""A method's recipe on training environments: network width, optimisation and annealed objective.

The environment methods of Colored MNIST (Arjovsky et al. 2019; Pezeshki et al. 2021, App.) differ
in their network width, Adam learning rate, number of full-batch steps and objective, whose penalty
takes its final form at an annealing step. A recipe holds those settings; its coefficient fields
(everything but :data:`NETWORK_FIELDS`) are the objective's hyperparameters, which
:meth:`Recipe.objective` turns into an :mod:`ntkdyn.objectives` objective. The values may be traced:
a sweep over a coefficient hands them in per run (``batch["hp"]``,
:func:`ntkdyn.train.restarts.train_restarts`).

* :class:`Recipe`: ERM with an l2 term; :class:`OracleRecipe`: ERM on channel-summed images;
* :class:`IRMRecipe`, :class:`VRExRecipe`: penalty weight 1 before the annealing step, the
  recipe's weight after (the loss divided by it, as in the authors' code);
* :class:`SDRecipe`: Spectral Decoupling, ℓ + c·mean(f²), then c·(ℓ + mean(f²)).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from ntkdyn.settings import check, integer, number

__all__ = [
    "NETWORK_FIELDS",
    "IRMRecipe",
    "OracleRecipe",
    "Recipe",
    "SDRecipe",
    "VRExRecipe",
    "environment_evaluation",
    "environment_loss",
    "sweep_grid",
]

#: The fields of a recipe that are not the objective's coefficients.
NETWORK_FIELDS = ("hidden", "lr", "steps", "anneal_steps", "grayscale")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """ERM: a network, its optimisation and the mean logistic loss plus l2·‖θ‖².

    Attributes:
        hidden: width h of both hidden layers
        lr: Adam learning rate
        steps: full-batch steps
        anneal_steps: the step from which the penalty takes its final form
        grayscale: train on the channel-summed images (the oracle)
        l2: coefficient of the sum of squared parameters

    Raises:
        ntkdyn.settings.ConfigError: naming the field of a value out of range.
    """

    hidden: int = 300
    lr: float = 1e-4
    steps: int = 1001
    anneal_steps: int = 0
    grayscale: bool = False
    l2: float = 0.0
    label: ClassVar[str] = "ERM"

    def __post_init__(self):
        rules = {"hidden": integer(1), "steps": integer(1), "anneal_steps": integer(0)}
        rules["lr"] = number(0, low_open=True)
        check(self, {**rules, **dict.fromkeys(self.coefficients(), number(0))})

    def coefficients(self) -> dict[str, float]:
        """The objective's hyperparameters (the swept one first), by their field names."""
        names = [f.name for f in dataclasses.fields(self) if f.name not in NETWORK_FIELDS]
        return {c: getattr(self, c) for c in names[::-1]}

    def scaled(self, divisor: int) -> Recipe:
        """The recipe with its steps (at least 5) and annealing step divided by ``divisor``."""
        if divisor <= 1:
            return self
        steps = max(self.steps // divisor, 5)
        return dataclasses.replace(self, steps=steps, anneal_steps=self.anneal_steps // divisor)

    def record(self, name: str) -> dict[str, Any]:
        """The results.json record: name, network fields, coefficients, and ``l2``/``penalty``.

        ``l2`` and ``penalty`` (SD's ``coef`` or the penalty weight) keep the format of earlier
        versions beside the objective's own names.
        """
        hp = self.coefficients()
        return {
            "name": name,
            **{f: getattr(self, f) for f in NETWORK_FIELDS},
            "l2": hp.get("l2", self.l2),
            "penalty": hp.get("coef", hp.get("penalty_weight", 0.0)),
            **hp,
        }

    def objective(self, l2: Any = 0.0, **_: Any):
        """The training objective of these coefficients (may be traced)."""
        from ntkdyn.objectives import ERM

        return ERM(l2=l2)


@dataclasses.dataclass(frozen=True)
class IRMRecipe(Recipe):
    """IRMv1: penalty weight 1 before ``anneal_steps``, ``penalty_weight`` after, loss divided by it.

    Attributes:
        penalty_weight: the penalty weight after its annealing step
    """

    penalty_weight: float = 1.0
    label: ClassVar[str] = "IRMv1"

    def objective(self, penalty_weight: Any = 1.0, l2: Any = 0.0, **_: Any):
        from ntkdyn.objectives import IRMv1, switch

        return IRMv1(penalty_weight=switch(1.0, penalty_weight, self.anneal_steps), l2=l2)


@dataclasses.dataclass(frozen=True)
class VRExRecipe(IRMRecipe):
    """V-REx, annealed as IRMv1."""

    label: ClassVar[str] = "V-REx"

    def objective(self, penalty_weight: Any = 1.0, l2: Any = 0.0, **_: Any):
        from ntkdyn.objectives import VREx, switch

        return VREx(penalty_weight=switch(1.0, penalty_weight, self.anneal_steps), l2=l2)


@dataclasses.dataclass(frozen=True)
class SDRecipe(Recipe):
    """Spectral Decoupling, the authors' annealing: ℓ + c·mean(f²), then c·(ℓ + mean(f²)).

    Attributes:
        coef: Spectral Decoupling coefficient c of mean(logits²)
    """

    coef: float = 0.0
    label: ClassVar[str] = "SD"

    def coefficients(self) -> dict[str, float]:
        return {"coef": self.coef}

    def objective(self, coef: Any = 0.0, **_: Any):
        from ntkdyn.objectives import SpectralDecoupling

        return SpectralDecoupling.annealed(coef, self.anneal_steps, l2=self.l2)


@dataclasses.dataclass(frozen=True)
class OracleRecipe(Recipe):
    """The grayscale oracle: ERM on the channel-summed images."""

    label: ClassVar[str] = "Grayscale oracle"


def environment_loss(recipe: Recipe, apply_fn: Any):
    """The trainer's ``loss_fn``: the recipe's objective on two training environments.

    ``batch`` holds ``x1, y1, x2, y2`` (:func:`ntkdyn.data.colored_mnist.environment_batches`) and
    the run's coefficients ``hp`` (:func:`ntkdyn.train.restarts.train_restarts`), so a sweep over
    a coefficient is one vmapped call.

    Args:
        recipe: the method's recipe.
        apply_fn: ``apply_fn(params, x) -> (n, 1)`` logits.

    Returns:
        ``loss_fn(params, model_state, batch, step, key) -> (loss, (model_state, metrics))``.
    """

    def loss(params, model_state, batch, step, key):
        logits = (apply_fn(params, batch["x1"])[:, 0], apply_fn(params, batch["x2"])[:, 0])
        value, (_, metrics) = recipe.objective(**batch["hp"]).loss(
            logits, (batch["y1"], batch["y2"]), step=step, params=params
        )
        return value, (model_state, metrics)

    return loss


def environment_evaluation(apply_fn: Any) -> tuple[Any, Any]:
    """``(eval_fn, evaluate)`` of a network on the environments and the probe.

    ``eval_fn(params, model_state, batch)``: :func:`ntkdyn.metrics.environment_metrics` at each
    record of the trainer; ``evaluate(params, batch, probe)``: a trained run's accuracies
    (``*_acc``) and :func:`ntkdyn.metrics.probe_metrics` on the test labels (``"probe"``).

    Args:
        apply_fn: ``apply_fn(params, x) -> (n, 1)`` logits.
    """
    from ntkdyn.metrics import environment_metrics, probe_metrics

    def eval_fn(params, model_state, batch):
        return environment_metrics(lambda x: apply_fn(params, x)[:, 0], batch)

    def evaluate(params, batch, probe):
        out = {k: v for k, v in eval_fn(params, None, batch).items() if k.endswith("_acc")}
        logits = lambda x: apply_fn(params, x)[:, 0]  # noqa: E731
        return {**out, "probe": probe_metrics(logits, probe, batch["yt"])}

    return eval_fn, evaluate


def sweep_grid(
    coefficients: dict[str, float], factors: Any, values: Any = None
) -> list[dict[str, float]]:
    """A sweep over the first (key) coefficient: its value times each factor, or ``values``.

    Args:
        coefficients: :meth:`Recipe.coefficients` (the swept one first).
        factors: multipliers of the published value.
        values: the values to try instead (e.g. for a coefficient published as 0).

    Returns:
        One hyperparameter dict per grid point, the other coefficients as published.
    """
    field = next(iter(coefficients))
    tried = values if values is not None else [coefficients[field] * f for f in factors]
    return [{**coefficients, field: float(v)} for v in tried]
