"""Theory of gradient starvation on the two-feature system: trajectories, fixed points, a verdict.

Pezeshki et al. 2021, Sec. 3–4 and its two-feature example figure (and the blog's slider figure). The system: n = d = 2,
y = (1, 1), U(δ) = [[√(1−δ²), −δ], [δ, √(1−δ²)]] with δ = 0.5, s = (s₁, 2), s₁ ∈ [2, 8].
CE with weight decay λ = 0.01, ż = η[S²Uᵀσ(−Uz) − λz]; SD with logit penalty λ = 0.002,
ż = ηS²[Uᵀσ(−Uz) − λz]; the dual flow α̇ = log((1−α)/α) − λ⁻¹US²Uᵀα from α = 1e-8 (z ≈ 0).
GD with η = 0.05 from z = 0, sampled every 20 steps: 2000 steps for the slider view (the blog),
5000 steps for the z₂-vs-z₁ figure (the paper's figure script). Fixed points by Newton, ∂z*/∂s by
implicit differentiation through the solver, checked against central differences.

Command::

    ntkdyn theory --out runs/theory          # seconds on a laptop CPU
    ntkdyn theory --quick --out /tmp/theory  # smaller grids, for tests

From Python: ``results = run(Config())`` computes everything and writes nothing; ``report(results,
"runs/theory")`` writes the run directory.

Expected (float64):

* CE: z₂* = 1.640 (s₁ = 2), 1.583, 1.467, 1.329, 1.185, 0.915 (s₁ = 8) for s₁ = 2, 3, 4, 5, 6, 8;
  ∂z₂*/∂s₁ = 0 at s₁ = s₂ = 2 and −0.096, −0.131, −0.143, −0.143, −0.123 for s₁ = 3, 4, 5, 6, 8
  (implicit and finite differences agree to ~1e-10). Gradient starvation.
* SD: z* = (6.373, 1.708) for every s₁ (= a·Uᵀ1 with σ(−a) = λa, a = 4.665); ∂z*/∂s₁ = 0.
* The dual flow ends at the CE fixed point; GD after 2000 steps is still ~0.08 below z₂* at s₁ = 8.

Outputs in ``--out``: ``config.json``, ``results.json`` (fixed points, derivatives, the finite-difference
check, SD invariance, dual/primal agreement, the verdict), ``summary.md``, ``metrics.jsonl`` (the
sampled trajectories), ``trajectories.npz``, and the figures (PNG + PDF) ``theory_z2_vs_z1``,
``theory_slider``, ``theory_sensitivity``, ``theory_starvation_map``, and ``theory.html``: the slider
over ``slider_grid`` as one interactive offline page (:mod:`ntkdyn.slider`). One verdict line on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Any, NamedTuple

import numpy as np

from ntkdyn.settings import ConfigError, add_arguments, check, each, from_arguments, integer, number

HELP = (
    __doc__.split("\n\n")[0]
    + "\n\nPaper settings by default (see the module docstring); --quick for a smoke test."
)
X64 = True


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the theory experiment (defaults: the paper's two-feature system).

    Attributes:
        s2: singular value of the weak feature.
        delta: coupling δ of U(δ).
        lam_ce: CE weight decay λ.
        lam_sd: SD logit penalty λ.
        eta: GD step η.
        steps: GD steps of the slider view.
        figure_steps: GD steps of the z₂-vs-z₁ figure (≥ ``steps``; its first ``steps`` are reused).
        save_every: sampling interval in steps of the slider view, the metrics and trajectories.npz.
        figure_save_every: sampling interval of the z₂-vs-z₁ figure (must divide ``save_every``).
        figure_s1: s₁ values of the z₂-vs-z₁ figure.
        slider_s1: s₁ values of the slider view.
        slider_grid: (start, stop, num) of the s₁ grid of the interactive page ``theory.html``.
        table_s1: s₁ values of the fixed-point table and the finite-difference check.
        sweep: (start, stop, num) of the s₁ sweep of the sensitivity figure.
        map_s1: (start, stop, num) of the phase map's s₁ axis.
        map_s2: (start, stop, num) of the phase map's s₂ axis.
        dual_alpha0: initial dual variable (α₀ → 0 is z → 0).
        dual_t1: final time of the dual flow.
        dual_points: log-spaced samples of the dual flow.
        fd_h: finite-difference step.
    """

    s2: float = 2.0
    delta: float = 0.5
    lam_ce: float = 0.01
    lam_sd: float = 0.002
    eta: float = 0.05
    steps: int = 2000
    figure_steps: int = 5000
    save_every: int = 20
    figure_save_every: int = 1
    figure_s1: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0)
    slider_s1: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0)
    slider_grid: tuple[float, float, int] = (2.0, 8.0, 61)
    table_s1: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
    sweep: tuple[float, float, int] = (1.0, 8.0, 71)
    map_s1: tuple[float, float, int] = (1.0, 8.0, 36)
    map_s2: tuple[float, float, int] = (1.0, 8.0, 36)
    dual_alpha0: float = 1e-8
    dual_t1: float = 0.1
    dual_points: int = 300
    fd_h: float = 1e-4

    def __post_init__(self) -> None:
        """Check every setting before anything runs (ConfigError naming the setting at fault)."""
        check(
            self,
            {
                **dict.fromkeys(
                    ("s2", "lam_ce", "lam_sd", "eta", "dual_t1", "fd_h"), number(0, low_open=True)
                ),
                "delta": number(-1, 1, low_open=True, high_open=True),
                "dual_alpha0": number(0, 1, low_open=True, high_open=True),
                **dict.fromkeys(
                    ("steps", "figure_steps", "save_every", "dual_points", "figure_save_every"),
                    integer(1),
                ),
                **dict.fromkeys(
                    ("figure_s1", "slider_s1", "table_s1"), each(number(0, low_open=True))
                ),
            },
        )
        if self.steps % self.save_every or self.figure_steps % self.save_every:
            raise ConfigError(
                "save_every",
                f"must divide steps={self.steps} and figure_steps={self.figure_steps}, got {self.save_every}",
            )
        if self.save_every % self.figure_save_every:
            raise ConfigError(
                "figure_save_every",
                f"must divide save_every={self.save_every}, got {self.figure_save_every}",
            )
        if self.figure_steps < self.steps:
            raise ConfigError(
                "figure_steps", f"must be >= steps={self.steps}, got {self.figure_steps}"
            )
        for name in ("sweep", "map_s1", "map_s2", "slider_grid"):
            lo, hi, num = getattr(self, name)
            if not (0 < lo < hi) or num < 2:
                raise ConfigError(name, f"needs 0 < start < stop and num >= 2, got {(lo, hi, num)}")

    def quick(self) -> Config:
        """Short runs and small grids (tests, ``--quick``)."""
        return dataclasses.replace(
            self,
            steps=400,
            figure_steps=600,
            save_every=20,
            sweep=(1.0, 8.0, 8),
            map_s1=(1.0, 8.0, 5),
            map_s2=(1.0, 8.0, 4),
            dual_points=60,
        )


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to ``parser``: ``--out``, ``--quick`` and one flag per setting."""
    parser.add_argument("--out", default="runs/theory", help="output directory")
    parser.add_argument("--quick", action="store_true", help="short runs and small grids (tests)")
    add_arguments(parser, Config())


def _rotation_systems(pairs, delta: float, lam: float):
    """Two-feature systems U(δ), s = (s₁, s₂) for each pair, λ: one batch, without a Python loop."""
    import jax.numpy as jnp

    from ntkdyn.systems import FeatureSystem, rotation_system

    base = rotation_system([1.0, 1.0], delta, lam)  # validates delta and lam
    s = jnp.asarray(np.asarray(pairs, dtype=float).reshape(-1, 2), base.s.dtype)
    B = s.shape[0]
    return FeatureSystem(jnp.broadcast_to(base.U, (B, 2, 2)), s, jnp.full((B,), base.lam))


class Results(NamedTuple):
    """What :func:`run` computes: the settings, then plain numpy arrays and dicts (nothing written).

    Attributes:
        config: the settings.
        trajectories: B = the s₁ any figure needs, sorted in ``traj_s1``: ``t`` (T,) and ``ce``,
            ``sd`` (B, T, 2) every ``save_every`` GD steps; ``t_dense``, ``ce_dense``,
            ``sd_dense`` every ``figure_save_every`` steps to ``figure_steps``; the dual flow's
            ``dual_t`` (P,), ``dual`` (its z) and ``dual_alpha`` (its α), (B, P, 2).
        sweep: ``sweep_s1`` (K,), fixed points ``sweep_ce_z``, ``sweep_sd_z`` (K, 2) and
            ∂z₂*/∂s₁ ``sweep_ce_dz2``, ``sweep_sd_dz2`` (K,).
        phase_map: axes ``map_s1``, ``map_s2`` and ∂z₂*/∂s₁ ``map_ce``, ``map_sd``
            (len(s2), len(s1)).
        table: :func:`ntkdyn.analysis.starvation_table` at ``table_s1``.
        slider: :class:`ntkdyn.slider.SliderData` over ``slider_grid`` (the page ``theory.html``).
        checks: closed forms and cross-checks, name → value.
        verdict: ``starvation``, ``sd_decoupled`` and the one-line ``text``.
    """

    config: Config
    trajectories: dict[str, np.ndarray]
    sweep: dict[str, np.ndarray]
    phase_map: dict[str, np.ndarray]
    table: dict[str, Any]
    slider: Any
    checks: dict[str, Any]
    verdict: dict[str, Any]


def run(config: Config) -> Results:
    """Run every computation of the experiment (no file is written).

    Args:
        config: the settings (validated when built).

    Returns:
        :class:`Results`.

    Raises:
        ConfigError: naming ``eta`` when GD diverges or oscillates (η too large).
        SolverError: if the dual flow's or the fixed points' solver fails.
    """
    import jax
    import jax.numpy as jnp

    from ntkdyn.analysis import starvation_table
    from ntkdyn.dynamics import ce_field, dual_field, dual_to_z, gd, integrate, sd_field
    from ntkdyn.fixed_points import fixed_points_batch, sd_square_margin
    from ntkdyn.slider import slider_data
    from ntkdyn.systems import rotation_system

    c = config

    # Trajectories: one vmapped GD run per loss over every s₁ any figure needs.
    traj_s1 = sorted(set(c.figure_s1) | set(c.slider_s1))
    ce_batch = _rotation_systems([(v, c.s2) for v in traj_s1], c.delta, c.lam_ce)
    sd_batch = _rotation_systems([(v, c.s2) for v in traj_s1], c.delta, c.lam_sd)
    z0 = jnp.zeros(2)
    steps = dict(eta=c.eta, num_steps=c.figure_steps, save_every=c.figure_save_every, throw=False)
    run_gd = lambda field: jax.vmap(lambda sy: gd(field, sy, z0, **steps))  # noqa: E731
    ce, sd = run_gd(ce_field)(ce_batch), run_gd(sd_field)(sd_batch)
    bad = [v for tr in (ce, sd) for v, ok in zip(traj_s1, tr.success, strict=True) if not ok]
    if bad:  # GD diverges or oscillates: the step is too large for these systems
        raise ConfigError("eta", f"GD is unstable at eta={c.eta} for s1={bad[0]}; reduce it")
    r = c.save_every // c.figure_save_every
    t_dense, ce_dense, sd_dense = np.asarray(ce.t[0]), np.asarray(ce.z), np.asarray(sd.z)
    # The dual flow: an adaptive solve, log-spaced samples (it moves fast at first).
    top = math.log10(c.dual_t1)
    dual_ts = jnp.concatenate([jnp.zeros(1), jnp.logspace(top - 7, top, c.dual_points)])
    dual = jax.vmap(
        lambda sy: integrate(dual_field, sy, jnp.full(2, c.dual_alpha0), t1=c.dual_t1, ts=dual_ts)
    )(ce_batch)
    dual_z = jax.vmap(dual_to_z)(dual.z, ce_batch)
    # The ODE at the slider's horizon, as a check on GD's discretisation.
    t_slider = c.eta * c.steps
    ode = jax.vmap(lambda sy: integrate(ce_field, sy, z0, t1=t_slider, num_points=2))(ce_batch)

    # Fixed points and derivatives over the sweep and the phase map: one batched Newton + implicit
    # AD per loss (fixed-size chunks, so one compilation serves every grid).
    sweep = np.linspace(*c.sweep[:2], int(c.sweep[2]))
    m1 = np.linspace(*c.map_s1[:2], int(c.map_s1[2]))
    m2 = np.linspace(*c.map_s2[:2], int(c.map_s2[2]))
    pairs = (
        [(v, c.s2) for v in sweep] + [(a, b) for b in m2 for a in m1] + [(v, c.s2) for v in traj_s1]
    )
    z_ce_all, J_ce_all = fixed_points_batch(ce_field, _rotation_systems(pairs, c.delta, c.lam_ce))
    z_sd_all, J_sd_all = fixed_points_batch(sd_field, _rotation_systems(pairs, c.delta, c.lam_sd))
    ns, nm = len(sweep), len(m1) * len(m2)
    z_ce, J_ce, z_sd, J_sd = z_ce_all[:ns], J_ce_all[:ns], z_sd_all[:ns], J_sd_all[:ns]
    map_ce = np.asarray(J_ce_all[ns : ns + nm, 1, 0]).reshape(len(m2), len(m1))
    map_sd = np.asarray(J_sd_all[ns : ns + nm, 1, 0]).reshape(len(m2), len(m1))
    z_ce_traj = np.asarray(z_ce_all[ns + nm :])
    table = starvation_table(c.table_s1, c.s2, c.delta, c.lam_ce, c.lam_sd, c.fd_h)
    kw = dict(s2=c.s2, delta=c.delta, lam_ce=c.lam_ce, lam_sd=c.lam_sd, eta=c.eta)
    grid = np.linspace(*c.slider_grid[:2], int(c.slider_grid[2]))
    slider = slider_data(grid, **kw, num_steps=c.steps, save_every=c.save_every)

    # Checks.
    a = sd_square_margin(c.lam_sd)
    sd_closed = a * np.asarray(rotation_system([c.s2, c.s2], c.delta, c.lam_sd).U.sum(0))
    k_slider = c.steps // c.figure_save_every
    checks = {
        "sd_fixed_point_spread": float(np.max(np.abs(np.asarray(z_sd) - np.asarray(z_sd)[0]))),
        "sd_closed_form_a": a,
        "sd_closed_form_z": sd_closed.tolist(),
        "sd_closed_form_max_abs_error": float(np.max(np.abs(np.asarray(z_sd) - sd_closed))),
        "sd_max_abs_dz_ds1": float(np.max(np.abs(np.asarray(J_sd[:, :, 0])))),
        "dual_vs_primal_max_abs": float(np.max(np.abs(np.asarray(dual_z[:, -1]) - z_ce_traj))),
        "fd_max_abs_error": table["fd_max_abs_error"],
        "gd_vs_ode_max_abs_at_slider_end": float(
            np.max(np.abs(ce_dense[:, k_slider] - np.asarray(ode.final)))
        ),
        "gd_slider_end_vs_fixed_point_max_abs": float(
            np.max(np.abs(ce_dense[:, k_slider] - z_ce_traj))
        ),
        "gd_figure_end_vs_fixed_point_max_abs": float(np.max(np.abs(ce_dense[:, -1] - z_ce_traj))),
        "dz2_ds1_at_s1_eq_s2": float(np.interp(c.s2, sweep, np.asarray(J_ce[:, 1, 0])))
        if sweep[0] <= c.s2 <= sweep[-1]
        else None,
    }
    return Results(
        config=c,
        trajectories=dict(
            t=t_dense[::r],
            traj_s1=np.array(traj_s1),
            ce=ce_dense[:, ::r],
            sd=sd_dense[:, ::r],
            t_dense=t_dense,
            ce_dense=ce_dense,
            sd_dense=sd_dense,
            dual_t=np.asarray(dual_ts),
            dual=np.asarray(dual_z),
            dual_alpha=np.asarray(dual.z),
        ),
        sweep=dict(
            sweep_s1=sweep,
            sweep_ce_z=np.asarray(z_ce),
            sweep_ce_dz2=np.asarray(J_ce[:, 1, 0]),
            sweep_sd_z=np.asarray(z_sd),
            sweep_sd_dz2=np.asarray(J_sd[:, 1, 0]),
        ),
        phase_map=dict(map_s1=m1, map_s2=m2, map_ce=map_ce, map_sd=map_sd),
        table=table,
        slider=slider,
        checks=checks,
        verdict=_verdict(table, checks),
    )


def _verdict(table: dict[str, Any], checks: dict[str, Any]) -> dict[str, Any]:
    z2 = table["ce"]["z2"]
    starving = table["starvation"]
    decoupled = table["sd_decoupled"] and checks["sd_fixed_point_spread"] < 1e-8
    i_min, i_max = int(np.argmin(table["s1"])), int(np.argmax(table["s1"]))
    sd_z = (table["sd"]["z1"][0], table["sd"]["z2"][0])
    text = (
        f"verdict: {'gradient starvation' if starving else 'NO gradient starvation'} under CE "
        f"(z2* {z2[i_min]:.3f} at s1={table['s1'][i_min]:g} -> {z2[i_max]:.3f} at s1={table['s1'][i_max]:g}, "
        f"dz2*/ds1 {'< 0' if starving else 'not < 0'} for every s1 > s2, FD agrees to {table['fd_max_abs_error']:.0e}); "
        f"SD {'removes it' if decoupled else 'does NOT remove it'} "
        f"(z* = ({sd_z[0]:.3f}, {sd_z[1]:.3f}) for every s1, max |dz*/ds1| {_roundoff(checks['sd_max_abs_dz_ds1'])})"
    )
    return {"starvation": starving, "sd_decoupled": decoupled, "text": text}


def _roundoff(value: float) -> str:
    """``= 3e-05``, or ``< 1e-12 (round-off)``: a round-off figure differs from one CPU to another."""
    return "< 1e-12 (round-off)" if abs(value) < 1e-12 else f"= {value:.0e}"


def _summary(results: Results) -> str:
    config, table, checks = results.config, results.table, results.checks
    lines = [
        "# Gradient starvation: two-feature theory",
        "",
        f"U(δ = {config.delta:g}), s₂ = {config.s2:g}, CE λ = {config.lam_ce:g}, SD λ = "
        f"{config.lam_sd:g}, GD η = {config.eta:g} (Pezeshki et al. 2021, Sec. 3–4). Fixed points "
        "to 4 significant digits; ∂z₂*/∂s₁ by implicit differentiation and by central differences "
        f"(FD, h = {config.fd_h:g}).",
        "",
        "| s₁ | CE z₁* | CE z₂* | ∂z₂*/∂s₁ (implicit) | ∂z₂*/∂s₁ (FD) | SD z₁* | SD z₂* | SD ∂z₂*/∂s₁ |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ce, sd = table["ce"], table["sd"]
    vec = lambda v: "(" + ", ".join(f"{x:#.4g}" for x in v) + ")"  # noqa: E731
    for i, s1 in enumerate(table["s1"]):
        lines.append(
            f"| {s1:g} | {ce['z1'][i]:#.4g} | {ce['z2'][i]:#.4g} | {ce['dz2_ds1'][i]:.3e} "
            f"| {ce['dz2_ds1_fd'][i]:.3e} | {sd['z1'][i]:#.4g} | {sd['z2'][i]:#.4g} "
            f"| {sd['dz2_ds1'][i]:.1e} |"
        )
    lines += [
        "",
        "| check | value |",
        "|---|---:|",
        *(
            f"| {k} | {vec(v) if isinstance(v, list) else '—' if v is None else f'{v:.3g}'} |"
            for k, v in checks.items()
        ),
        "",
        f"**{results.verdict['text']}**",
        "",
    ]
    return "\n".join(lines)


def _metrics(results: Results) -> list[dict[str, Any]]:
    """One record per loss, trajectory s₁ and sample: step, t, z₁, z₂."""
    tr, every = results.trajectories, results.config.save_every
    return [
        dict(loss=loss, s1=float(s1), step=k * every, t=float(t), z1=float(z[0]), z2=float(z[1]))
        for loss in ("ce", "sd")
        for i, s1 in enumerate(tr["traj_s1"])
        for k, (t, z) in enumerate(zip(tr["t"], tr[loss][i], strict=True))
    ]


def results_record(results: Results) -> dict[str, Any]:
    """The content of ``results.json``: fixed points, sweep, phase map, checks, final GD, verdict."""
    from ntkdyn.slider import slider_record

    sw, pm, tr = results.sweep, results.phase_map, results.trajectories
    return {
        "fixed_points": results.table,
        "sweep": {
            "s1": sw["sweep_s1"],
            "ce_z2": sw["sweep_ce_z"][:, 1],
            "ce_dz2_ds1": sw["sweep_ce_dz2"],
            "sd_z2": sw["sweep_sd_z"][:, 1],
            "sd_dz2_ds1": sw["sweep_sd_dz2"],
        },
        "starvation_map": {
            "s1": pm["map_s1"],
            "s2": pm["map_s2"],
            "ce_dz2_ds1": pm["map_ce"],
            "sd_dz2_ds1": pm["map_sd"],
            "ce_fraction_negative_above_diagonal": _frac_negative(pm),
        },
        "checks": results.checks,
        "final_gd": {
            "s1": tr["traj_s1"],
            "ce": tr["ce"][:, -1],
            "sd": tr["sd"][:, -1],
            "dual": tr["dual"][:, -1],
        },
        "verdict": results.verdict,
        "slider": slider_record(results.slider),
    }


def report(results: Results, run_dir) -> dict[str, Any]:
    """Write config, results, summary, metrics, trajectories and the four figures to ``run_dir``.

    Args:
        results: what :func:`run` returned.
        run_dir: output folder (a path or a :class:`ntkdyn.runs.RunDir`).

    Returns:
        The dict written to ``results.json``.
    """
    from ntkdyn.plots.theory import theory_figures
    from ntkdyn.runs import RunDir
    from ntkdyn.slider import slider_page

    config, tr = results.config, results.trajectories
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    rd.write_config(dataclasses.asdict(config))
    figures = theory_figures(
        s2=config.s2,
        figure_s1=config.figure_s1,
        slider_s1=config.slider_s1,
        slider_samples=config.steps // config.save_every + 1,
        fd_s1=np.array(results.table["s1"]),
        fd_dz2=np.array(results.table["ce"]["dz2_ds1_fd"]),
        **{k: tr[k] for k in ("traj_s1", "t", "ce", "sd", "ce_dense", "sd_dense", "dual")},
        **results.sweep,
        **results.phase_map,
    )
    for stem, fig in figures.items():
        rd.save_figure(fig, stem)
    rd.write_npz(
        "trajectories.npz",
        t=tr["t"],
        s1=tr["traj_s1"],
        ce=tr["ce"],
        sd=tr["sd"],
        dual_t=tr["dual_t"],
        dual_z=tr["dual"],
        dual_alpha=tr["dual_alpha"],
    )
    rd.write_metrics(_metrics(results))
    record = results_record(results)
    rd.write_results(record)
    rd.write_text("summary.md", _summary(results))
    rd.write_text("theory.html", slider_page(results.slider))
    return record


def _frac_negative(phase_map: dict[str, np.ndarray]) -> float | None:
    S1, S2 = np.meshgrid(phase_map["map_s1"], phase_map["map_s2"])
    above = S1 > S2 + 1e-9
    return float(np.mean(phase_map["map_ce"][above] < 0)) if above.any() else None


def resolve(args: argparse.Namespace) -> Config:
    """The :class:`Config` of parsed arguments (``--quick`` first, then the flags given).

    ``table_s1`` always holds s₂ (the verdict needs ∂z₂*/∂s₁ at s₁ = s₂). Raises ConfigError.
    """
    config = from_arguments(Config().quick() if args.quick else Config(), args)
    if config.s2 not in config.table_s1:
        config = dataclasses.replace(config, table_s1=tuple(sorted({config.s2, *config.table_s1})))
    return config


def cli(args: argparse.Namespace) -> int:
    """``ntkdyn theory``: the settings and ``--out`` checked, :func:`run`, :func:`report`, the verdict.

    Raises:
        ConfigError: naming the flag of a bad value (``--eta`` when GD diverges).
        InputError: an ``--out`` that cannot be written (checked before any computing).
    """
    from ntkdyn.runs.files import check_writable

    config = resolve(args)
    check_writable(args.out)
    record = report(run(config), args.out)
    sys.stdout.write(record["verdict"]["text"] + "\n")
    return 0
