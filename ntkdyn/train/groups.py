"""Groups in training and evaluation: balanced sampling, per-group accuracy, epoch selection.

A dataset with a spurious attribute splits into groups g = (label, attribute) (Sagawa et al. 2020;
Pezeshki et al. 2021, Sec. 5: CelebA's blond hair × male, g = 2y + a). Three pieces use them:

* :func:`group_balanced_order` — the training sampler of Group DRO's reference code
  (``--reweight_groups``): draws with replacement, example i with weight 1/n_{g(i)}, an epoch being
  as many draws as there are examples.
* :func:`group_metrics` — average, per-group and worst-group accuracy.
* :func:`group_evaluator` — the evaluation of a model on every split, per group, at the end of
  each epoch.
* :class:`Selection` and :func:`select_epoch` — which epoch a run reports, chosen on validation;
  :func:`select_epochs` — a run's epoch under every rule; :func:`summarize_selected` — the
  selected epochs of several seeds as one result (mean ± std); :func:`summarize_methods` — every
  method's results under every rule, with a headline rule per method.
* :class:`GroupBenchmark` — a dataset the protocol runs on (loader, fixture, reports).
* :class:`SD` and :class:`DRO` — the settings of Spectral Decoupling and Group DRO;
  :class:`Recipe` and :func:`group_objective` — how a method of the protocol (ERM, SD, Group
  DRO) is optimised, sampled, selected, and what it minimises; :func:`check_group_training`.
* :func:`train_on_groups` — one (method, seed) of the group-robustness protocol through the
  epoch loop; :func:`validation_curves` — validation accuracy per epoch, mean over seeds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float, Int

from ntkdyn.runs import mean_std

__all__ = [
    "DRO",
    "SD",
    "GroupBenchmark",
    "Recipe",
    "Selection",
    "check_group_training",
    "group_objective",
    "group_balanced_order",
    "group_evaluator",
    "group_metrics",
    "select_epoch",
    "select_epochs",
    "summarize_methods",
    "summarize_selected",
    "train_on_groups",
    "validation_curves",
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
    #: Validation worst-group accuracy after shifting the decision threshold (one scalar added to
    #: the logit, :func:`tune_threshold`) on validation; the test split takes the same shift.
    VAL_WORST_THRESHOLD = "val_worst_threshold"

    @property
    def metric(self) -> str:
        """The key of :func:`group_metrics` that the rule maximises."""
        return "avg_acc" if self is Selection.VAL_AVG else "worst_group_acc"

    def view(self, epoch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The epoch's ``val`` and ``test`` metrics the rule reads: the shifted ones for the
        threshold rule (with ``threshold``), the plain ones otherwise."""
        if self is not Selection.VAL_WORST_THRESHOLD:
            return epoch
        if "threshold" not in epoch:
            raise ValueError(
                "epochs: the threshold rule needs each epoch's 'threshold' block "
                "(group_evaluator(..., tune=True))"
            )
        return {**epoch, **epoch["threshold"]}


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
    return max(range(len(epochs)), key=lambda i: (rule.view(epochs[i])["val"][key], -i))


def summarize_selected(
    chosen: Sequence[Mapping[str, Any]],
    rule: Selection | str,
    group_names: Sequence[str],
    seeds: Sequence[int] | None = None,
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
        seeds: the run seed of each entry of ``chosen`` (``per_seed[].seed``; default: its index).

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
            {"seed": int(k), "epoch": c["epoch"], "test": c["test"], "val": c["val"]}
            | ({"threshold": c["threshold"]} if "threshold" in c else {})
            for k, c in zip(range(len(chosen)) if seeds is None else seeds, chosen, strict=True)
        ],
    }


def tune_threshold(
    logits: Float[np.ndarray, " n"],
    y: Int[np.ndarray, " n"],
    group: Int[np.ndarray, " n"],
    group_names: Sequence[str],
) -> float:
    """The decision threshold t (predict 1 where ŷ > t) of best worst-group accuracy on a split.

    Every distinct cut of the sorted logits is tried (the midpoints between neighbours, one below
    the smallest and one above the largest, and t = 0), with each group's accuracy counted by
    binary search: O(n log n). Ties go to the higher average accuracy, then to the t nearest 0, so
    the chosen t never does worse than t = 0 on this split. A shifted threshold is one scalar
    added to the logit: the cheapest baseline that can trade one class's accuracy for the other's.

    Args:
        logits: (n,) logits ŷ.
        y: (n,) labels in {0, 1}.
        group: (n,) group ids in [0, len(group_names)).
        group_names: the groups.

    Returns:
        t, a float.

    Raises:
        ValueError: arrays of different lengths, an empty split or non-finite logits.
    """
    logits, y, group = (np.asarray(v) for v in (logits, y, group))
    if not (logits.shape == y.shape == group.shape) or logits.ndim != 1 or not len(logits):
        raise ValueError(
            f"logits, y, group: expected equal non-empty 1-D shapes, got {logits.shape}, "
            f"{y.shape}, {group.shape}"
        )
    if not np.all(np.isfinite(logits)):
        raise ValueError("logits: non-finite values; the threshold needs finite logits")
    u = np.unique(logits.astype(np.float64))
    cuts = np.concatenate([[u[0] - 1.0, 0.0], (u[1:] + u[:-1]) / 2, [u[-1] + 1.0]])
    correct = np.zeros_like(cuts)
    worst = np.full_like(cuts, np.inf)
    for g in range(len(group_names)):
        sel = group == g
        if not sel.any():
            continue
        pos = np.sort(logits[sel & (y == 1)])  # right where ŷ > t
        neg = np.sort(logits[sel & (y == 0)])  # right where ŷ <= t
        right = (len(pos) - np.searchsorted(pos, cuts, side="right")) + np.searchsorted(
            neg, cuts, side="right"
        )
        correct += right
        worst = np.minimum(worst, right / sel.sum())
    best = np.lexsort((np.abs(cuts), -correct, -worst))[0]
    return float(cuts[best])


def group_evaluator(
    predict: Callable[[Any, str], tuple[np.ndarray, np.ndarray]],
    splits: Mapping[str, Any],
    group_names: Sequence[str],
    *,
    tune: str | None = None,
    extra: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Callable[[Any], dict[str, Any]]:
    """An ``evaluate(state) -> {split: group_metrics}`` for a training loop's end of epoch.

    A logit ŷ > 0 predicts label 1; each split's predictions go through :func:`group_metrics`.
    With ``tune`` (a split name, e.g. ``"val"``), the threshold t of :func:`tune_threshold` on that
    split is applied to every split (ŷ > t), recorded as ``{"threshold": {"t", split: metrics}}``.
    ``extra(state)`` adds fields (e.g. feature responses) to the epoch's record.

    Args:
        predict: ``(state, split name) -> (index, logits)``: the examples' positions in the split
            and their logits (e.g. :func:`ntkdyn.train.dataparallel.predict_logits` over the
            split's batches).
        splits: split name → a split with ``y`` and ``group`` arrays
            (:class:`ntkdyn.data.images.ImageSplit`), evaluated in this order.
        group_names: the names of the group ids.

    Returns:
        The evaluation function.
    """

    if tune is not None and tune not in splits:
        raise ValueError(f"tune: expected one of the splits {list(splits)}, got {tune!r}")

    def evaluate(state: Any) -> dict[str, Any]:
        out, seen = {}, {}
        for name, split in splits.items():
            index, logits = predict(state, name)
            seen[name] = logits, y, g = np.asarray(logits), split.y[index], split.group[index]
            out[name] = group_metrics((logits > 0).astype(np.int32), y, g, group_names)
        if tune is not None:
            t = tune_threshold(*seen[tune], group_names)
            shifted = {
                name: group_metrics((logits > t).astype(np.int32), y, g, group_names)
                for name, (logits, y, g) in seen.items()
            }
            out["threshold"] = {"t": t, **shifted}
        if extra is not None:
            out.update(extra(state))
        return out

    return evaluate


def select_epochs(
    epochs: Sequence[Mapping[str, Any]], rules: Sequence[Selection | str] = tuple(Selection)
) -> dict[str, dict[str, Any]]:
    """The epoch each rule selects, as ``{rule: {"epoch": 1-based, **that epoch's results}}``.

    Args:
        epochs: per-epoch results with ``"val"`` (and ``"test"``) from :func:`group_metrics`.
        rules: the rules (default every :class:`Selection`).

    Raises:
        ValueError: from :func:`select_epoch`.
    """
    out = {}
    for rule in rules:
        rule = _selection(rule)
        if rule is Selection.VAL_WORST_THRESHOLD and any("threshold" not in e for e in epochs):
            continue  # runs evaluated without the shifted threshold (recorded before it existed)
        best = select_epoch(epochs, rule)
        view = rule.view(epochs[best])
        out[rule.value] = {"epoch": best + 1, "val": view["val"], "test": view["test"]}
        if "t" in view:
            out[rule.value]["threshold"] = view["t"]
    return out


def summarize_methods(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    headline: Mapping[str, Selection | str],
    group_names: Sequence[str],
    *,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every method's test results over seeds, under every selection rule.

    Per method: :func:`summarize_selected` under each rule as ``by_<rule>``, and the headline
    rule's block at the top level (what tables and figures show).

    Args:
        runs: method → per seed ``{"selected": {rule: epoch}, "seed": run seed}``
            (:func:`select_epochs`; without ``seed``, the index).
        headline: method → its headline rule.
        group_names: the groups.
        extra: method → more fields of its entry (e.g. its training recipe as ``training``).

    Returns:
        method → ``{**headline block, "by_val_avg": ..., "by_val_worst": ..., **extra}``.

    Raises:
        ValueError: a method without a headline rule, or from :func:`summarize_selected`.
    """
    out = {}
    for method, seed_runs in runs.items():
        if method not in headline:
            raise ValueError(f"headline: no selection rule for method {method!r}")
        blocks = {
            rule.value: summarize_selected(
                [r["selected"][rule.value] for r in seed_runs],
                rule,
                group_names,
                seeds=[r.get("seed", i) for i, r in enumerate(seed_runs)],
            )
            for rule in Selection
            if all(rule.value in r["selected"] for r in seed_runs)
        }
        entry = dict(blocks[_selection(headline[method]).value])
        for rule, block in blocks.items():
            entry[f"by_{rule}"] = block
        entry.update((extra or {}).get(method, {}))
        out[method] = entry
    return out


def train_on_groups(
    model_apply: Callable[..., Any],
    variables: Mapping[str, Any],
    optimizer: Any,
    objective: Any,
    splits: Mapping[str, Any],
    group_names: Sequence[str],
    *,
    mesh: Any,
    balanced: bool,
    seed: int,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    checkpoint_dir: Any,
    resume: bool = False,
    checkpoint_every: int = 500,
    log_every: int = 50,
    pipeline: Mapping[str, Any] | None = None,
    images: Mapping[str, np.ndarray] | None = None,
    tags: Mapping[str, Any] | None = None,
    responses: Callable[[Any], Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Train a classifier on an image dataset with groups; evaluate val and test per group each epoch.

    One run of :func:`ntkdyn.train.epochs.train_epochs` (checkpoints, ``--resume``, metric records
    and a progress line every ``log_every`` steps as hooks) over ⌊n_train / batch_size⌋ steps per
    epoch of batches drawn uniformly (:func:`ntkdyn.data.images.epoch_order`) or group-balanced
    (:func:`group_balanced_order`), sharded over ``mesh``; after each epoch :func:`group_evaluator`
    on the val and test splits. The epochs of both rules are then selected (:func:`select_epochs`).

    Args:
        model_apply: the network's ``apply`` (a flax module's).
        variables: its initial ``{"params", "batch_stats"}``.
        optimizer: an optax transformation.
        objective: an :mod:`ntkdyn.objectives` objective.
        splits: ``{"train", "val", "test"}`` → :class:`ntkdyn.data.images.ImageSplit`.
        group_names: names of the group ids.
        mesh: the data mesh (:func:`ntkdyn.train.dataparallel.data_mesh`).
        balanced: group-balanced sampling with replacement instead of shuffling.
        seed: the run's seed (the sampling order of each epoch is fixed by it).
        epochs: epochs (≥ 1).
        batch_size: global training batch.
        eval_batch_size: evaluation batch.
        checkpoint_dir: this run's checkpoint folder.
        resume: continue from the checkpoints there.
        checkpoint_every: steps between checkpoints.
        log_every: steps between records and progress lines.
        pipeline: keyword arguments of :func:`ntkdyn.data.images.iterate_batches` (image size,
            crop, workers, prefetch).
        images: split → decoded 8-bit images (:func:`ntkdyn.data.images.decode_split`), if cached.
        tags: fields of every record (e.g. method and seed); they also label the progress lines.
        responses: ``responses(state) -> {name: value}`` measured after each epoch and kept in
            its record (e.g. :meth:`ntkdyn.train.journey.GroupJourney.measure`: z(t) and the
            groups' margins); checkpointed with the epochs, so a resumed run keeps them.

    Returns:
        ``{"epochs": [{"epoch", "val", "test", "threshold", ...}], "records": [...], "selected":
        {rule: epoch}, "seed": seed}``; ``threshold`` holds the metrics with the decision threshold tuned on
        validation worst-group accuracy (:func:`tune_threshold`).
    """
    import jax

    from ntkdyn.data.images import epoch_order, iterate_batches
    from ntkdyn.train import dataparallel as dp
    from ntkdyn.train.epochs import progress_hook, train_epochs

    train, images = splits["train"], dict(images or {})
    pipeline = {**(pipeline or {}), "shard": (jax.process_index(), jax.process_count())}
    steps = len(train) // batch_size

    def batches(epoch: int, start: int):
        if balanced:
            order = group_balanced_order(train.group, seed=seed, epoch=epoch)
        else:
            order = epoch_order(len(train), seed=seed, epoch=epoch)
        order = order[start * batch_size : steps * batch_size]
        for b in iterate_batches(
            train, order, batch_size=batch_size, drop_last=True, images=images.get("train"),
            **pipeline,
        ):  # fmt: skip
            yield dp.shard_batch({k: b[k] for k in ("image", "y", "group")}, mesh)

    eval_step = dp.make_eval_step(model_apply)

    def predict(state: Any, name: str):
        split = splits[name]
        batches = iterate_batches(
            split, np.arange(len(split)), batch_size=eval_batch_size,
            pad_to_multiple=len(mesh.local_devices), images=images.get(name), **pipeline,
        )  # fmt: skip
        return dp.predict_logits(eval_step, state, batches, mesh)

    desc = "/".join(f"{v}" if k != "seed" else f"seed{v}" for k, v in (tags or {}).items())
    history = train_epochs(
        dp.init_train_state(variables, optimizer, objective),
        dp.make_train_step(model_apply, optimizer, objective),
        batches,
        group_evaluator(
            predict,
            {s: splits[s] for s in ("val", "test")},
            group_names,
            tune="val",
            extra=responses,
        ),  # fmt: skip
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=batch_size,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        checkpoint_every=checkpoint_every,
        log_every=log_every,
        hooks=[progress_hook(log_every, desc=desc, total_steps=epochs * steps)],
        place=lambda s: dp.replicate(s, mesh),
        tags=tags,
        desc=desc,
    )
    return {**history, "selected": select_epochs(history["epochs"]), "seed": int(seed)}


def validation_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per method, validation average and worst-group accuracy per epoch, mean over seeds.

    Args:
        runs: method → per seed ``{"epochs": [{"val": group_metrics}, ...]}``.

    Returns:
        method → ``{"avg": [...], "worst": [...]}`` (fractions).
    """
    return {
        m: {
            key: np.mean([[e["val"][metric] for e in r["epochs"]] for r in rs], 0).tolist()
            for key, metric in (("avg", "avg_acc"), ("worst", "worst_group_acc"))
        }
        for m, rs in runs.items()
    }


@dataclass(frozen=True)
class SD:
    """Settings of class-conditional Spectral Decoupling: ℓ + Σ_c coef_c · mean_{y=c}(ŷ − target_c)².

    Pezeshki et al. 2021, Sec. 5 (:class:`ntkdyn.objectives.ClassConditionalSD`); checked on
    construction (:class:`ntkdyn.settings.ConfigError` names the field).

    Attributes:
        coef: SD coefficients (class 0, class 1).
        target: SD logit targets (class 0, class 1).
        optimizer: SD's optimizer when it differs from ERM's (adam or sgd; none: the shared
            --optimizer). Pezeshki et al. train SD with Adam and cross-entropy with SGD.
    """

    coef: tuple[float, float] = (0.1, 0.1)
    target: tuple[float, float] = (0.44, 2.5)
    optimizer: str | None = None

    def __post_init__(self):
        from ntkdyn.settings import check, number, one_of, optional, pair

        check(
            self,
            {
                "coef": pair(number(0)),
                "target": pair(number()),
                "optimizer": optional(one_of("adam", "sgd")),
            },
        )


@dataclass(frozen=True)
class DRO:
    """Settings of Group DRO as Sagawa et al. 2020 run it: its optimiser and its online group weights.

    q_g ← q_g · exp(η · (L_g + C/√n_g)), normalised (:class:`ntkdyn.objectives.GroupDRO`); the
    defaults are the authors' strong-ℓ2 CelebA setting. Checked on construction.

    Attributes:
        optimizer: Group DRO optimizer, adam or sgd.
        lr: Group DRO learning rate.
        momentum: Group DRO SGD momentum.
        weight_decay: Group DRO weight decay.
        epochs: Group DRO epochs.
        step_size: step size of the group weights.
        adjustment: generalisation adjustment C.
    """

    optimizer: str = "sgd"
    lr: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 0.1
    epochs: int = 50
    step_size: float = 0.01
    adjustment: float = 0.0

    def __post_init__(self):
        from ntkdyn.settings import check, integer, number, one_of

        rate, decay = number(0, low_open=True), number(0)
        check(
            self,
            {
                "optimizer": one_of("adam", "sgd"),
                **dict.fromkeys(("lr", "step_size"), rate),
                **dict.fromkeys(("weight_decay", "adjustment"), decay),
                "momentum": number(0, 1, high_open=True),
                "epochs": integer(1),
            },
        )


class Recipe(NamedTuple):
    """One method's optimisation: optimizer, schedule, sampling and epoch selection.

    Attributes:
        optimizer: ``"adam"`` (decoupled weight decay, AdamW) or ``"sgd"`` (PyTorch's coupled
            weight decay: g ← ∇L + wd·θ, b ← μ·b + g, θ ← θ − lr·b).
        lr: learning rate.
        momentum: SGD momentum μ.
        weight_decay: weight decay wd.
        epochs: epochs.
        balanced: group-balanced sampling with replacement (:func:`group_balanced_order`).
        selection: the headline :class:`Selection` rule's value.
    """

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    epochs: int
    balanced: bool
    selection: str

    def make_optimizer(self) -> Any:
        """The optax transformation (:func:`ntkdyn.train.optimizers.pytorch_optimizer`), as
        ``torch.optim.AdamW`` or ``torch.optim.SGD(params, lr, momentum, weight_decay)`` of
        Sagawa et al.'s ``train.py``."""
        from ntkdyn.train.optimizers import pytorch_optimizer

        name = "adamw" if self.optimizer == "adam" else "sgd"
        return pytorch_optimizer(
            name, self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )

    def describe(self) -> str:
        """One line for reports, e.g. ``sgd lr 0.01 momentum 0.9, weight decay 0.0001, 20 epochs,
        group-balanced sampling, epoch by val_worst``."""
        momentum = f" momentum {self.momentum:g}" if self.optimizer == "sgd" else ""
        return (
            f"{self.optimizer} lr {self.lr:g}{momentum}, weight decay {self.weight_decay:g}, "
            f"{self.epochs} epochs, {'group-balanced' if self.balanced else 'uniform'} sampling, "
            f"epoch by {self.selection}"
        )


def group_objective(method: str, train_counts: Sequence[int], *, sd: SD, dro: DRO) -> Any:
    """The training objective of a method of the protocol (:mod:`ntkdyn.objectives`).

    ``erm``: logistic loss; ``sd``: logistic + Σ_c coef_c · mean_{y=c}(ŷ − target_c)²
    (:class:`~ntkdyn.objectives.ClassConditionalSD`); ``groupdro``: Sagawa et al.'s online group
    weights q ← q·exp(η·(L_g + C/√n_g)) (:class:`~ntkdyn.objectives.GroupDRO`).

    Args:
        method: ``"erm"``, ``"sd"`` or ``"groupdro"``.
        train_counts: training examples per group (n_g, 4 of them; a 0 counts as 1).
        sd: SD's coefficients and targets.
        dro: Group DRO's step size η and adjustment C.

    Raises:
        ValueError: an unknown method.
    """
    from ntkdyn.objectives import ERM, ClassConditionalSD, GroupDRO

    if method == "erm":
        return ERM()
    if method == "sd":
        return ClassConditionalSD(coef=tuple(sd.coef), target=tuple(sd.target))
    if method != "groupdro":
        raise ValueError(f"method: expected erm, sd or groupdro, got {method!r}")
    return GroupDRO(
        num_groups=4,
        step_size=dro.step_size,
        adjustment=dro.adjustment,
        group_counts=tuple(int(c) for c in np.maximum(np.asarray(train_counts), 1)),
    )


def check_group_training(
    train: Any,
    group_names: Sequence[str],
    *,
    batch_size: int,
    devices: int,
    crop: int | None = None,
) -> None:
    """Check a training split fits the protocol before anything is trained or written.

    Every group present, the batch within the split and a multiple of the devices, the centre
    crop within the images (the first image is opened).

    Args:
        train: the training :class:`ntkdyn.data.images.ImageSplit`.
        group_names: names of the group ids.
        batch_size: global batch.
        devices: devices the batch is sharded over.
        crop: centre-crop side in pixels, or None.

    Raises:
        InputError: naming ``--data-dir`` (a group with no training example), ``--batch-size``
            (larger than the split, or not divisible by the devices) or ``--crop`` (too large).
    """
    from ntkdyn.data.images import load_image
    from ntkdyn.errors import InputError

    n = len(train)
    empty = [g for g, c in zip(group_names, train.group_counts(), strict=True) if not c]
    if empty:
        raise InputError(
            f"--data-dir: the training split has no example of group(s) {', '.join(empty)}; "
            "every group (y, a) needs training examples"
        )
    if batch_size > n:
        raise InputError(f"--batch-size: {batch_size} exceeds the {n} training images; lower it")
    if batch_size % devices:
        raise InputError(
            f"--batch-size: {batch_size} is not divisible by the {devices} devices; "
            f"choose a multiple of {devices}"
        )
    if crop is not None:
        try:
            load_image(train.paths[0], 8, crop=crop)
        except ValueError as exc:
            raise InputError(str(exc)) from None


class GroupBenchmark(NamedTuple):
    """A dataset the group-robustness protocol runs on: its loader, its synthetic fixture, reports.

    Attributes:
        title: the summary's heading.
        load: ``(data_dir, config) -> GroupDataset`` (:class:`ntkdyn.data.images.GroupDataset`).
        write_fixture: ``(folder, config, (n_train, n_val, n_test)) -> None``.
        marker: a file a written fixture holds (relative to its folder).
        figure: the figures' name prefix.
        published: method → ``{"avg": (mean, std), "worst": (mean, std)}`` in percent, or None.
        check: ``config -> None``, raising a ConfigError for settings the dataset cannot take.
        fixture_note: a warning printed above the tables of a run on the synthetic fixture.
    """

    title: str
    load: Callable[[str, Any], Any]
    write_fixture: Callable[[Any, Any, tuple[int, int, int]], None]
    marker: str
    figure: str
    published: Mapping[str, Mapping[str, tuple[float, float]]] | None = None
    check: Callable[[Any], None] | None = None
    fixture_note: str = ""
