"""Report builders shared by the experiments: per-step records, the theory's starvation entries.

* :func:`history_records`: a full-batch run's history (S seeds × R records) as metrics.jsonl rows,
  averaged over the restarts of each grid point;
* :func:`theory_starvation`: the starvation matrix ∂z_j*/∂s_i of a measured spectrum under each
  named training objective, at the λ of :func:`ntkdyn.objectives.theory_lam` (the one conversion);
* :func:`starvation_lines`: those entries, the spectrum and the measured responses as Markdown;
* :func:`grid_results`: per-seed evaluations of a grid × restarts run as one method's results
  (mean ± std, or the sweep and its training-domain selection);
* :func:`results_header`: a summary's title, data, restarts, selection and the accuracies beside
  the published ones;
* :func:`probe_table`, :func:`sweep_table`: the Markdown tables of a probe and of sweeps;
* :func:`protocol_summary`: a protocol's whole summary.md from those pieces;
* :func:`seed_table`: per-configuration metrics, mean ± std over seeds to 3 significant digits;
* :func:`measured_theory`: a measured spectrum, its starvation matrices and the measured responses
  as results.json entries; :func:`starvation_reading`, the summary's reading of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "grid_results",
    "history_records",
    "measured_theory",
    "probe_table",
    "protocol_summary",
    "results_header",
    "seed_table",
    "significant",
    "starvation_lines",
    "sweep_table",
    "theory_starvation",
]


def history_records(
    history: Mapping[str, Any],
    steps: Sequence[int],
    *,
    restarts: int,
    grid: Sequence[Mapping[str, float]] = ({},),
    **fixed: Any,
) -> list[dict[str, Any]]:
    """metrics.jsonl rows: one per grid point and record step, each metric the mean over restarts.

    Args:
        history: arrays shaped (G·R, T) (seed axis = grid point × restart, as the loop stacks them).
        steps: (T,) the record steps.
        restarts: R, restarts per grid point.
        grid: the G grid points (their values go into the rows when G > 1).
        fixed: entries of every row (e.g. ``method="sd"``).

    Returns:
        ``[{**fixed, "step": t, **point, metric: mean, ...}]``.
    """
    hist = {h: np.asarray(v, np.float64) for h, v in history.items()}
    return [
        {
            **fixed,
            "step": int(step),
            **(point if len(grid) > 1 else {}),
            **{h: float(v[g * restarts : (g + 1) * restarts, r].mean()) for h, v in hist.items()},
        }
        for g, point in enumerate(grid)
        for r, step in enumerate(steps)
    ]


def theory_starvation(
    U: Any, s: Any, objectives: Mapping[str, tuple[Any, str]], *, num_examples: int
) -> dict[str, Any]:
    """The starvation matrix M[j, i] = ∂z_j*/∂s_i of a measured (U_k, s_k) under each objective.

    :func:`ntkdyn.analysis.starvation_summary` on the truncated system at
    ``theory_lam(objective, num_examples=n)``'s field and λ.

    Args:
        U, s: the measured left singular vectors (n, k) and singular values (k,).
        objectives: name → ``(objective, lam_source)``, an objective the theory covers
            (:func:`~ntkdyn.objectives.theory_lam`) and a note on where its λ comes from.
        num_examples: n of the mean-form objectives.

    Returns:
        JSON-ready ``{name: {**starvation summary, "lam_source": ...}}``.

    Raises:
        ValueError: as :func:`~ntkdyn.objectives.theory_lam`.
    """
    from ntkdyn.analysis import starvation_summary
    from ntkdyn.objectives import theory_lam
    from ntkdyn.tangent import FeatureSpectrum

    spectrum = FeatureSpectrum(U, s)
    out = {}
    for name, (objective, source) in objectives.items():
        field, lam = theory_lam(objective, num_examples=num_examples)
        out[name] = {**starvation_summary(spectrum, lam, field), "lam_source": source}
    return out


def starvation_reading(results: Mapping[str, Any], anneal: int) -> str:
    """Where the theory holds and where it breaks, each sentence from the run's own numbers.

    Reads ``results["starvation"]`` (:func:`theory_starvation`: per loss the matrix' facts) and
    ``results["responses"]`` (the share of ‖Δf‖² the directions at θ₀ hold at the end); the two
    facts of the protocol that no number shows (Adam instead of GD; SD's annealing) are marked as
    commentary.

    Args:
        results: a Colored MNIST results.json with ``starvation`` and ``responses``.
        anneal: SD's annealing step.

    Returns:
        One paragraph ("" when the run has no starvation entries).
    """
    from ntkdyn.analysis import DECOUPLED_ATOL

    starvation, responses = results.get("starvation") or {}, results.get("responses") or {}
    out = []
    for name, label in (("sd", "SD"), ("ce", "CE")):
        st = starvation.get(name)
        if st is None or "error" in st:
            if st is not None:
                out.append(f"{label}: the theory has no fixed point here ({st['error'][:80]}).")
            continue
        starved = st["negative_fraction_col1"]
        if st["max_abs"] < DECOUPLED_ATOL:
            out.append(
                f"{label}'s starvation matrix is round-off (max |∂z*/∂s| = {st['max_abs']:.1e}): "
                f"{label} predicts no starvation on this spectrum."
            )
        else:
            source = f" at {st['lam_source']}" if st.get("lam_source") else ""
            out.append(
                f"{label}{source}: feature 1 starves {100 * starved:.0f} % of the other directions "
                f"(∂z_j*/∂s₁ < −{DECOUPLED_ATOL:g}; the most negative {st['col1_min']:.2g}, "
                f"against |∂z*/∂s| up to {st['max_abs']:.2g})."
            )
    for label, r in responses.items():
        share = 100 * float(r["captured"])
        where = "mostly inside" if share >= 50 else "mostly outside"
        out.append(
            f"{label}: the directions at θ₀ hold {share:.0f} % of ‖Δf‖² at the end — the change "
            f"of the network lies {where} the span the theory follows."
        )
    if not out:
        return ""
    out.append(
        "Commentary (from the protocol, not measured): the theory is gradient descent on the "
        "linearized network from z = 0, the run is Adam with large steps; SD's published annealing "
        f"makes its loss c·(ℓ + mean f²) from step {anneal} on, the theory's λ = 2 rather than 2c."
    )
    return "Where the theory holds and where it breaks: " + " ".join(out)


def measured_theory(
    report: Any,
    objectives: Mapping[str, tuple[Any, str]],
    curves: Mapping[str, Mapping[str, Any]],
    *,
    method: str = "matrix-free truncated SVD of YΦ at θ₀ (ntkdyn.feature_spectrum, k)",
    **spectrum: Any,
) -> dict[str, Any]:
    """results.json's ``spectrum``, ``starvation`` and ``responses`` of a measured spectrum.

    Args:
        report: the truncated SVD of YΦ at θ₀ (:class:`ntkdyn.TruncatedSVD`: ``U`` (n, k), ``s``).
        objectives: as :func:`theory_starvation` (n = the rows of ``report.U``).
        curves: label → a run's curves with ``z`` (T, k) and ``captured``.
        method: how the spectrum was found (recorded).
        **spectrum: more entries of the spectrum record (e.g. ``seconds``).

    Returns:
        ``{"spectrum": svd_report, "starvation": ..., "responses": {label: {z_final, captured}}}``.
    """
    from ntkdyn.runs.report import svd_report

    n = int(np.shape(report.U)[0])
    return {
        "spectrum": svd_report(report, method=method, **spectrum),
        "starvation": theory_starvation(report.U, report.s, objectives, num_examples=n),
        "responses": {
            m: {"z_final": c["z"][-1], "captured": float(c["captured"])} for m, c in curves.items()
        },
    }


def starvation_lines(
    spectrum: Mapping[str, Any],
    starvation: Mapping[str, Any],
    responses: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """Markdown lines: the measured spectrum, the responses at the end and each starvation matrix.

    Args:
        spectrum: :func:`ntkdyn.runs.svd_report` of the spectrum (with ``restart``, ``seconds``).
        starvation: :func:`theory_starvation`'s entries.
        responses: label → ``{"z_final": (k,), "captured": float}``.
    """
    sp = spectrum
    s = ", ".join(f"{v:.1f}" for v in sp["s"][:5])
    lines = [
        f"Spectrum of YΦ at θ₀ (restart {sp['restart']}, all {sp['n']} training examples, top "
        f"{sp['k']} directions matrix-free): s₁…s₅ = {s}; max residual "
        f"{max(sp['residuals']):.1e} ({'converged' if sp['converged'] else 'NOT converged'}) in "
        f"{sp['seconds']:.0f} s.",
        "",
    ]
    for m, r in responses.items():
        top = sorted(range(len(r["z_final"])), key=lambda j: -abs(r["z_final"][j]))[:3]
        zs = ", ".join(f"z{j + 1} = {r['z_final'][j]:.1f}" for j in top)
        lines.append(
            f"* {m}, measured at the end: {zs}; the {sp['k']} directions hold "
            f"{100 * r['captured']:.0f} % of ‖Δf‖² on the training set."
        )
    for name, t in starvation.items():
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
    return lines


PUBLISHED_SELECTION = "published hyperparameters (tuned on the test environment by their authors)"
VALIDATION_SELECTION = "training-domain validation (held-out part of the training environments)"


def grid_results(
    values: Mapping[str, Any],
    grid: Sequence[Mapping[str, float]],
    *,
    restarts: int,
    keep: Sequence[str] = (),
) -> dict[str, Any]:
    """One method's results from per-seed values of a grid × restarts run.

    One grid point: :func:`ntkdyn.runs.restart_summary` (mean ± std over restarts). Several:
    :func:`ntkdyn.runs.sweep_selection` over the grid's summaries (training-domain validation).

    Args:
        values: a tree of (G·R,) per-seed arrays (seed axis = grid point × restart).
        grid: the G grid points (hyperparameter dicts).
        restarts: R.
        keep: per-restart entries to keep as lists (e.g. ``("train_acc", "test_acc")``).

    Returns:
        The results entry, with ``"selection"`` saying how the point was chosen.
    """
    import jax

    from ntkdyn.runs.report import restart_summary, sweep_selection

    def summary(g):
        part = jax.tree_util.tree_map(lambda a: a[g * restarts : (g + 1) * restarts], values)
        return restart_summary(part, keep=keep)

    if len(grid) == 1:
        return {**summary(0), "selection": PUBLISHED_SELECTION}
    points = [{**grid[g], **summary(g)} for g in range(len(grid))]
    return {**sweep_selection(points, grid), "selection": VALIDATION_SELECTION}


def probe_table(
    methods: Mapping[str, Mapping[str, Any]],
    published: Mapping[str, Mapping[str, Any]],
    inputs: Sequence[str],
    *,
    labels: Mapping[str, str],
    header: Sequence[str],
) -> list[str]:
    """Markdown rows ``acc % / entropy (published acc % / entropy)`` of each method's probe.

    Args:
        methods: name → results with ``"probe"``: input → ``{"acc", "entropy"}``.
        published: name → ``{"probe": {"acc": (...), "entropy": (...)}}`` (optional per method).
        inputs: the probe inputs, in column order.
        labels: name → row label.
        header: the table header (first column the method).
    """
    from ntkdyn.runs.report import markdown_table

    def cell(m, i, k):
        p, pub = methods[m]["probe"][k], published.get(m, {}).get("probe")
        text = f"{100 * p['acc']:.1f} / {p['entropy']:.2f}"
        return text + (f" ({100 * pub['acc'][i]:.1f} / {pub['entropy'][i]:.2f})" if pub else "")

    rows = [[labels[m]] + [cell(m, i, k) for i, k in enumerate(inputs)] for m in methods]
    return markdown_table(header, rows)


def sweep_table(
    methods: Mapping[str, Mapping[str, Any]],
    coefficients: Mapping[str, Sequence[str]],
    *,
    labels: Mapping[str, str],
) -> list[str]:
    """Markdown lines of every swept point (train / validation / test accuracy), none if no sweep.

    Args:
        methods: name → results, with ``"sweep"`` (the points) and ``"selected"`` for swept ones.
        coefficients: name → the hyperparameters shown.
        labels: name → row label.
    """
    from ntkdyn.runs.report import format_mean_std as pct
    from ntkdyn.runs.report import markdown_table

    rows = [
        [
            labels[m]
            + (" (selected)" if all(p[c] == r["selected"][c] for c in coefficients[m]) else ""),
            ", ".join(f"{c} {p[c]:.4g}" for c in coefficients[m]),
            *(pct(p[f"{s}_acc_mean"], p[f"{s}_acc_std"]) for s in ("train", "val", "test")),
        ]
        for m, r in methods.items()
        for p in r.get("sweep", [])
    ]
    if not rows:
        return []
    header = ["method", "hyperparameters", "train acc", "validation acc", "test acc"]
    return ["", "## Sweeps", "", *markdown_table(header, rows)]


def results_header(
    title: str,
    results: Mapping[str, Any],
    published: Mapping[str, Mapping[str, Any]],
    *,
    labels: Mapping[str, str],
    restarts: int,
    first_restart: int = 0,
    seed: int = 0,
    step_divisor: int = 1,
    note: str = "",
    splits: Sequence[str] = ("train", "test"),
) -> list[str]:
    """A run summary's first lines: title, data, restarts, selection, ours beside published.

    Args:
        title: the Markdown title (without ``#``).
        results: the run's results, with ``"data"`` (description, n_images, n_train, n_test,
            source), ``"selection"`` and ``"methods"`` (``<split>_acc_mean``/``_std``).
        published: name → ``{split: (mean, std)}``.
        labels: name → row label.
        restarts, first_restart, seed: the restarts run (:func:`ntkdyn.runs.restarts_label`).
        step_divisor: > 1 says "quick mode (1/d of the steps)".
        note: a line under the table.
        splits: the accuracy columns.
    """
    from ntkdyn.runs.report import restarts_label, versus_published_table

    d, div = results["data"], step_divisor
    quick = f"; quick mode (1/{div} of the steps)" if div > 1 else ""
    columns = [(f"{s}_acc", s, f"{s} acc") for s in splits]
    return [
        f"# {title}",
        "",
        f"Data: {d['description']} — {d['n_images']} images ({d['n_train']} training, "
        f"{d['n_test']} test); source `{d['source']}`.",
        f"Restarts: {restarts_label(first_restart, restarts)}; seed {seed}{quick}.",
        f"Model selection: {results['selection']}.",
        "",
        *versus_published_table(results["methods"], published, columns, labels=labels),
        "",
        note,
    ]


def protocol_summary(
    title: str,
    results: Mapping[str, Any],
    published: Mapping[str, Mapping[str, Any]],
    *,
    labels: Mapping[str, str],
    coefficients: Mapping[str, Sequence[str]],
    seeds: int,
    first_seed: int = 0,
    seed: int = 0,
    step_divisor: int = 1,
    note: str = "",
    probe: tuple[str, str, Sequence[str], Sequence[str]] | None = None,
    theory: str = "",
    figures: str = "",
) -> str:
    """A protocol's summary.md: header and accuracies, probe, sweeps, the theory, the figures.

    Args:
        title, results, published, labels, note: as :func:`results_header`.
        coefficients: name → the hyperparameters shown in the sweep table.
        seeds, first_seed, seed, step_divisor: the seeds run (:func:`results_header`'s restarts).
        probe: ``(heading, note, inputs, header)`` of the probe section (:func:`probe_table`), or
            ``None`` for none.
        theory: a paragraph under the starvation section (shown when ``results`` has one).
        figures: the closing line naming the figures.

    Returns:
        The Markdown text, ending in a newline.
    """
    methods = results["methods"]
    lines = results_header(
        title,
        results,
        published,
        labels=labels,
        restarts=seeds,
        first_restart=first_seed,
        seed=seed,
        step_divisor=step_divisor,
        note=note,
    )
    if probe is not None:
        heading, probe_note, inputs, header = probe
        lines += ["", f"## {heading}", "", probe_note, ""]
        lines += probe_table(methods, published, inputs, labels=labels, header=header)
    lines += sweep_table(methods, coefficients, labels=labels)
    if "starvation" in results:
        lines += ["", "## Feature responses and the theory's starvation matrix", ""]
        lines += starvation_lines(results["spectrum"], results["starvation"], results["responses"])
        lines += ["", theory] if theory else []
    lines += ["", figures] if figures else []
    return "\n".join([*lines, ""])


def significant(mean: float | None, std: float | None = None, digits: int = 3) -> str:
    """``mean ± std`` with ``digits`` significant digits of the mean, the std to the same decimals.

    ``"—"`` for a missing mean; a zero or non-finite mean is shown with ``digits`` decimals.
    """
    import math

    from ntkdyn.runs.report import format_mean_std

    if mean is None or not math.isfinite(mean) or mean == 0:
        return format_mean_std(mean, std, scale=1.0, digits=digits)
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(mean))))
    return format_mean_std(mean, std, scale=1.0, digits=decimals)


def seed_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str],
    *,
    spread: bool,
    first: str = "configuration",
) -> list[str]:
    """A Markdown table of per-row metrics: :func:`significant` of ``KEY`` (± ``KEY_std``).

    Args:
        rows: row name → metrics with ``KEY`` and, for the spread, ``KEY_std``.
        columns: the metric keys shown.
        spread: show the std (several seeds) or the mean alone.
        first: the first column's title.
    """
    from ntkdyn.runs.report import markdown_table

    def cell(r, key):
        return significant(r.get(key), r.get(f"{key}_std") if spread else None)

    body = [[name, *(cell(r, key) for key in columns)] for name, r in rows.items()]
    return markdown_table([first, *columns], body)
