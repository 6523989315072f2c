"""How far the CelebA ResNet drifts from its linearization: the tangent kernel at the end of training
against the one at θ₀, on the journey's sample (docs/results/celeba_10k_journey.md).

Usage, from the repository root, after celeba_10k_journey.sh::

    python docs/results/scripts/celeba_10k_kernel_drift.py [RUNS_DIR] [RUN ...]

For each run with responses (seeds 0 and 1, every method; or the RUNs named, e.g. ``erm_s0``; runs of
``ntkdyn celeba`` and of ``ntkdyn groups`` alike) it rebuilds θ₀ and the stratified sample
exactly as the run did (same settings, same seed), restores the last checkpoint θ_T, and compares
the label-signed tangent Gram matrices K = YΦΦᵀY of the two (each with its batch statistics
measured on the sample, ntkdyn.freeze_batch_stats): the kernel distance
1 − ⟨K₀, K_T⟩_F / (‖K₀‖_F ‖K_T‖_F) (0: the same kernel up to scale; a network that stays linear
keeps it), the scale ‖K_T‖/‖K₀‖, and the overlap ‖U₀ᵀU_T‖²_F / k of the k leading directions.
Prints one Markdown table.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np


def drift(run: Path, method: str) -> dict[str, float]:
    import jax
    from ntkdyn.experiments import celeba, groups
    from ntkdyn.experiments.groups import initial_variables, load_data

    from ntkdyn.journey import sample_journey
    from ntkdyn.models.frozen import freeze_batch_stats
    from ntkdyn.models.resnet import RESNET_ARCHS
    from ntkdyn.tangent import empirical_ntk
    from ntkdyn.train.checkpoint import latest_checkpoint, restore_checkpoint
    from ntkdyn.train.dataparallel import init_train_state

    saved = json.loads((run / "config.json").read_text())
    config = celeba.Config if saved.get("loader", "celeba") == "celeba" else groups.Config
    fields = {f.name for f in dataclasses.fields(config)}
    cfg = config(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
                           if k in fields and k not in ("sd", "dro")})  # fmt: skip
    cfg = dataclasses.replace(
        cfg, sd=type(cfg.sd)(**saved["sd"]), dro=type(cfg.dro)(**saved["dro"])
    )
    data = load_data(cfg, 1)
    model = RESNET_ARCHS[cfg.arch](width=cfg.width)
    v0 = initial_variables(cfg, model, 0)
    train = data.splits["train"]
    j, _ = sample_journey(model, v0, train, data.group_names, k=cfg.responses, n=cfg.responses_n,
                          seed=cfg.seed, image_size=cfg.image_size, crop=cfg.crop)  # fmt: skip
    recipe = cfg.recipe(method)
    template = init_train_state(
        v0, recipe.make_optimizer(), cfg.objective(method, train.group_counts())
    )
    path = latest_checkpoint(run / "checkpoints" / method / "seed0")
    state, _ = restore_checkpoint(path, jax.device_get(template))
    signed = 2.0 * j.y - 1.0

    def gram(variables):
        apply_fn, params, _ = freeze_batch_stats(model, variables, j.x, batch_size=250)
        k = np.asarray(empirical_ntk(apply_fn, params, j.x, batch_size=250, cache_features=True))
        return signed[:, None] * k.astype(np.float64) * signed[None, :]

    k0 = gram(v0)
    kt = gram({"params": state.params, "batch_stats": state.batch_stats})
    top = cfg.responses
    u0 = np.linalg.eigh(k0)[1][:, ::-1][:, :top]
    ut = np.linalg.eigh(kt)[1][:, ::-1][:, :top]
    return {
        "distance": 1 - float(np.sum(k0 * kt) / (np.linalg.norm(k0) * np.linalg.norm(kt))),
        "scale": float(np.linalg.norm(kt) / np.linalg.norm(k0)),
        "overlap": float(np.linalg.norm(u0.T @ ut) ** 2 / top),
        "step": int(path.stem.split("_")[1]),
    }


def main() -> int:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/celeba10k_journey")
    names = sys.argv[2:]
    print(
        "| run | steps | kernel distance 1 − cos(K₀, K_T) | ‖K_T‖/‖K₀‖ | top-k overlap ‖U₀ᵀU_T‖²/k |"
    )
    print("|---|---:|---:|---:|---:|")
    for run in [runs / n for n in names] if names else sorted(runs.glob("*_s[01]")):
        if not (run / "results.json").exists():
            continue
        method = run.name.split("_")[0]
        d = drift(run, method)
        print(f"| {run.name} | {d['step']} | {d['distance']:.3f} | {d['scale']:.2f} | {d['overlap']:.3f} |",
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
