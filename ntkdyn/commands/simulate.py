"""Integrate one feature system of your choice and write its trajectory and figure.

The system is U (from ``--delta`` for two features, a ``--U`` file, or the identity), singular values
``--s`` and λ ``--lam``; the loss ``--loss`` picks the flow (Pezeshki et al. 2021, Sec. 3–4):
``ce`` (weight decay), ``sd`` (Spectral Decoupling), ``dual`` (the Legendre dual flow on α, started at
α = ``--alpha-start``, i.e. z ≈ 0) or ``quadratic`` (CE with the quadratic approximation of the entropy
about ``--alpha0``; an approximation). ``--steps K`` runs discrete GD with step ``--eta``
(t = η·k); ``--t1 T`` integrates the gradient flow with an adaptive solver to time T in the same
units (η·steps). Writes ``trajectory.json``, ``trajectory.npz``, ``trajectory.{png,pdf}``,
``config.json`` and ``results.json`` (final state, fixed point, starvation matrix) into ``--out``.

Examples::

    ntkdyn simulate --s 6 2 --delta 0.5 --loss ce --lam 0.01 --eta 0.05 --steps 2000 --out runs/sim
    ntkdyn simulate --s 8 4 2 --U u.npy --loss sd --lam 0.002 --t1 100 --out runs/sim_sd
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

HELP = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
X64 = True

LOSSES = ("ce", "sd", "dual", "quadratic")


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
        "--lam",
        type=float,
        default=0.01,
        help="lambda (weight decay for ce/dual/quadratic, logit penalty for sd)",
    )
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
        ValueError: naming ``--U`` for an unreadable file, an unknown suffix or a non-2-D array.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--U: no such file {str(path)!r}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".txt", ".csv"):
            arr = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)
        else:
            raise ValueError(f"--U: unsupported file type {suffix!r}; use .npy, .txt or .csv")
    except (OSError, ValueError) as exc:
        if str(exc).startswith("--U"):
            raise
        raise ValueError(f"--U: cannot read {str(path)!r} as a numeric matrix ({exc})") from exc
    arr = np.asarray(arr, dtype=float)
    if arr.ndim != 2:
        raise ValueError(
            f"--U: expected a 2-D (n, d) matrix in {str(path)!r}, got shape {arr.shape}"
        )
    return arr


def _system(args):
    import jax.numpy as jnp

    from ntkdyn.systems import feature_system, rotation_matrix

    s = list(args.s)
    d = len(s)
    if any(not math.isfinite(v) or v <= 0 for v in s):
        raise ValueError(f"--s: singular values must be finite and > 0, got {s}")
    if not math.isfinite(args.lam) or args.lam < 0:
        raise ValueError(f"--lam: must be a finite number >= 0, got {args.lam}")
    if args.loss == "dual" and args.lam <= 0:
        raise ValueError("--lam: the dual flow needs lambda > 0")
    if args.delta is not None:
        if d != 2:
            raise ValueError(
                f"--delta: builds a two-feature U(delta), but --s has {d} values; pass two values or --U"
            )
        if not math.isfinite(args.delta) or abs(args.delta) >= 1:
            raise ValueError(f"--delta: must satisfy |delta| < 1, got {args.delta}")
        U = rotation_matrix(jnp.asarray(args.delta, jnp.float64))
    elif args.U is not None:
        U = load_matrix(args.U)
        if U.shape[1] != d:
            raise ValueError(
                f"--U: has d={U.shape[1]} columns but --s has {d} values; give one singular value per column"
            )
    else:
        U = jnp.eye(d)
    try:
        return feature_system(U, jnp.asarray(s, jnp.float64), args.lam)
    except ValueError as exc:
        name = str(exc).split(":")[0]
        raise ValueError(f"--{name}: {str(exc)[len(name) + 2 :]}") from exc


def run(args: argparse.Namespace) -> int:
    """Integrate the chosen system, write the trajectory, figure and results, print a summary.

    Args:
        args: parsed arguments (see :func:`configure`).

    Returns:
        0.
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

    system = _system(args)
    if not 0 < args.alpha0 < 1:
        raise ValueError(f"--alpha0: must be in (0, 1), got {args.alpha0}")
    if not 0 < args.alpha_start < 1:
        raise ValueError(f"--alpha-start: must be in (0, 1), got {args.alpha_start}")
    fields = {
        "ce": ce_field,
        "sd": sd_field,
        "dual": dual_field,
        "quadratic": functools.partial(quadratic_ce_field, alpha0=args.alpha0),
    }
    field = fields[args.loss]
    z0 = jnp.full(system.n, args.alpha_start) if args.loss == "dual" else jnp.zeros(system.d)
    mode = "ode" if args.t1 is not None else "gd"
    steps = args.steps if args.steps is not None else (200 if args.quick else 2000)
    if args.quick and mode == "ode" and args.num_points == 101:
        args.num_points = 21
    try:
        if mode == "gd":
            if steps < 1:
                raise ValueError(f"--steps: must be >= 1, got {steps}")
            if args.save_every < 1 or steps % args.save_every:
                raise ValueError(
                    f"--save-every: must be >= 1 and divide --steps={steps}, got {args.save_every}"
                )
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
    except ValueError as exc:
        message = str(exc)
        for name in (
            "eta",
            "t1",
            "num_points",
            "rtol",
            "atol",
            "max_steps",
            "save_every",
            "num_steps",
        ):
            if message.startswith(f"{name}:"):
                flag = "steps" if name == "num_steps" else name.replace("_", "-")
                message = f"--{flag}:{message[len(name) + 1 :]}"
        raise ValueError(message) from exc
    state = np.asarray(traj.z)
    z = np.asarray(dual_to_z(traj.z, system)) if args.loss == "dual" else state
    primal = ce_field if args.loss == "dual" else field
    try:
        z_star, M = (np.asarray(a) for a in fixed_point_and_jacobian_s(primal, system))
    except SolverError:  # e.g. lambda = 0: the margins grow forever, there is no finite fixed point
        z_star, M = None, None

    rd = RunDir(args.out)
    config = {
        k: v for k, v in vars(args).items() if not k.startswith("_")
    }  # write_config turns paths into strings
    config.update(mode=mode, steps=steps if mode == "gd" else None)
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
    title = f"{args.loss.upper()} ({'GD' if mode == 'gd' else 'ODE'}), s = {', '.join(f'{v:g}' for v in args.s)}, λ = {args.lam:g}"
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
    rd.write_text("summary.md", _summary(args, mode, steps, z, z_star, M, traj))
    sys.stdout.write(
        f"final z = {np.array2string(z[-1], precision=4)}; fixed point z* = "
        f"{'none (no finite fixed point)' if z_star is None else np.array2string(z_star, precision=4)}; "
        f"wrote {rd.path}\n"
    )
    return 0


def _summary(args, mode, steps, z, z_star, M, traj) -> str:
    """The run as a short Markdown table."""
    import numpy as np

    def vec(a):
        return "—" if a is None else "(" + ", ".join(f"{v:.4f}" for v in np.ravel(a)) + ")"

    horizon = f"{steps} GD steps, η = {args.eta:g}" if mode == "gd" else f"ODE to t = {args.t1:g}"
    lines = [
        f"# ntkdyn simulate: {args.loss.upper()}",
        "",
        f"s = {vec(args.s)}, λ = {args.lam:g}, {horizon}.",
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
