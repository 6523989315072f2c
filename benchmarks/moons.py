"""Two-moons training throughput: ntkdyn (all seeds in one compiled call) vs a PyTorch per-seed loop.

Workload (Pezeshki et al. 2021, §3): 2 → 500 → 1 ReLU, 300 points, full-batch SGD (lr 1e-2,
momentum 0.9, weight decay 2e-4), mean softplus(−yŷ), 10 seeds × 10,000 epochs.

* ours: :func:`ntkdyn.experiments.moons.setting_data` and ``train_setting`` — the whole run (10 seeds × 10,000 epochs) timed
  end to end, initialisation and compilation included (after one untimed warm-up call of a
  different size that starts JAX). The CPU's cores are exposed as JAX devices
  (``XLA_FLAGS=--xla_force_host_platform_device_count``, ``--host-devices``, default all cores)
  and the seeds are split over them, each device training its share vmapped. The steady-state training
  time is t(2E) − t(E): the same program with twice the epochs, whose compilation, data and
  initialisation cost the same.
* peer: the plain PyTorch loop of the authors' code (``nn.Linear`` layers, ``optim.SGD`` with
  ``weight_decay``), one seed after another. It is timed on ``--peer-epochs`` epochs per seed for
  ``--peer-seeds`` seeds (after 20 warm-up epochs) and extrapolated linearly to 10 seeds × 10,000
  epochs — the per-epoch cost of an eager loop is constant, so this is fair; the output says so.

Prints one JSON line: seconds for both, the extrapolation, and the speed-up ratios (peer / ours,
compilation included, and peer / ours steady state).

    python benchmarks/moons.py [--epochs 10000] [--seeds 10] [--peer-epochs 1000] [--peer-seeds 2]
                               [--host-devices N] [--seed-layout vmap@all]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _ours(seeds: int, epochs: int, seed_layout: str, unroll: int) -> float:
    from ntkdyn.experiments.moons import SETTINGS, Config, setting_data, train_setting

    # every timed call compiles its initialisation too (train_setting builds it each call)
    config = Config(seeds=seeds, epochs=epochs, unroll=unroll, seed_layout=seed_layout)
    setting = SETTINGS["erm"]
    start = time.perf_counter()
    X, y = setting_data(setting, config)
    result = train_setting(setting, config, X, y, layout=config.layout(), records=10)
    seconds = time.perf_counter() - start
    assert result.history["loss"].shape[0] == seeds
    return seconds


def _peer(seeds: int, epochs: int) -> float:
    import torch
    import torch.nn.functional as F

    from ntkdyn.data.moons import two_moons

    total = 0.0
    for seed in range(seeds):
        torch.manual_seed(seed)
        X, y = two_moons(seed=seed)
        X, y = torch.from_numpy(X), torch.from_numpy(y)
        net = torch.nn.Sequential(torch.nn.Linear(2, 500), torch.nn.ReLU(), torch.nn.Linear(500, 1))
        opt = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9, weight_decay=2e-4)

        def epoch(net=net, opt=opt, X=X, y=y):
            loss = F.softplus(-net(X)[:, 0] * y).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(20):  # warm-up
            epoch()
        start = time.perf_counter()
        for _ in range(epochs):
            epoch()
        total += time.perf_counter() - start
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10000)
    parser.add_argument("--peer-seeds", type=int, default=2)
    parser.add_argument("--peer-epochs", type=int, default=1000)
    parser.add_argument(
        "--seed-layout",
        default="vmap@all",
        help="AXIS[:CHUNK][@DEVICES] of the seeds (vmap, vmap:2, map@1, vmap@all)",
    )
    parser.add_argument("--unroll", type=int, default=1)
    parser.add_argument(
        "--host-devices",
        type=int,
        default=os.cpu_count(),
        help="CPU cores exposed as JAX devices, the seeds split over them (1: one device)",
    )
    parser.add_argument(
        "--peer-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the peer (default: PyTorch's own choice)",
    )
    args = parser.parse_args()
    if args.host_devices > 1 and "jax" not in sys.modules:  # must precede JAX's start
        flag = f"--xla_force_host_platform_device_count={args.host_devices}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    if args.peer_threads is not None:
        import torch

        torch.set_num_threads(args.peer_threads)

    _ours(
        2, 10, args.seed_layout, args.unroll
    )  # warm-up: JAX start-up, not compilation of this run
    ours = _ours(args.seeds, args.epochs, args.seed_layout, args.unroll)
    ours_double = _ours(args.seeds, 2 * args.epochs, args.seed_layout, args.unroll)
    steady = max(ours_double - ours, 1e-9)
    peer_timed = _peer(args.peer_seeds, args.peer_epochs)
    scale = (args.seeds * args.epochs) / (args.peer_seeds * args.peer_epochs)
    peer = peer_timed * scale
    import jax
    import torch

    print(
        json.dumps(
            {
                "benchmark": "moons_training",
                "workload": f"{args.seeds} seeds x {args.epochs} epochs, 2-500-1 ReLU, 300 points, SGD momentum",
                "ours": f"ntkdyn train_fullbatch (seed_layout={args.seed_layout}, unroll={args.unroll}, "
                f"{jax.local_device_count()} devices), init and compile included",
                "ours_seconds": round(ours, 3),
                "ours_seed_epochs_per_s": round(args.seeds * args.epochs / ours, 1),
                "ours_double_epochs_seconds": round(ours_double, 3),
                "ours_steady_seconds": round(steady, 3),
                "ours_steady_seed_epochs_per_s": round(args.seeds * args.epochs / steady, 1),
                "peer": f"PyTorch {torch.__version__} per-seed eager loop ({torch.get_num_threads()} threads)",
                "peer_timed": f"{args.peer_seeds} seeds x {args.peer_epochs} epochs, extrapolated x{scale:g}",
                "peer_seconds_timed": round(peer_timed, 3),
                "peer_seconds": round(peer, 3),
                "peer_epochs_per_s": round(args.peer_seeds * args.peer_epochs / peer_timed, 1),
                "ratio": round(peer / ours, 2),
                "ratio_steady": round(peer / steady, 2),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            }
        )
    )


if __name__ == "__main__":
    main()
