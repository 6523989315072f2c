"""Fixed points and ∂z₂*/∂s₁ of the paper's two-feature system, under CE and under SD.

The system (Pezeshki et al. 2021, Sec. 3, two-feature example): n = d = 2, y = (1, 1),
U(δ) = [[√(1−δ²), −δ], [δ, √(1−δ²)]], s = (s₁, s₂). For each s₁ it reports the CE fixed point
(weight decay λ) with ∂z₂*/∂s₁ by implicit differentiation and by central differences, and the SD
fixed point (logit penalty λ_SD) with its ∂z₂*/∂s₁. Gradient starvation: ∂z₂*/∂s₁ < 0 for s₁ > s₂.

Example::

    ntkdyn starvation --s1 2 3 4 5 6 8 --s2 2 --delta 0.5 --lam-ce 0.01 --lam-sd 0.002 --json

prints one JSON object ``{"s1": [...], "s2": 2.0, "delta": 0.5, "ce": {"lam", "z1", "z2", "dz2_ds1",
"dz2_ds1_fd", ...}, "sd": {"lam", "z1", "z2", "dz2_ds1", ...}, "starvation": true, ...}``; without
``--json`` a readable table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from ntkdyn.analysis import DECOUPLED_ATOL, starvation_table
from ntkdyn.commands import deprecated_alias
from ntkdyn.errors import InputError

HELP = __doc__.split("\n\n")[0] + (
    "\n\nFloat64. Expected (lam-ce 0.01, delta 0.5, s2 2): z2* falls from 1.64 (s1 = 2) to 0.92 (s1 = 8), "
    "dz2*/ds1 = 0 at s1 = s2 and < 0 above; SD: z* = (6.373, 1.708) for every s1."
)
X64 = True
DEFAULT_S1 = [2.0, 3.0, 4.0, 5.0, 6.0, 8.0]


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to ``parser``."""
    parser.add_argument(
        "--s1",
        type=float,
        nargs="+",
        default=DEFAULT_S1,
        help="singular values s1 of the strong feature (one row each)",
    )
    parser.add_argument(
        "--s2", type=float, default=2.0, help="singular value s2 of the weak feature"
    )
    parser.add_argument(
        "--delta", type=float, default=0.5, help="coupling delta of U(delta), |delta| < 1"
    )
    parser.add_argument("--lam-ce", type=float, default=0.01, help="CE weight decay lambda > 0")
    parser.add_argument("--lam-sd", type=float, default=0.002, help="SD logit penalty lambda > 0")
    deprecated_alias(parser, "--lam", "--lam-ce", dest="lam_ce", type=float)
    deprecated_alias(parser, "--sd-lam", "--lam-sd", dest="lam_sd", type=float)
    parser.add_argument(
        "--fd-h", type=float, default=1e-4, help="step of the central finite differences"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object and nothing else"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="also write a run directory: config.json, results.json (the table) and summary.md",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: s1 in {2, 8} unless --s1 is given"
    )


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


def check_args(args: argparse.Namespace, s1: list[float]) -> None:
    """Every value, checked before any work (each error names its flag).

    Raises:
        InputError: naming ``--s1``, ``--s2``, ``--delta``, ``--lam-ce``, ``--lam-sd`` or ``--fd-h``.
    """
    for flag, values in (
        ("--s1", s1),
        ("--s2", [args.s2]),
        ("--lam-ce", [args.lam_ce]),
        ("--lam-sd", [args.lam_sd]),
    ):
        bad = [v for v in values if not (math.isfinite(v) and v > 0)]
        if bad:
            raise InputError(f"{flag}: must be finite and > 0, got {bad[0]}")
    if not math.isfinite(args.delta) or abs(args.delta) >= 1:
        raise InputError(f"--delta: must satisfy |delta| < 1, got {args.delta}")
    bound = min(min(s1), args.s2)
    if not (math.isfinite(args.fd_h) and 0 < args.fd_h < bound):
        raise InputError(
            f"--fd-h: must satisfy 0 < fd_h < min(s1, s2) = {bound:g}, got {args.fd_h}"
        )


def summary(table: dict[str, Any]) -> str:
    """The table as Markdown (4 significant digits), then the verdict."""
    from ntkdyn.runs import markdown_table

    ce, sd = table["ce"], table["sd"]
    lines = [
        "# ntkdyn starvation",
        "",
        f"Two-feature system: s₂ = {table['s2']:g}, δ = {table['delta']:g}, CE λ = {ce['lam']:g}, "
        f"SD λ = {sd['lam']:g}; ∂z₂*/∂s₁ by implicit differentiation and by central differences "
        "(FD).",
        "",
    ]
    rows = [
        [
            f"{s1:g}",
            f"{ce['z1'][i]:.4g}",
            f"{ce['z2'][i]:.4g}",
            f"{ce['dz2_ds1'][i]:.3e}",
            f"{ce['dz2_ds1_fd'][i]:.3e}",
            f"{sd['z1'][i]:.4g}",
            f"{sd['z2'][i]:.4g}",
            f"{sd['dz2_ds1'][i]:.1e}",
        ]
        for i, s1 in enumerate(table["s1"])
    ]
    header = ["s₁", "CE z₁*", "CE z₂*", "CE ∂z₂*/∂s₁", "(FD)", "SD z₁*", "SD z₂*", "SD ∂z₂*/∂s₁"]
    lines += markdown_table(header, rows)
    lines += [
        "",
        f"Starvation under CE (∂z₂*/∂s₁ < 0 for every s₁ > s₂): {table['starvation']}; SD "
        f"decoupled (|∂z*/∂s₁| < {DECOUPLED_ATOL:g}): {table['sd_decoupled']}.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Compute the table and print it (or one JSON object with ``--json``).

    Every flag and ``--out`` are checked before any work.

    Args:
        args: parsed arguments (see :func:`configure`).

    Returns:
        0.

    Raises:
        InputError: naming the flag of a bad value, or an ``--out`` that cannot be written.
    """
    s1 = [2.0, 8.0] if args.quick and args.s1 == DEFAULT_S1 else list(args.s1)
    check_args(args, s1)
    if args.out is not None:
        from ntkdyn.runs.files import check_writable

        check_writable(args.out)
    table = starvation_table(s1, args.s2, args.delta, args.lam_ce, args.lam_sd, args.fd_h)
    if args.out is not None:
        from ntkdyn.runs import RunDir

        rd = RunDir(args.out)
        rd.write_config({k: v for k, v in vars(args).items() if not k.startswith("_")} | {"s1": s1})
        rd.write_results(table)
        rd.write_text("summary.md", summary(table))
    if args.json:
        sys.stdout.write(json.dumps(table, allow_nan=False) + "\n")
    else:
        print(format_table(table))
    return 0
