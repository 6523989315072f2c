"""Integrate one feature system of your choice and write its trajectory and figure.

The system is U (from ``--delta`` for two features, a ``--U`` file, or the identity), singular values
``--s`` and λ — ``--lam-ce`` (weight decay, for ``ce``, ``dual`` and ``quadratic``) or ``--lam-sd``
(the logit penalty, for ``sd``), the names ``ntkdyn theory`` and ``ntkdyn starvation`` use; the
loss ``--loss`` picks the flow (Pezeshki et al. 2021, Sec. 3–4):
``ce`` (weight decay), ``sd`` (Spectral Decoupling), ``dual`` (the Legendre dual flow on α, started at
α = ``--alpha-start``, i.e. z ≈ 0) or ``quadratic`` (CE with the quadratic approximation of the entropy
about ``--alpha0``; an approximation). ``--steps K`` runs discrete GD with step ``--eta``
(t = η·k); ``--t1 T`` integrates the gradient flow with an adaptive solver to time T in the same
units (η·steps). Writes ``trajectory.json``, ``trajectory.npz``, ``trajectory.{png,pdf}``,
``config.json`` and ``results.json`` (final state, fixed point, starvation matrix) into ``--out``;
``--slider S1_MIN S1_MAX`` adds ``slider.html``, the interactive s₁ slider of a two-feature system.

Examples::

    ntkdyn simulate --s 6 2 --delta 0.5 --loss ce --lam-ce 0.01 --eta 0.05 --steps 2000 --out runs/sim
    ntkdyn simulate --s 8 4 2 --U u.npy --loss sd --lam-sd 0.002 --t1 100 --out runs/sim_sd
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ntkdyn.commands import deprecated_alias
from ntkdyn.errors import InputError

HELP = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
X64 = True

LOSSES = ("ce", "sd", "dual", "quadratic")
LAM_CE = 0.01  # the paper's two-feature example (as ntkdyn theory)
LAM_SD = 0.002


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to ``parser``."""
    parser.add_argument(
        "--s", type=float, nargs="+", required=True, help="singular values s_1 ... s_d (> 0)"
    )
    coupling = parser.add_mutually_exclusive_group()
    coupling.add_argument("--delta", type=float, help="two features: U = U(delta), |delta| < 1")
    coupling.add_argument(
        "--U", type=Path, help="U as .npy, .txt or .csv (n x d, orthonormal columns)"
    )
    parser.add_argument("--loss", choices=LOSSES, default="ce", help="the flow")
    parser.add_argument(
        "--lam-ce",
        type=float,
        default=None,
        help=f"CE weight decay lambda, for --loss ce, dual, quadratic (default: {LAM_CE})",
    )
    parser.add_argument(
        "--lam-sd",
        type=float,
        default=None,
        help=f"SD logit penalty lambda, for --loss sd (default: {LAM_SD})",
    )
    # 0.2's single --lam: the λ of whichever loss runs.
    deprecated_alias(parser, "--lam", "--lam-ce or --lam-sd", dest="lam", type=float)
    parser.add_argument(
        "--alpha0", type=float, default=0.5, help="expansion point of the quadratic approximation"
    )
    parser.add_argument(
        "--alpha-start", type=float, default=1e-8, help="initial dual variable for --loss dual"
    )
    parser.add_argument("--eta", type=float, default=0.05, help="GD step (with --steps)")
    horizon = parser.add_mutually_exclusive_group()
    horizon.add_argument("--steps", type=int, help="GD steps (default 2000 unless --t1 is given)")
    horizon.add_argument(
        "--t1", type=float, help="integrate the flow to this time (eta x steps units)"
    )
    parser.add_argument("--save-every", type=int, default=20, help="GD sampling interval (steps)")
    parser.add_argument("--num-points", type=int, default=101, help="ODE samples, 0 to t1")
    parser.add_argument("--rtol", type=float, default=1e-8, help="ODE relative tolerance")
    parser.add_argument("--atol", type=float, default=1e-10, help="ODE absolute tolerance")
    parser.add_argument("--max-steps", type=int, default=16_384, help="ODE step budget")
    parser.add_argument(
        "--slider",
        type=float,
        nargs=2,
        metavar=("S1_MIN", "S1_MAX"),
        help="also write slider.html: this two-feature system (--delta, --s S1 S2) with s1 swept "
        "over 61 values in [S1_MIN, S1_MAX], CE and SD side by side (the other loss at its default "
        "lambda), by GD (--steps, --eta, --save-every); a system of more features or a given --U "
        "has no single s1 to sweep, so it is not offered there",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/simulate"), help="output directory")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 200 GD steps (or 21 ODE samples) unless --steps/--num-points is given",
    )


def load_matrix(path: Path):
    """Read a 2-D matrix from ``.npy``, ``.txt`` (whitespace) or ``.csv`` (commas).

    Args:
        path: the file.

    Returns:
        A float64 numpy array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        InputError: naming ``--U`` for an unreadable file, an unknown suffix or a non-2-D array.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--U: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".txt", ".csv"):
        raise InputError(f"--U: unsupported file type {suffix!r}; use .npy, .txt or .csv")
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            arr = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)
        arr = np.asarray(arr, dtype=float)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(f"--U: cannot read {str(path)!r} as a numeric matrix ({exc})") from exc
    if arr.ndim != 2:
        raise InputError(
            f"--U: expected a 2-D (n, d) matrix in {str(path)!r}, got shape {arr.shape}"
        )
    return arr


def lam_of(args: argparse.Namespace) -> tuple[str, float]:
    """The flag and value of λ for ``args.loss``: ``--lam-sd`` for sd, else ``--lam-ce``.

    Raises:
        InputError: for the other loss's λ given, or a λ that is not finite and >= 0 (> 0 for
            the dual flow).
    """
    flag, other = ("--lam-sd", "--lam-ce") if args.loss == "sd" else ("--lam-ce", "--lam-sd")
    given = {"--lam-ce": args.lam_ce, "--lam-sd": args.lam_sd}
    if given[other] is not None:
        raise InputError(
            f"{other}: does not apply to --loss {args.loss}, got {given[other]}; pass {flag}"
        )
    value = given[flag]
    if value is None:
        value = getattr(args, "lam", None)  # the deprecated --lam
    if value is None:
        value = LAM_SD if args.loss == "sd" else LAM_CE
    if not math.isfinite(value) or value < 0:
        raise InputError(f"{flag}: must be a finite number >= 0, got {value}")
    if args.loss == "dual" and value <= 0:
        raise InputError(f"{flag}: the dual flow needs lambda > 0, got {value}")
    return flag, value


def _system(args):
    import jax.numpy as jnp

    from ntkdyn.systems import feature_system, rotation_matrix

    s = list(args.s)
    d = len(s)
    if any(not math.isfinite(v) or v <= 0 for v in s):
        raise InputError(f"--s: singular values must be finite and > 0, got {s}")
    lam_flag, lam = lam_of(args)
    u_flag = "--U"
    if args.delta is not None:
        u_flag = "--delta"
        if d != 2:
            raise InputError(
                f"--delta: builds a two-feature U(delta), but --s has {d} values; pass two values or --U"
            )
        if not math.isfinite(args.delta) or abs(args.delta) >= 1:
            raise InputError(f"--delta: must satisfy |delta| < 1, got {args.delta}")
        U = rotation_matrix(jnp.asarray(args.delta, jnp.float64))
    elif args.U is not None:
        U = load_matrix(args.U)
        if U.shape[1] != d:
            raise InputError(
                f"--U: has d={U.shape[1]} columns but --s has {d} values; give one singular value per column"
            )
    else:
        U = jnp.eye(d)
    flags = {"U": u_flag, "s": "--s", "lam": lam_flag}
    try:
        return feature_system(U, jnp.asarray(s, jnp.float64), lam)
    except ValueError as exc:  # e.g. a --U file whose columns are not orthonormal
        name, sep, message = str(exc).partition(": ")
        if not sep or name not in flags:
            raise
        raise InputError(f"{flags[name]}: {message}") from exc


def _check_horizon(args, mode: str, steps: int) -> None:
    """The time settings, checked before any work (each error names its flag)."""
    if not 0 < args.alpha0 < 1:
        raise InputError(f"--alpha0: must be in (0, 1), got {args.alpha0}")
    if not 0 < args.alpha_start < 1:
        raise InputError(f"--alpha-start: must be in (0, 1), got {args.alpha_start}")
    if mode == "gd":
        if not (math.isfinite(args.eta) and args.eta > 0):
            raise InputError(f"--eta: must be a finite number > 0, got {args.eta}")
        if steps < 1:
            raise InputError(f"--steps: must be >= 1, got {steps}")
        if args.save_every < 1 or steps % args.save_every:
            raise InputError(
                f"--save-every: must be >= 1 and divide --steps={steps}, got {args.save_every}"
            )
        return
    for flag, value in (("--t1", args.t1), ("--rtol", args.rtol), ("--atol", args.atol)):
        if not (math.isfinite(value) and value > 0):
            raise InputError(f"{flag}: must be a finite number > 0, got {value}")
    if args.num_points < 2:
        raise InputError(f"--num-points: need at least 2 samples, got {args.num_points}")
    if args.max_steps < 1:
        raise InputError(f"--max-steps: must be >= 1, got {args.max_steps}")


def _check_slider(args, mode: str) -> None:
    """``--slider`` needs a two-feature U(δ), GD and an increasing positive range of s₁."""
    if args.slider is None:
        return
    lo, hi = args.slider
    if args.delta is None or mode != "gd" or args.loss not in ("ce", "sd"):
        raise InputError(
            "--slider: sweeps s1 of a two-feature system by GD; pass --delta and two --s values, "
            f"--loss ce or sd and --steps (got --delta {args.delta}, --loss {args.loss}, {mode})"
        )
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise InputError(f"--slider: needs 0 < S1_MIN < S1_MAX, got {lo} {hi}")


def _slider_page(args, lam: float, steps: int) -> str:
    """The slider page of ``--slider``: CE and SD over 61 values of s₁, s₂ = the second ``--s``."""
    import numpy as np

    from ntkdyn.slider import slider_data, slider_page

    lam_ce, lam_sd = (LAM_CE, lam) if args.loss == "sd" else (lam, LAM_SD)
    data = slider_data(
        np.linspace(*args.slider, 61), s2=args.s[1], delta=args.delta, lam_ce=lam_ce,
        lam_sd=lam_sd, eta=args.eta, num_steps=steps, save_every=args.save_every,
    )  # fmt: skip
    return slider_page(
        data, title=f"ntkdyn simulate: s₁ from {args.slider[0]:g} to {args.slider[1]:g}"
    )


def run(args: argparse.Namespace) -> int:
    """Integrate the chosen system, write the trajectory, figure and results, print a summary.

    Every flag and the output folder are checked before any work.

    Args:
        args: parsed arguments (see :func:`configure`).

    Returns:
        0.

    Raises:
        InputError: naming the flag of a bad value; the time flags when the run fails (GD
            diverges at ``--eta``, the ODE solver runs out of ``--max-steps``).
        FileNotFoundError: for a missing ``--U`` file.
    """
    import functools

    import jax.numpy as jnp
    import numpy as np

    from ntkdyn.dynamics import (
        SolverError,
        ce_field,
        dual_field,
        dual_to_z,
        gd,
        integrate,
        quadratic_ce_field,
        sd_field,
    )
    from ntkdyn.fixed_points import fixed_point_and_jacobian_s
    from ntkdyn.plots.theory import trajectory_figure
    from ntkdyn.runs import RunDir
    from ntkdyn.runs.files import check_writable

    system = _system(args)
    lam_flag, lam = lam_of(args)
    mode = "ode" if args.t1 is not None else "gd"
    steps = args.steps if args.steps is not None else (200 if args.quick else 2000)
    if args.quick and mode == "ode" and args.num_points == 101:
        args.num_points = 21
    _check_horizon(args, mode, steps)
    _check_slider(args, mode)
    check_writable(args.out)
    fields = {
        "ce": ce_field,
        "sd": sd_field,
        "dual": dual_field,
        "quadratic": functools.partial(quadratic_ce_field, alpha0=args.alpha0),
    }
    field = fields[args.loss]
    z0 = jnp.full(system.n, args.alpha_start) if args.loss == "dual" else jnp.zeros(system.d)
    # A failed run on these flags is fixed by changing them (SolverError names which).
    try:
        if mode == "gd":
            traj = gd(field, system, z0, eta=args.eta, num_steps=steps, save_every=args.save_every)
        else:
            traj = integrate(
                field,
                system,
                z0,
                t1=args.t1,
                num_points=args.num_points,
                rtol=args.rtol,
                atol=args.atol,
                max_steps=args.max_steps,
            )
    except SolverError as exc:
        flags = "--eta" if mode == "gd" else "--max-steps, --rtol, --atol, --t1"
        raise InputError(f"{flags}: {exc}") from exc
    state = np.asarray(traj.z)
    z = np.asarray(dual_to_z(traj.z, system)) if args.loss == "dual" else state
    primal = ce_field if args.loss == "dual" else field
    try:
        z_star, M = (np.asarray(a) for a in fixed_point_and_jacobian_s(primal, system))
    except SolverError:  # e.g. lambda = 0: the margins grow forever, there is no finite fixed point
        z_star, M = None, None

    rd = RunDir(args.out)
    config = {  # write_config turns paths into strings
        k: v for k, v in vars(args).items() if not k.startswith("_") and k != "lam"
    }
    config.update(mode=mode, steps=steps if mode == "gd" else None)
    config[lam_flag.removeprefix("--").replace("-", "_")] = lam
    rd.write_config(config)
    record = {
        "t": np.asarray(traj.t),
        "z": z,
        "loss": args.loss,
        "mode": mode,
        "s": np.asarray(system.s),
        "lam": float(system.lam),
        "U": np.asarray(system.U),
    }
    if args.loss == "dual":
        record["alpha"] = state
    rd.write_json("trajectory.json", record)
    rd.write_npz("trajectory.npz", **{k: v for k, v in record.items() if k not in ("loss", "mode")})
    title = f"{args.loss.upper()} ({'GD' if mode == 'gd' else 'ODE'}), s = {', '.join(f'{v:g}' for v in args.s)}, λ = {lam:g}"
    rd.save_figure(
        trajectory_figure(np.asarray(traj.t), z, title=title, z_star=z_star), "trajectory"
    )
    results = {
        "final_z": z[-1],
        "fixed_point": z_star,
        "starvation_matrix": M,
        "distance_to_fixed_point": None
        if z_star is None
        else float(np.max(np.abs(z[-1] - z_star))),
        "num_steps": int(traj.num_steps),
        "success": bool(traj.success),
    }
    rd.write_results(results)
    rd.write_text("summary.md", _summary(args, lam, mode, steps, z, z_star, M, traj))
    if args.slider is not None:
        rd.write_text("slider.html", _slider_page(args, lam, steps))
    sys.stdout.write(
        f"final z = {np.array2string(z[-1], precision=4)}; fixed point z* = "
        f"{'none (no finite fixed point)' if z_star is None else np.array2string(z_star, precision=4)}; "
        f"wrote {rd.path}\n"
    )
    return 0


def _summary(args, lam, mode, steps, z, z_star, M, traj) -> str:
    """The run as a short Markdown table."""
    import numpy as np

    def vec(a):
        return "—" if a is None else "(" + ", ".join(f"{v:.4g}" for v in np.ravel(a)) + ")"

    horizon = f"{steps} GD steps, η = {args.eta:g}" if mode == "gd" else f"ODE to t = {args.t1:g}"
    lines = [
        f"# ntkdyn simulate: {args.loss.upper()}",
        "",
        f"s = {vec(args.s)}, {'SD' if args.loss == 'sd' else 'CE'} λ = {lam:g}, {horizon}.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| final z | {vec(z[-1])} |",
        f"| fixed point z* | {vec(z_star) if z_star is not None else 'none (no finite fixed point)'} |",
        f"| max abs(z − z*) at the end | "
        f"{'—' if z_star is None else f'{float(np.max(np.abs(z[-1] - z_star))):.3g}'} |",
    ]
    if M is not None:
        rows = "; ".join(vec(row) for row in np.asarray(M))
        lines.append(f"| ∂z*/∂s (row j: ∂z_j*/∂s_i) | {rows} |")
    lines.append(f"| solver steps, success | {int(traj.num_steps)}, {bool(traj.success)} |")
    return "\n".join(lines) + "\n"
