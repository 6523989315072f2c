"""Reports over restarts: mean ± std, Markdown tables, grid selection and SVD convergence."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def mean_std(values: Iterable[float], *, ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of per-restart values: (x̄, √(Σ(x − x̄)²/(n − ddof))).

    Args:
        values: one value per restart (seed), at least one.
        ddof: 0 for the population std (what Colored MNIST and two-moons report), 1 for the
            sample std; with a single value the std is 0.

    Returns:
        ``(mean, std)`` as Python floats.

    Raises:
        ValueError: if ``values`` is empty.
    """
    arr = np.asarray(list(values) if not hasattr(values, "__array__") else values, np.float64)
    if arr.size == 0:
        raise ValueError("values: expected at least one value, got none")
    std = float(arr.std(ddof=ddof)) if arr.size > ddof else 0.0
    return float(arr.mean()), std


def pool_mean_std(parts: Iterable[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and population std of the union of groups known by (count, mean, std) only.

    μ = Σ n_g μ_g / N and σ² = Σ n_g (σ_g² + μ_g²) / N − μ², with N = Σ n_g: exact for population
    stds (ddof 0), so pooled results equal those of one run over all the restarts.

    Args:
        parts: ``(n_g, mean_g, std_g)`` per group, n_g ≥ 1.

    Returns:
        ``(mean, std)`` of the union.

    Raises:
        ValueError: if there is no group or a count is below 1.
    """
    parts = list(parts)
    if not parts or any(n < 1 for n, _, _ in parts):
        raise ValueError(f"parts: expected groups with counts >= 1, got {parts!r}")
    total = sum(n for n, _, _ in parts)
    mean = sum(n * m for n, m, _ in parts) / total
    second = sum(n * (sd**2 + m**2) for n, m, sd in parts) / total
    return mean, math.sqrt(max(second - mean**2, 0.0))


def format_mean_std(
    mean: float | None, std: float | None = None, *, scale: float = 100.0, digits: int = 1
) -> str:
    """``"70.1 ± 0.6"``: mean (and std) times ``scale`` (percent by default); ``"—"`` if missing.

    Args:
        mean: the value; ``None`` or NaN give ``"—"``.
        std: its standard deviation, or ``None`` to print the mean alone.
        scale: factor applied to both (100: fractions as percent; 1: as they are).
        digits: decimals.
    """
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table as lines: the header, the rule and one line per row.

    Args:
        header: column titles.
        rows: cells (converted with ``str``), as many per row as there are titles.

    Raises:
        ValueError: naming the row whose cell count differs from the header's.
    """
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for i, row in enumerate(rows):
        cells = [str(c) for c in row]
        if len(cells) != len(header):
            raise ValueError(
                f"rows: row {i} has {len(cells)} cells, the header {len(header)}; "
                "give every row one cell per column"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def group_accuracy_table(
    methods: Mapping[str, Mapping[str, Any]],
    group_names: Sequence[str],
    *,
    published: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> list[str]:
    """A Markdown table of test average, worst-group and per-group accuracy, one row per method.

    Cells are percent with the std over seeds (``avg_acc``/``avg_acc_std``, ``worst_group_acc``/
    ``worst_group_acc_std``, means for the groups); a method with one seed (``per_seed`` of length
    1) prints single values, never a ``± 0.00``; a group absent from the test split prints ``–``.

    Args:
        methods: method → a block of :func:`ntkdyn.train.groups.summarize_selected` (fractions).
        group_names: the group columns, in order.
        published: method → ``{"avg": (mean, std), "worst": (mean, std)}`` in percent; adds two
            columns (``—`` for a method without them).

    Returns:
        The table's lines (:func:`markdown_table`).
    """
    header = ["method", "test avg acc (%)", "test worst-group acc (%)", *group_names]
    if published is not None:
        header += ["published avg", "published worst"]
    rows = []
    for m, r in methods.items():
        spread = len(r.get("per_seed", ())) != 1  # one seed: a single value, no "± 0.00"
        row = [
            m,
            format_mean_std(r["avg_acc"], r["avg_acc_std"] if spread else None, digits=2),
            format_mean_std(
                r["worst_group_acc"], r["worst_group_acc_std"] if spread else None, digits=2
            ),
            *(
                format_mean_std(r["group_acc"][g]) if g in r["group_acc"] else "–"
                for g in group_names
            ),
        ]
        if published is not None:
            pub = published.get(m, {})
            row += [
                format_mean_std(*pub[k], scale=1.0, digits=2) if k in pub else "—"
                for k in ("avg", "worst")
            ]
        rows.append(row)
    return markdown_table(header, rows)


def group_summary_markdown(
    title: str,
    setup: Sequence[str],
    methods: Mapping[str, Mapping[str, Any]],
    group_names: Sequence[str],
    counts: str,
    *,
    rules: Sequence[str] = ("val_avg", "val_worst"),
    published: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    note: str = "",
) -> str:
    """summary.md of a group-robustness run: the setup, one table per selection rule, the counts.

    Args:
        title: the heading.
        setup: lines describing the data, the network and each method's recipe.
        methods: method → its results with a ``by_<rule>`` block per rule
            (:func:`ntkdyn.train.groups.summarize_methods`).
        group_names: the group columns.
        counts: the group counts per split, shown as a preformatted block.
        rules: the selection rules, one table each (a rule missing from a method is skipped).
        published: published numbers beside ours (:func:`group_accuracy_table`).
        note: a paragraph in bold before the tables (e.g. that the data is synthetic).

    Returns:
        The Markdown text.
    """
    lines = [f"# {title}", "", *setup, ""]
    if note:
        lines += [f"**{note}**", ""]
    seeds = sorted(
        {
            len(r[f"by_{rule}"].get("per_seed", ()))
            for r in methods.values()
            for rule in rules
            if f"by_{rule}" in r
        }
    )
    if seeds == [1]:
        lines += ["One seed (n = 1): single values, no spread.", ""]
    elif seeds:
        lines += [f"Mean ± std over {', '.join(map(str, seeds))} seeds.", ""]
    if published is not None:
        lines += [
            "The published columns are Pezeshki et al. 2021, Table 2: full CelebA, an "
            "ImageNet-pretrained ResNet-50, mean ± std over 5 seeds. A run with another network, "
            "data size, resolution or training length is not comparable with them.",
            "",
        ]
    for rule in rules:
        if not all(f"by_{rule}" in r for r in methods.values()):
            continue  # a rule the run did not record (e.g. runs of an earlier version)
        blocks = {m: r[f"by_{rule}"] for m, r in methods.items()}
        table = group_accuracy_table(blocks, group_names, published=published)
        lines += [f"Epoch selected by {rule}:", "", *table, ""]
    lines += ["Group counts:", "", "```", counts, "```", ""]
    return "\n".join(lines)


def group_headlines(
    methods: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> list[str]:
    """One line per method for the console: test average and worst-group accuracy, the rule.

    ``"      erm: test avg 91.2%  worst-group 40.7%  [val_avg] (published 94.6% / 40.4%)"``.

    Args:
        methods: method → results with ``avg_acc``, ``worst_group_acc`` and ``selection``.
        published: method → ``{"avg": (mean, std), "worst": (mean, std)}`` in percent.
    """
    lines = []
    for m, r in methods.items():
        pub = (published or {}).get(m)
        ref = f" (published {pub['avg'][0]:.1f}% / {pub['worst'][0]:.1f}%)" if pub else ""
        lines.append(
            f"{m:>9}: test avg {100 * r['avg_acc']:.1f}%  worst-group "
            f"{100 * r['worst_group_acc']:.1f}%  [{r['selection']['rule']}]{ref}"
        )
    return lines


def restart_summary(
    values: Mapping[str, Any], *, keep: Sequence[str] = (), ddof: int = 0
) -> dict[str, Any]:
    """Mean ± std over restarts of a tree of per-restart arrays, as a run's results report them.

    A top-level array ``KEY`` (one value per restart) becomes ``KEY_mean`` and ``KEY_std`` (and
    stays as the list ``KEY`` when named in ``keep``); inside a nested mapping a leaf ``STAT``
    becomes ``STAT`` (the mean) and ``STAT_std``, e.g. ``{"probe": {"digit_gray": {"acc": (R,)}}}``
    → ``{"probe": {"digit_gray": {"acc": mean, "acc_std": std}}}``.

    Args:
        values: arrays of shape (R,) at the leaves, R ≥ 1 restarts.
        keep: top-level keys also kept as per-restart lists.
        ddof: as :func:`mean_std`.

    Returns:
        The summary (Python floats and lists).

    Raises:
        ValueError: from :func:`mean_std` for an empty leaf.
    """

    def nested(tree):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            if isinstance(v, Mapping):
                out[k] = nested(v)
            else:
                out[k], out[f"{k}_std"] = mean_std(np.asarray(v), ddof=ddof)
        return out

    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, Mapping):
            out[k] = nested(v)
            continue
        out[f"{k}_mean"], out[f"{k}_std"] = mean_std(np.asarray(v), ddof=ddof)
        if k in keep:
            out[k] = np.asarray(v, np.float64).tolist()
    return out


def versus_published_table(
    ours: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Mapping[str, Any]],
    columns: Sequence[tuple[str, str, str]],
    *,
    labels: Mapping[str, str] | None = None,
    scale: float = 100.0,
) -> list[str]:
    """A Markdown table of our mean ± std beside the published one, one row per method.

    Args:
        ours: method → results holding ``KEY_mean`` and ``KEY_std``.
        published: method → ``{PUB_KEY: (mean, std)}``; a missing method or key prints ``—``.
        columns: ``(KEY, PUB_KEY, title)`` per quantity, e.g. ``("train_acc", "train", "train
            acc")``; each gives a "title (ours)" and a "title (published)" column.
        labels: method → row label (default the method's key).
        scale: as :func:`format_mean_std` (100: fractions as percent).

    Returns:
        The table's lines (:func:`markdown_table`).
    """
    labels = labels or {}
    header = ["method"] + [f"{t} (ours)" for _, _, t in columns]
    header += [f"{t} (published)" for _, _, t in columns]
    rows = []
    for m, r in ours.items():
        pub = published.get(m, {})
        rows.append(
            [labels.get(m, m)]
            + [
                format_mean_std(r.get(f"{k}_mean"), r.get(f"{k}_std"), scale=scale)
                for k, _, _ in columns
            ]
            + [format_mean_std(*pub[k], scale=scale) if k in pub else "—" for _, k, _ in columns]
        )
    return markdown_table(header, rows)


def restarts_label(first: int, count: int) -> str:
    """``"10"`` for restarts 0–9 of a protocol, ``"5 (restarts 5–9)"`` for a later range."""
    return str(count) if first == 0 else f"{count} (restarts {first}–{first + count - 1})"


def sweep_selection(
    points: Sequence[Mapping[str, Any]],
    grid: Sequence[Mapping[str, float]],
    *,
    select: str = "val_acc_mean",
    compare: str = "test_acc_mean",
    shown: Sequence[str] = ("train_acc_mean", "test_acc_mean"),
) -> dict[str, Any]:
    """The results of a hyperparameter sweep: the point best by ``select`` (training-domain
    validation), with the point best by ``compare`` (test-domain selection) beside it.

    Ties go to the earlier grid point.

    Args:
        points: per grid point, its hyperparameters and results summary (:func:`restart_summary`).
        grid: the hyperparameters of each point, in the order of ``points``.
        select: the results key the choice maximises.
        compare: the key of the alternative choice reported beside it.
        shown: the keys of ``points`` copied into that alternative.

    Returns:
        The chosen point's results (without its hyperparameters), ``selected`` (its
        hyperparameters), ``test_domain_choice`` (the other choice's hyperparameters and ``shown``
        results) and ``sweep`` (every point).

    Raises:
        ValueError: if ``points`` and ``grid`` differ in length or are empty.
    """
    if not points or len(points) != len(grid):
        raise ValueError(
            f"points: expected one summary per grid point ({len(grid)}), got {len(points)}"
        )

    def best(key):
        return max(range(len(points)), key=lambda g: (points[g][key], -g))

    chosen, other = best(select), best(compare)
    return {
        **{k: v for k, v in points[chosen].items() if k not in grid[chosen]},
        "selected": dict(grid[chosen]),
        "test_domain_choice": {**grid[other], **{k: points[other][k] for k in shown}},
        "sweep": list(points),
    }


def svd_report(report: Any, **extra: Any) -> dict[str, Any]:
    """A truncated SVD's result as a results.json record: s, residuals and convergence.

    Args:
        report: an :class:`ntkdyn.TruncatedSVD` (``U``, ``s``, ``residuals``, ``iterations``,
            ``converged``, ``matvecs``).
        extra: more entries (e.g. ``method``, ``seconds``).

    Returns:
        ``n`` and ``k`` (the shape of U), ``s``, ``residuals``, ``converged``, ``iterations``,
        ``matvecs`` and ``extra``.
    """
    n, k = np.shape(report.U)
    return {
        "n": int(n),
        "k": int(k),
        "s": np.asarray(report.s, np.float64),
        "residuals": np.asarray(report.residuals, np.float64),
        "converged": bool(report.converged),
        "iterations": int(report.iterations),
        "matvecs": int(report.matvecs),
        **extra,
    }
