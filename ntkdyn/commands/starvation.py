"""Fixed points and ∂z₂*/∂s₁ of the paper's two-feature system, under CE and under SD.

The system (Pezeshki et al. 2021, Sec. 3, two-feature example): n = d = 2, y = (1, 1),
U(δ) = [[√(1−δ²), −δ], [δ, √(1−δ²)]], s = (s₁, s₂). For each s₁ it reports the CE fixed point
(weight decay λ) with ∂z₂*/∂s₁ by implicit differentiation and by central differences, and the SD
fixed point (logit penalty λ_SD) with its ∂z₂*/∂s₁. Gradient starvation: ∂z₂*/∂s₁ < 0 for s₁ > s₂.

Example::

    ntkdyn starvation --s1 2 3 4 5 6 8 --s2 2 --delta 0.5 --lam 0.01 --sd-lam 0.002 --json

prints one JSON object ``{"s1": [...], "s2": 2.0, "delta": 0.5, "ce": {"lam", "z1", "z2", "dz2_ds1",
"dz2_ds1_fd", ...}, "sd": {"lam", "z1", "z2", "dz2_ds1", ...}, "starvation": true, ...}``; without
``--json`` a readable table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

HELP = __doc__.split("\n\n")[0] + (
    "\n\nFloat64. Expected (lam 0.01, delta 0.5, s2 2): z2* falls from 1.64 (s1 = 2) to 0.92 (s1 = 8), "
    "dz2*/ds1 = 0 at s1 = s2 and < 0 above; SD: z* = (6.373, 1.708) for every s1."
)
X64 = True

# Tolerance below which an SD derivative counts as zero (float64 Newton at rtol 1e-12).
DECOUPLED_ATOL = 1e-8


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to ``parser``."""
    parser.add_argument(
        "--s1",
        type=float,
        nargs="+",
        default=[2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
        help="singular values s1 of the strong feature (one row each)",
    )
    parser.add_argument(
        "--s2", type=float, default=2.0, help="singular value s2 of the weak feature"
    )
    parser.add_argument(
        "--delta", type=float, default=0.5, help="coupling delta of U(delta), |delta| < 1"
    )
    parser.add_argument("--lam", type=float, default=0.01, help="CE weight decay lambda > 0")
    parser.add_argument("--sd-lam", type=float, default=0.002, help="SD logit penalty lambda > 0")
    parser.add_argument(
        "--fd-h", type=float, default=1e-4, help="step of the central finite differences"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object and nothing else"
    )


def _check(name: str, value: float, *, positive: bool = True) -> None:
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name}: must be a finite number > 0, got {value}")


def starvation_table(
    s1: Sequence[float],
    s2: float = 2.0,
    delta: float = 0.5,
    lam: float = 0.01,
    sd_lam: float = 0.002,
    fd_h: float = 1e-4,
) -> dict[str, Any]:
    """Fixed points and ∂z₂*/∂s₁ of the two-feature system for each s₁, under CE and SD.

    CE: λz* = S²Uᵀσ(−Uz*); SD: Uᵀσ(−Uz*) = λ_SD z* (paper Sec. 3 and 4). Derivatives by implicit
    differentiation through the Newton solver (one batched solve); CE's also by central differences.

    Args:
        s1: values of s₁ (> 0).
        s2: s₂ > 0.
        delta: coupling, |δ| < 1.
        lam: CE weight decay λ > 0.
        sd_lam: SD penalty λ_SD > 0.
        fd_h: finite-difference step, 0 < h < min(s).

    Returns:
        A JSON-ready dict with keys ``s1``, ``s2``, ``delta``, ``ce``, ``sd``, ``starvation`` (CE's
        ∂z₂*/∂s₁ < 0 at every s₁ > s₂, and at least one such s₁), ``sd_decoupled`` (every SD
        |∂z*/∂s₁| < 1e-8) and ``fd_max_abs_error`` (implicit vs finite differences).

    Raises:
        ValueError: naming ``s1``, ``s2``, ``delta``, ``lam``, ``sd_lam`` or ``fd_h``.
    """
    import numpy as np

    from ntkdyn.dynamics import ce_field, sd_field
    from ntkdyn.fixed_points import fixed_points_batch
    from ntkdyn.systems import rotation_system, stack_systems

    s1 = [float(v) for v in s1]
    if not s1:
        raise ValueError("s1: give at least one value")
    for v in s1:
        _check("s1", v)
    _check("s2", s2)
    _check("lam", lam)
    _check("sd_lam", sd_lam)
    if not math.isfinite(delta) or abs(delta) >= 1:
        raise ValueError(f"delta: must satisfy |delta| < 1, got {delta}")
    if not (math.isfinite(fd_h) and 0 < fd_h < min(min(s1), s2)):
        raise ValueError(
            f"fd_h: must satisfy 0 < fd_h < min(s1, s2) = {min(min(s1), s2)}, got {fd_h}"
        )

    k = len(s1)
    # One batch per loss: the k systems, then (CE only) their s₁ ± h neighbours for the differences.
    ce_systems = [rotation_system([v, s2], delta, lam) for v in s1]
    ce_systems += [
        rotation_system([v + sign * fd_h, s2], delta, lam) for sign in (1, -1) for v in s1
    ]
    sd_systems = [rotation_system([v, s2], delta, sd_lam) for v in s1]
    z_all, J_all = fixed_points_batch(ce_field, stack_systems(ce_systems))
    z_ce, J_ce = z_all[:k], J_all[:k]
    fd = np.asarray((z_all[k : 2 * k, 1] - z_all[2 * k :, 1]) / (2 * fd_h))
    z_sd, J_sd = fixed_points_batch(sd_field, stack_systems(sd_systems))

    dz2 = np.asarray(J_ce[:, 1, 0])
    above = np.array(s1) > s2
    starvation = bool(above.any() and np.all(dz2[above] < 0))
    sd_decoupled = bool(np.all(np.abs(np.asarray(J_sd[:, :, 0])) < DECOUPLED_ATOL))
    return {
        "s1": s1,
        "s2": float(s2),
        "delta": float(delta),
        "ce": {
            "lam": float(lam),
            "z1": np.asarray(z_ce[:, 0]).tolist(),
            "z2": np.asarray(z_ce[:, 1]).tolist(),
            "dz1_ds1": np.asarray(J_ce[:, 0, 0]).tolist(),
            "dz2_ds1": dz2.tolist(),
            "dz2_ds1_fd": fd.tolist(),
        },
        "sd": {
            "lam": float(sd_lam),
            "z1": np.asarray(z_sd[:, 0]).tolist(),
            "z2": np.asarray(z_sd[:, 1]).tolist(),
            "dz1_ds1": np.asarray(J_sd[:, 0, 0]).tolist(),
            "dz2_ds1": np.asarray(J_sd[:, 1, 0]).tolist(),
        },
        "starvation": starvation,
        "sd_decoupled": sd_decoupled,
        "fd_max_abs_error": float(np.max(np.abs(fd - dz2))),
        "fd_h": float(fd_h),
    }


def format_table(table: dict[str, Any]) -> str:
    """A readable fixed-width table of :func:`starvation_table`'s result.

    Args:
        table: the dict returned by :func:`starvation_table`.

    Returns:
        The table as text (one row per s₁, then a verdict line).
    """
    ce, sd = table["ce"], table["sd"]
    head = (
        f"two-feature system: s2 = {table['s2']:g}, delta = {table['delta']:g}, "
        f"CE lam = {ce['lam']:g}, SD lam = {sd['lam']:g}\n"
        f"{'s1':>6} | {'CE z1*':>9} {'CE z2*':>9} {'dz2*/ds1':>11} {'(FD)':>11} | "
        f"{'SD z1*':>9} {'SD z2*':>9} {'dz2*/ds1':>11}\n"
    )
    rows = [
        f"{s1:>6g} | {ce['z1'][i]:>9.4f} {ce['z2'][i]:>9.4f} {ce['dz2_ds1'][i]:>11.3e} "
        f"{ce['dz2_ds1_fd'][i]:>11.3e} | {sd['z1'][i]:>9.4f} {sd['z2'][i]:>9.4f} {sd['dz2_ds1'][i]:>11.3e}"
        for i, s1 in enumerate(table["s1"])
    ]
    verdict = (
        f"starvation under CE (dz2*/ds1 < 0 for every s1 > s2): {table['starvation']}; "
        f"SD decoupled (|dz*/ds1| < {DECOUPLED_ATOL:g}): {table['sd_decoupled']}"
    )
    return head + "\n".join(rows) + "\n" + verdict


def run(args: argparse.Namespace) -> int:
    """Compute the table and print it (or one JSON object with ``--json``).

    Args:
        args: parsed arguments (see :func:`configure`).

    Returns:
        0.
    """
    table = starvation_table(args.s1, args.s2, args.delta, args.lam, args.sd_lam, args.fd_h)
    if args.json:
        sys.stdout.write(json.dumps(table, allow_nan=False) + "\n")
    else:
        print(format_table(table))
    return 0
