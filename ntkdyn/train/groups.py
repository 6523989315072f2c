"""Groups in training and evaluation: balanced sampling, per-group accuracy, epoch selection.

A dataset with a spurious attribute splits into groups g = (label, attribute) (Sagawa et al. 2020;
Pezeshki et al. 2021, Sec. 5: CelebA's blond hair × male, g = 2y + a). Three pieces use them:

* :func:`group_balanced_order` — the training sampler of Group DRO's reference code
  (``--reweight_groups``): draws with replacement, example i with weight 1/n_{g(i)}, an epoch being
  as many draws as there are examples.
* :func:`group_metrics` — average, per-group and worst-group accuracy.
* :class:`Selection` and :func:`select_epoch` — which epoch a run reports, chosen on validation;
  :func:`summarize_selected` — the selected epochs of several seeds as one result (mean ± std).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jaxtyping import Int

from ntkdyn.runs import mean_std

__all__ = [
    "Selection",
    "group_balanced_order",
    "group_metrics",
    "select_epoch",
    "summarize_selected",
]

# Keeps the balanced sampler's stream apart from the shuffling stream of the same (seed, epoch).
_BALANCED_STREAM = 0x62616C


def group_balanced_order(
    group: Int[np.ndarray, " n"],
    *,
    seed: int,
    epoch: int,
    num_draws: int | None = None,
) -> Int[np.ndarray, " m"]:
    """One epoch of group-balanced sampling with replacement (Sagawa et al. 2020).

    P(draw example i) = (1/n_{g(i)}) / Σ_j (1/n_{g(j)}) = 1 / (G · n_{g(i)}) over the G groups
    present, so every group is drawn equally often in expectation. This is the reference code's
    ``WeightedRandomSampler(len(data)/group_counts[g], len(data), replacement=True)``
    (kohpangwei/group_DRO, ``data/dro_dataset.py``). The draws are fixed by ``(seed, epoch)``, so a
    run resumed mid-epoch slices the same order.

    Args:
        group: (n,) group id of every example (non-negative integers).
        seed: run seed.
        epoch: epoch index (≥ 0).
        num_draws: draws in the epoch (default n, as the reference).

    Returns:
        (num_draws,) example indices, with repeats.

    Raises:
        ValueError: an empty or non-integer ``group``, a negative id, or ``num_draws`` < 1.
    """
    group = np.asarray(group)
    if group.ndim != 1 or group.size == 0 or not np.issubdtype(group.dtype, np.integer):
        raise ValueError(
            f"group: expected a non-empty 1-D integer array, got {group.dtype}{list(group.shape)}"
        )
    if group.min() < 0:
        raise ValueError(f"group: ids must be >= 0, got {int(group.min())}")
    draws = len(group) if num_draws is None else int(num_draws)
    if draws < 1:
        raise ValueError(f"num_draws: must be >= 1, got {num_draws}")
    counts = np.bincount(group)
    weights = 1.0 / counts[group]
    rng = np.random.default_rng([int(seed), int(epoch), _BALANCED_STREAM])
    return rng.choice(len(group), size=draws, replace=True, p=weights / weights.sum())


def group_metrics(
    pred: Int[np.ndarray, " n"],
    y: Int[np.ndarray, " n"],
    group: Int[np.ndarray, " n"],
    group_names: Sequence[str],
) -> dict[str, Any]:
    """Average, per-group and worst-group accuracy (fractions) of 0/1 predictions.

    acc_g = mean_{i: g(i) = g} 1[pred_i = y_i]; worst-group accuracy is min_g acc_g over the groups
    present in the split (Sagawa et al. 2020).

    Args:
        pred: (n,) predicted labels in {0, 1}.
        y: (n,) true labels.
        group: (n,) group ids in [0, len(group_names)).
        group_names: names of the groups.

    Returns:
        ``{"avg_acc", "worst_group_acc", "group_acc": {name: acc}, "group_count": {name: n}}``
        (groups absent from the split have a count of 0 and no accuracy).

    Raises:
        ValueError: the three arrays are not 1-D of one length.
    """
    pred, y, group = (np.asarray(v) for v in (pred, y, group))
    if not (pred.shape == y.shape == group.shape) or pred.ndim != 1:
        raise ValueError(
            f"pred, y, group: expected equal 1-D shapes, got {pred.shape}, {y.shape}, {group.shape}"
        )
    correct = pred == y
    accs, counts = {}, {}
    for g, name in enumerate(group_names):
        sel = group == g
        counts[name] = int(sel.sum())
        if sel.any():
            accs[name] = float(correct[sel].mean())
    return {
        "avg_acc": float(correct.mean()) if len(correct) else float("nan"),
        "worst_group_acc": min(accs.values()) if accs else float("nan"),
        "group_acc": accs,
        "group_count": counts,
    }


class Selection(enum.Enum):
    """Which epoch of a run is reported: the best on a validation metric, the earliest on ties.

    Each value names the rule as results files record it (``by_val_worst`` …).
    """

    #: Validation average accuracy: Pezeshki et al. 2021 (ERM and SD), no group labels needed.
    VAL_AVG = "val_avg"
    #: Validation worst-group accuracy: Sagawa et al. 2020 (Group DRO); needs validation groups.
    VAL_WORST = "val_worst"

    @property
    def metric(self) -> str:
        """The key of :func:`group_metrics` that the rule maximises."""
        return {"val_avg": "avg_acc", "val_worst": "worst_group_acc"}[self.value]


def _selection(rule: Selection | str) -> Selection:
    """``rule`` as a :class:`Selection`; a ValueError naming ``rule`` when it is none of them."""
    try:
        return Selection(rule)
    except ValueError:
        raise ValueError(
            f"rule: expected one of {[s.value for s in Selection]}, got {rule!r}"
        ) from None


def select_epoch(epochs: Sequence[Mapping[str, Any]], rule: Selection | str) -> int:
    """Index of the epoch a selection rule picks: argmax of the validation metric, earliest on ties.

    Args:
        epochs: per-epoch results, each with ``"val"`` from :func:`group_metrics`.
        rule: a :class:`Selection` or its value (``"val_avg"``, ``"val_worst"``).

    Returns:
        The 0-based index into ``epochs``.

    Raises:
        ValueError: no epochs, or an unknown rule.
    """
    rule = _selection(rule)
    if not epochs:
        raise ValueError("epochs: no epoch to select from; train at least one epoch")
    key = rule.metric
    return max(range(len(epochs)), key=lambda i: (epochs[i]["val"][key], -i))


def summarize_selected(
    chosen: Sequence[Mapping[str, Any]], rule: Selection | str, group_names: Sequence[str]
) -> dict[str, Any]:
    """One result from the epoch each seed selected under ``rule``: test mean ± std over seeds.

    avg_acc = mean_k avg_acc_k with the sample std √(Σ_k (avg_acc_k − avg_acc)²/(K − 1)) (0 for
    K = 1), the same for the worst-group accuracy; a group's accuracy is its mean over the seeds
    whose test split holds it; the validation metrics are means. Pezeshki et al. 2021, Table 2
    report mean ± std over 5 seeds this way.

    Args:
        chosen: per seed, the selected epoch ``{"epoch": e, "val": ..., "test": ...}`` (1-based
            ``e``; ``val`` and ``test`` from :func:`group_metrics`), K ≥ 1 seeds.
        rule: the :class:`Selection` (or its value) that chose them.
        group_names: the groups, in the order ``group_acc`` lists them.

    Returns:
        ``{"avg_acc", "avg_acc_std", "worst_group_acc", "worst_group_acc_std", "group_acc",
        "val_avg_acc", "val_worst_group_acc", "selection": {"rule", "metric", "epochs"},
        "per_seed": [{"seed", "epoch", "test", "val"}]}`` (fractions).

    Raises:
        ValueError: naming ``chosen`` when it is empty, ``rule`` when unknown.
    """
    if not chosen:
        raise ValueError("chosen: no seed to summarize; pass one selected epoch per seed")
    rule = _selection(rule)
    avg, avg_sd = mean_std([c["test"]["avg_acc"] for c in chosen], ddof=1)
    worst, worst_sd = mean_std([c["test"]["worst_group_acc"] for c in chosen], ddof=1)
    group_acc = {
        g: float(
            np.mean([c["test"]["group_acc"][g] for c in chosen if g in c["test"]["group_acc"]])
        )
        for g in group_names
        if any(g in c["test"]["group_acc"] for c in chosen)
    }
    return {
        "avg_acc": avg,
        "avg_acc_std": avg_sd,
        "worst_group_acc": worst,
        "worst_group_acc_std": worst_sd,
        "group_acc": group_acc,
        "val_avg_acc": float(np.mean([c["val"]["avg_acc"] for c in chosen])),
        "val_worst_group_acc": float(np.mean([c["val"]["worst_group_acc"] for c in chosen])),
        "selection": {
            "rule": rule.value,
            "metric": f"val {rule.metric}",
            "epochs": [c["epoch"] for c in chosen],
        },
        "per_seed": [
            {"seed": i, "epoch": c["epoch"], "test": c["test"], "val": c["val"]}
            for i, c in enumerate(chosen)
        ],
    }
