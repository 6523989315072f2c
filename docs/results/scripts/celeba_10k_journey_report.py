"""Tables, figures and the reading of docs/results/celeba_10k_journey.md from celeba_10k_journey.sh
(and of the CelebA-HQ table in docs/results/celebahq_30k.md from celebahq_30k_thresholds.sh).

Usage, from the repository root::

    python docs/results/scripts/celeba_10k_journey_report.py [RUNS_DIR] [--copy DEST]
        [--prefix celeba_10k] [--title CelebA-10k]

Prints Markdown: the test table of every method under three selection rules over the seeds found
(own rule, validation worst group, validation worst group with the decision threshold tuned on
validation), the epochs chosen, and the journey of the runs that measured responses (the spectrum
at θ₀, what each direction carries, the theory's prediction, the measured responses and a reading
whose every sentence is computed from the numbers). Writes ``docs/figures/PREFIX_directions_sK.png``
and ``docs/figures/PREFIX_responses_sK.png`` (PREFIX: ``--prefix``, the figures' data name:
``--title``). ``--copy DEST`` copies each run's results.json,
config.json and summary.md under DEST/<run>/.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from ntkdyn.runs import format_mean_std, mean_std

METHODS = {"erm": "ERM", "sd": "SD", "groupdro": "Group DRO"}
OWN = {"erm": "by_val_avg", "sd": "by_val_avg", "groupdro": "by_val_worst"}
RULES = {
    "own": "own rule (ERM, SD: val average; Group DRO: val worst group)",
    "by_val_worst": "val worst group",
    "by_val_worst_threshold": "val worst group, threshold tuned on val",
}
MINORITY = "Blond_Hair=1,Male=1"
SHORT = {
    "Blond_Hair=0,Male=0": "not blond ♀",
    "Blond_Hair=0,Male=1": "not blond ♂",
    "Blond_Hair=1,Male=0": "blond ♀",
    "Blond_Hair=1,Male=1": "blond ♂",
}
ATOL = 1e-8  # ntkdyn.analysis.DECOUPLED_ATOL: M[j, i] < −ATOL means i starves j


def pm(values: list[float]) -> str:
    mean, std = mean_std(values, ddof=1)
    return format_mean_std(mean, std if len(values) > 1 else None)


def load_runs(runs: Path) -> dict[str, dict[int, dict]]:
    """Each method's runs by seed: ``METHOD_sK``, or ``METHOD_VALUE_sK`` when the validation grid
    kept a value other than the default (a ``grid METHOD keeps VALUE`` line of jobs.log)."""
    log = runs / "jobs.log"
    kept = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        if " grid " in line and " keeps " in line:
            kept[line.split()[2]] = line.split()[-1]
    out: dict[str, dict[int, dict]] = {m: {} for m in METHODS}
    for path in sorted(runs.glob("*_s*/results.json")):
        name, seed = path.parent.name.rsplit("_s", 1)
        method = name.split("_")[0]
        if method not in out or not seed.isdigit():
            continue
        grid_kept = (runs / f"{method}_{kept.get(method)}_s{seed}").is_dir()
        if name == (f"{method}_{kept[method]}" if grid_kept else method):
            out[method][int(seed)] = json.loads(path.read_text())
    return out


def table(results: dict[str, dict[int, dict]]) -> list[str]:
    lines = [
        "| method | rule | seeds | epochs chosen | threshold t | test average | test worst group |"
        " " + " | ".join(SHORT.values()) + " |",
        "|---|---|---:|---|---|---:|---:|" + "---:|" * len(SHORT),
    ]
    for m, seeds in results.items():
        if not seeds:
            continue
        for rule, label in RULES.items():
            key = OWN[m] if rule == "own" else rule
            blocks = [r["methods"][m][key] for r in seeds.values() if key in r["methods"][m]]
            if not blocks:
                continue
            per = [b["per_seed"][0] for b in blocks]
            epochs = ", ".join(str(p["epoch"]) for p in per)
            ts = ", ".join(f"{p['threshold']:+.2f}" for p in per if "threshold" in p) or "0"
            groups = [pm([p["test"]["group_acc"].get(g, np.nan) for p in per]) for g in SHORT]
            lines.append(
                f"| {METHODS[m]} | {label} | {len(per)} | {epochs} | {ts} | "
                f"{pm([p['test']['avg_acc'] for p in per])} | "
                f"**{pm([p['test']['worst_group_acc'] for p in per])}** | "
                + " | ".join(groups)
                + " |"
            )
    return lines


def last_epoch_notes(results: dict[str, dict[int, dict]]) -> list[str]:
    notes = []
    for m, seeds in results.items():
        for rule in (OWN[m], "by_val_worst_threshold"):
            per = [
                r["methods"][m][rule]["per_seed"][0]
                for r in seeds.values()
                if rule in r["methods"][m]
            ]
            if not per:
                continue
            total = next(iter(seeds.values()))["config"]["epochs"]
            at_end = sum(p["epoch"] == total for p in per)
            if at_end:
                notes.append(
                    f"* {METHODS[m]} under {rule.removeprefix('by_')}: {at_end} of {len(per)} seeds "
                    f"chose the last epoch ({total}); a longer budget might still improve it."
                )
    return notes or ["* No method chose its last epoch under any rule."]


def journey(
    results: dict[str, dict[int, dict]],
    figures: Path,
    prefix: str = "celeba_10k",
    title: str = "CelebA-10k",
) -> list[str]:
    from ntkdyn.plots.journey import direction_groups_figure, journey_responses_figure

    seeds = sorted({s for m in results.values() for s, r in m.items() if "journey" in r})
    if not seeds:
        return ["No run measured responses."]
    lines = []
    for seed in seeds:
        runs = {m: results[m][seed] for m in METHODS if seed in results[m]}
        first = next(iter(runs.values()))["journey"]
        d = first["seeds"][0]
        s, k = np.array(d["s"]), d["k"]
        share = d["directions"]["group_share"]
        carry = d["carriers"][MINORITY]
        lines += [
            f"### Seed {seed}",
            "",
            f"Sample: {first['sample']}. Spectrum: {d['solver']}, {d['seconds']:.0f} s; "
            f"{len(s)} directions, s₁ … s₅ = {', '.join(f'{v:.1f}' for v in s[:5])}, "
            f"s₁/s₂ = {s[0] / s[1]:.2f}, s_{k} = {s[k - 1]:.1f}. The top {k} hold "
            + ", ".join(f"{100 * sum(share[g]):.1f} %" for g in share)
            + f" of the margin energy of {', '.join(SHORT[g] for g in share)} "
            f"(a random {k}-dimensional subspace: {100 * k / d['n']:.1f} %).",
            "",
            f"Directions that carry the blond men (the fewest holding half of their energy among "
            f"the top {k}): " + ", ".join(f"u{j}" for j in carry) + ".",
            "",
            "| j | s_j | label u_jᵀ1/√n | Male u_jᵀYa/√n | "
            + " | ".join(f"{SHORT[g]} %" for g in share)
            + " |",
            "|---:|---:|---:|---:|" + "---:|" * len(share),
        ]
        for j in range(k):
            mark = "**" if j + 1 in carry else ""
            lines.append(
                f"| {mark}{j + 1}{mark} | {s[j]:.1f} | {d['directions']['label'][j]:+.3f} | "
                f"{d['directions']['attribute'][j]:+.3f} | "
                + " | ".join(f"{100 * share[g][j]:.1f}" for g in share)
                + " |"
            )
        lines += [
            "",
            "Prediction on the top-k system (M[j, i] = ∂z_j*/∂s_i; i starves j when "
            f"M[j, i] < −{ATOL:g}):",
            "",
        ]
        predictions = {}  # each run predicts for its own method, on the same θ₀ and sample
        for r in runs.values():
            predictions |= r["journey"]["seeds"][0]["prediction"]
        for m, p in predictions.items():
            if "error" in p:
                lines.append(
                    f"* {METHODS[m]} (λ = {p['lam']:.4g}): no fixed point ({p['error'][:90]}…)."
                )
                continue
            M = np.array(p["matrix"])
            starved = {
                j: [i + 1 for i in range(k) if i != j - 1 and M[j - 1, i] < -ATOL] for j in carry
            }
            worst = min((M[j - 1, i], i + 1, j) for j in carry for i in range(k) if i != j - 1)
            text = "; ".join(
                f"u{j} by " + (", ".join(f"u{i}" for i in v) if v else "none")
                for j, v in starved.items()
            )
            lines.append(
                f"* {METHODS[m]} (λ = {p['lam']:.4g}): carriers of the blond men starved — {text}; "
                f"most negative M[j, i] on them {worst[0]:.3g} (i = {worst[1]}, j = {worst[2]}; "
                f"z_j* = " + ", ".join(f"{p['z_star'][j - 1]:.3g}" for j in carry) + " there); "
                f"{int(np.sum(M[~np.eye(k, dtype=bool)] < -ATOL))} of {k * (k - 1)} off-diagonal "
                "entries below the threshold."
            )
        epochs = {m: r["journey"]["epochs"][m][0] for m, r in runs.items()}
        fig = direction_groups_figure(share, s, title=f"{title}, ResNet-10 at θ₀ (seed {seed})")
        fig.savefig(figures / f"{prefix}_directions_s{seed}.png", dpi=130)
        fig = journey_responses_figure(
            {METHODS[m]: e for m, e in epochs.items()}, carry, group=MINORITY
        )
        fig.savefig(figures / f"{prefix}_responses_s{seed}.png", dpi=130)
        lines += [
            "",
            "Measured over training (z_j per epoch on the sample, the blond men's mean "
            "margin, the part of Y(f_t − f₀) outside span(U_k)):",
            "",
        ]
        lines += [
            "| method | "
            + " | ".join(f"u{j}: peak (epoch) → final" for j in carry)
            + " | blond ♂ margin: peak (epoch) → final | outside span(U_k), epoch 1 → final |",
            "|---|" + "---|" * len(carry) + "---|---|",
        ]
        finals = {}
        for m, e in epochs.items():
            z = np.array([r["z"] for r in e])
            mg = np.array([r["margin"][MINORITY] for r in e])
            out = [r["outside"] for r in e]
            finals[m] = {
                j: (z[:, j - 1].max(), int(z[:, j - 1].argmax()) + 1, z[-1, j - 1]) for j in carry
            }
            finals[m]["margin"] = (mg.max(), int(mg.argmax()) + 1, mg[-1])
            cells = [f"{a:.2f} ({b}) → {c:.2f}" for a, b, c in finals[m].values()]
            lines.append(
                f"| {METHODS[m]} | " + " | ".join(cells) + f" | {out[0]:.2f} → {out[-1]:.2f} |"
            )
        lines += ["", "Reading (computed from the numbers above):", ""]
        for m, f in finals.items():
            declined = [j for j in carry if f[j][2] < 0.8 * f[j][0] and f[j][0] > 0]
            lines.append(
                f"* {METHODS[m]}: "
                + (
                    f"the responses along {', '.join(f'u{j}' for j in declined)} fell by more "
                    "than 20 % from their peak by the last epoch"
                    if declined
                    else "no response along the blond men's directions fell by more than 20 % from its peak"
                )
                + f"; the blond men's mean margin ended at {f['margin'][2]:+.2f} "
                f"({'its peak' if f['margin'][1] == len(epochs[m]) else 'peak ' + format(f['margin'][0], '+.2f') + ' at epoch ' + str(f['margin'][1])})."
            )
        if "erm" in finals and "sd" in finals:
            more = [j for j in carry if finals["sd"][j][2] > finals["erm"][j][2]]
            lines.append(
                f"* SD ends with the larger response on {len(more)} of the {len(carry)} "
                f"blond-men directions ({', '.join(f'u{j}' for j in more) or 'none'}), and with the "
                f"{'larger' if finals['sd']['margin'][2] > finals['erm']['margin'][2] else 'smaller'} "
                "blond-men margin."
            )
        lines.append("")
    return lines


def main() -> int:
    args = sys.argv[1:]
    options = {"--copy": None, "--prefix": "celeba_10k", "--title": "CelebA-10k"}
    for flag in options:
        if flag in args:
            i = args.index(flag)
            options[flag], args = args[i + 1], args[:i] + args[i + 2 :]
    copy = Path(options["--copy"]) if options["--copy"] else None
    runs = Path(args[0] if args else "runs/celeba10k_journey")
    results = load_runs(runs)
    figures = Path("docs/figures")
    print("## Test table\n")
    print("\n".join(table(results)))
    print("\n## Chosen epochs\n")
    print("\n".join(last_epoch_notes(results)))
    print("\n## Journey\n")
    print("\n".join(journey(results, figures, options["--prefix"], options["--title"])))
    if copy is not None:
        for path in sorted(runs.glob("*_s*/results.json")):
            dest = copy / path.parent.name
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("results.json", "config.json", "summary.md"):
                if (path.parent / name).exists():
                    shutil.copyfile(path.parent / name, dest / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
