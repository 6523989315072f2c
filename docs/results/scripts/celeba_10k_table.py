"""Tables and figure of docs/results/celeba_10k.md from the runs of celeba_10k.sh.

Usage, from the repository root: ``python docs/results/scripts/celeba_10k_table.py [RUNS_DIR]
[--script celeba_10k.sh] [--prefix celeba_10k] [--title CelebA-10k]`` (the script whose grid the
runs followed; the figure's file name and data name: ``celebahq_30k.sh``, ``celebahq_30k``,
``CelebA-HQ 30k`` for docs/results/celebahq_30k.md). ``RUNS_DIR --keep METHOD`` prints the grid
value the protocol keeps for METHOD (the scripts call it). Otherwise prints the validation grid (validation numbers only) and the 5-seed table (test accuracy %, mean ±
sample std over seeds, each method under both selection rules) as Markdown, and writes
``docs/figures/PREFIX_groups.png`` (per-group test accuracy, each method under its own rule).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ntkdyn.runs import format_mean_std, mean_std

METHODS = {"erm": "ERM", "sd": "SD", "groupdro": "Group DRO"}
OWN_RULE = {"erm": "by_val_avg", "sd": "by_val_avg", "groupdro": "by_val_worst"}
RULES = {"by_val_avg": "val average", "by_val_worst": "val worst group"}
GROUPS = {
    "Blond_Hair=0,Male=0": "not blond ♀",
    "Blond_Hair=0,Male=1": "not blond ♂",
    "Blond_Hair=1,Male=0": "blond ♀",
    "Blond_Hair=1,Male=1": "blond ♂",
}
FLAGS = {"erm": "weight decay", "sd": "SD coefficient c", "groupdro": "step size η"}


def script_values(script: str = "celeba_10k.sh") -> tuple[dict[str, list[str]], dict[str, str]]:
    """The grid and default values, read from the protocol's script (one source of truth)."""
    text = (Path(__file__).parent / script).read_text()
    out = {}
    for name in ("GRID", "DEFAULT"):
        line = next(
            ln.strip()
            for ln in text.splitlines()
            if ln.strip().lower().startswith(f"declare -a {name.lower()}=")
        )
        body = line.split("=(", 1)[1].rstrip(")")
        pairs = body.split("[")[1:]
        out[name] = {p.split("]=")[0]: p.split("]=")[1].strip().strip('"') for p in pairs}
    return {m: v.split() for m, v in out["GRID"].items()}, out["DEFAULT"]


def run_name(method: str, value: str, default: str, seed: int) -> str:
    return f"{method}_s{seed}" if value == default else f"{method}_{value}_s{seed}"


def load(runs: Path, name: str, method: str) -> dict | None:
    path = runs / name / "results.json"
    return json.loads(path.read_text())["methods"][method] if path.exists() else None


def kept_values(runs: Path) -> dict[str, str]:
    kept = {}
    for line in (runs / "jobs.log").read_text().splitlines():
        if " grid " in line and " keeps " in line:
            parts = line.split()
            kept[parts[2]] = parts[-1]
    return kept


def keep(runs: Path, method: str, grid: dict[str, list[str]], default: dict[str, str]) -> str:
    """The grid value kept for ``method``: the best validation worst-group accuracy at the epoch
    that rule chooses, ties to the validation average (seed 0; no test number is read)."""

    def score(value: str) -> tuple[float, float]:
        r = load(runs, run_name(method, value, default[method], 0), method)["by_val_worst"]
        return r["val_worst_group_acc"], r["val_avg_acc"]

    return max(grid[method], key=score)


def pm(values: list[float]) -> str:
    """Mean ± sample std in percent (the mean alone for one seed)."""
    mean, std = mean_std(values, ddof=1)
    return format_mean_std(mean, std if len(values) > 1 else None)


def main() -> int:
    args = sys.argv[1:]
    options = {"--script": "celeba_10k.sh", "--prefix": "celeba_10k", "--title": "CelebA-10k"}
    for flag in options:
        if flag in args:
            i = args.index(flag)
            options[flag], args = args[i + 1], args[:i] + args[i + 2 :]
    runs = Path(args[0] if args else "runs/celeba10k")
    grid, default = script_values(options["--script"])
    if len(args) == 3 and args[1] == "--keep":  # the protocol scripts' choice of a grid value
        print(keep(runs, args[2], grid, default))
        return 0
    kept = kept_values(runs)
    print("## Validation grid (seed 0; validation accuracy %, never test)\n")
    print("| method | hyperparameter | value | rule | epoch | val average | val worst group |")
    print("|---|---|---:|---|---:|---:|---:|")
    for m, values in grid.items():
        for v in values:
            r = load(runs, run_name(m, v, default[m], 0), m)
            if r is None:
                continue
            mark = " (kept)" if kept.get(m) == v else ""
            for rule in RULES:
                e = r[rule]
                print(
                    f"| {METHODS[m]} | {FLAGS[m]} | {v}{mark} | {RULES[rule]} | "
                    f"{e['per_seed'][0]['epoch']} | {100 * e['val_avg_acc']:.1f} | "
                    f"{100 * e['val_worst_group_acc']:.1f} |"
                )
    print("\n## Seeds (test accuracy %, mean ± sample std over seeds)\n")
    print(
        "| method | selection | seeds | average | worst group | "
        + " | ".join(GROUPS.values())
        + " |"
    )
    print("|---|---|---:|---:|---:|" + "---:|" * len(GROUPS))
    means, stds, worst = {}, {}, {}
    for m in METHODS:
        value = kept.get(m, default[m])
        results = [load(runs, run_name(m, value, default[m], k), m) for k in range(5)]
        results = [r for r in results if r is not None]
        if not results:
            continue
        for rule in RULES:
            rows = [r[rule] for r in results]
            cells = [pm([x["group_acc"][g] for x in rows]) for g in GROUPS]
            own = " (own rule)" if rule == OWN_RULE[m] else ""
            print(
                f"| {METHODS[m]} ({FLAGS[m]} {value}) | {RULES[rule]}{own} | {len(rows)} | "
                f"{pm([x['avg_acc'] for x in rows])} | {pm([x['worst_group_acc'] for x in rows])} | "
                + " | ".join(cells)
                + " |"
            )
            if rule == OWN_RULE[m]:
                label = METHODS[m]
                stats = {g: mean_std([x["group_acc"][g] for x in rows], ddof=1) for g in GROUPS}
                means[label] = {g: m for g, (m, _) in stats.items()}
                stds[label] = {g: sd for g, (_, sd) in stats.items()}
                worst[label] = mean_std([x["worst_group_acc"] for x in rows])[0]
    if means:
        import matplotlib

        matplotlib.use("Agg")
        from ntkdyn.plots.celeba import plot_group_accuracy

        n = len(results)
        fig = plot_group_accuracy(
            means,
            list(GROUPS),
            worst=worst,
            std=stds,
            title=f"{options['--title']}, from scratch: per-group test accuracy, mean ± std over {n} seeds "
            "(each method under its own selection rule; dashed: mean worst group)",
        )
        ax = fig.axes[0]
        ax.set_xticks(range(len(GROUPS)), list(GROUPS.values()))
        ax.title.set_fontsize(8)
        out = Path(f"docs/figures/{options['--prefix']}_groups.png")
        fig.savefig(out, dpi=130, metadata={"Software": None})
        print(f"\nwrote {out}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print(f"(tables from {runs}, code at {commit.stdout.strip()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
