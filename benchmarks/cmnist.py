"""Colored MNIST full-batch training throughput: ours vs plain PyTorch, vs the sgemm peak, vmapped vs sequential.

Three measurements in one run, on the Colored MNIST training set of the chosen MNIST data (the
embedded 5,000-image subset by default: 4,166 training images, the ≈4k × 392 → 300 → 300 → 1 step
of Pezeshki et al. 2021, Sec. 4):

1. steps/s of one ERM restart (MLP 392 → 300 → 300 → 1, mean BCE, Adam, full batch) with
   :func:`ntkdyn.train.fullbatch.train_fullbatch` versus a plain PyTorch loop of the same model,
   loss and optimizer on the same data;
2. the GFLOP/s this achieves (matrix-multiply FLOPs of the forward and backward pass) against the
   machine's float32 matrix-multiply peak, measured with numpy in the same run;
3. the throughput (restart-steps/s) of 10 restarts vmapped into each step versus the same 10
   restarts trained one after the other (``SeedAxis.MAP``), both in one compiled call; the vmapped
   restarts are timed all at once and in chunks (``seed_chunk``: a few restarts per step, the
   chunks one after another), which bounds the working set of a step. Each ratio is given against
   the sequential run with the same matrix-product library and against the fastest sequential
   run of all. One batched matrix multiply (the first layer's weight gradient of two restarts)
   against two plain ones shows whether batching the products themselves costs anything.

On a CPU, ours is timed twice: with the matrix products in Eigen (what ``ntkdyn cmnist`` uses
there, :func:`ntkdyn.train.fullbatch.eigen_matmul_options`) and with XLA's default library.

Compilation is excluded (a warm-up call per compiled program). The timed calls of all candidates
are interleaved over ``--rounds`` rounds and their medians reported, so that slow phases of a shared
machine do not favour one of them. Prints one JSON line per measurement.

    python benchmarks/cmnist.py                  # defaults
    python benchmarks/cmnist.py --steps 200 --restarts 10
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def sgemm_peak(size: int = 2048, repeats: int = 10) -> float:
    """Best float32 GFLOP/s of numpy ``a @ b`` on size × size matrices."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def step_flops(n: int, d_in: int, h: int) -> float:
    """Matrix-multiply FLOPs of one forward + backward pass of d_in → h → h → 1 on n examples.

    Forward 2n(d_in·h + h·h + h); backward: weight gradients of all layers (the same again) and input
    gradients of layers 2 and 3 (2n(h·h + h)); the first layer needs no input gradient.
    """
    fwd = 2 * n * (d_in * h + h * h + h)
    return 2 * fwd + 2 * n * (h * h + h)


def batched_vs_plain_matmul(
    batch: int = 2,
    n: int = 2083,
    d_in: int = 392,
    h: int = 300,
    repeats: int = 50,
    compiler_options: dict | None = None,
) -> dict:
    """Seconds of the first-layer weight gradient xᵀg for ``batch`` restarts: one batched matmul
    (what ``vmap`` makes of it) against ``batch`` plain ones in the same compiled call.

    Every product's whole output feeds the loop carry, so the compiler cannot drop any of them.
    """
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    x = jax.random.normal(k1, (batch, n, d_in))
    g = jax.random.normal(k2, (batch, n, h))
    fns = {
        "batched": lambda x, g: jnp.einsum("bni,bnh->bih", x, g),
        "plain": lambda x, g: jnp.stack([x[b].T @ g[b] for b in range(batch)]),
    }
    out = {}
    for name, fn in fns.items():

        def loop(x, g, fn=fn):
            def body(i, acc):
                return acc + jnp.sum(fn(x, g + acc * 1e-30)) * 0

            return jax.lax.fori_loop(0, repeats, body, jnp.float32(0))

        run = jax.jit(loop, compiler_options=compiler_options or None)
        run(x, g).block_until_ready()
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            run(x, g).block_until_ready()
            best = min(best, (time.perf_counter() - t) / repeats)
        out[name] = best
    return out


def _data(source: str, max_images: int | None):
    from ntkdyn.data.colored_mnist import colored_mnist
    from ntkdyn.data.mnist import load_mnist

    m = load_mnist(source=source)
    images, labels = m.images[:max_images], m.labels[:max_images]
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    envs = jax.vmap(lambda k: colored_mnist(k, images, labels))(keys)
    return envs, m


def compile_ours(
    cfg, batches, keys, steps: int, seed_axis=None, seed_chunk=None, compiler_options=None
):
    """A zero-argument callable that runs ``steps`` steps of ``train_fullbatch`` (compiled and warmed up).

    The call is wrapped in an outer ``jax.jit`` (with ``compiler_options``) so that repeated calls
    reuse the compiled program.
    """
    import optax
    from ntkdyn.experiments import colored_mnist as X

    from ntkdyn.train.fullbatch import train_fullbatch
    from ntkdyn.train.layout import SeedAxis, SeedLayout
    from ntkdyn.train.recipes import environment_loss

    seed_axis = SeedAxis.VMAP if seed_axis is None else seed_axis
    apply_fn, params = X.init_params(cfg, keys)
    # ERM's hyperparameters travel with the data, as in `ntkdyn cmnist` (l2 = 0: plain ERM)
    batches = {**batches, "hp": {"l2": jnp.zeros(keys.shape[0], batches["x1"].dtype)}}
    loss_fn = environment_loss(cfg, apply_fn)

    def train(params, batches, keys):
        return train_fullbatch(
            loss_fn,
            optax.adam(cfg.lr),
            params,
            batches,
            keys=keys,
            num_steps=steps,
            batch_axis=0,
            layout=SeedLayout(seed_axis, seed_chunk if seed_axis is SeedAxis.VMAP else None),
        ).state.params

    train = jax.jit(train, compiler_options=compiler_options or None)
    jax.block_until_ready(train(params, batches, keys))
    return lambda: jax.block_until_ready(train(params, batches, keys))


def interleaved(runs: dict, rounds: int) -> dict:
    """Median seconds of each callable over ``rounds`` rounds, each round calling every one once in turn.

    Interleaving spreads slow phases of a shared machine over all candidates instead of over one.
    """
    times: dict = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def time_torch(x: np.ndarray, y: np.ndarray, h: int, lr: float, steps: int) -> float:
    """Seconds per step of a plain PyTorch full-batch loop (same MLP, BCE-with-logits, Adam)."""
    import torch

    torch.manual_seed(0)
    xt, yt = (
        torch.from_numpy(np.ascontiguousarray(x)),
        torch.from_numpy(np.ascontiguousarray(y))[:, None],
    )
    lins = [torch.nn.Linear(x.shape[1], h), torch.nn.Linear(h, h), torch.nn.Linear(h, 1)]
    for lin in lins:
        torch.nn.init.xavier_uniform_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    model = torch.nn.Sequential(lins[0], torch.nn.ReLU(), lins[1], torch.nn.ReLU(), lins[2])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lossf = torch.nn.BCEWithLogitsLoss()

    def step():
        opt.zero_grad()
        loss = lossf(model(xt), yt)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps (single restart)")
    parser.add_argument(
        "--restart-steps", type=int, default=30, help="timed steps of the 10-restart comparison"
    )
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds (medians are reported)"
    )
    parser.add_argument(
        "--data-source", default="embedded", choices=["auto", "files", "download", "embedded"]
    )
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument(
        "--seed-chunk",
        type=int,
        nargs="*",
        default=[2, 5],
        help="also time the vmapped restarts in chunks of these sizes (seed_chunk)",
    )
    args = parser.parse_args(argv)

    from ntkdyn.experiments import colored_mnist as X

    from ntkdyn.data.colored_mnist import environment_batches
    from ntkdyn.train.layout import SeedAxis, eigen_matmul_options

    cfg = X.METHODS["erm"]
    envs, mnist = _data(args.data_source, args.max_images)
    batches = environment_batches(envs)
    keys = jax.random.split(jax.random.PRNGKey(1), 1)
    n = batches["x1"].shape[1] + batches["x2"].shape[1]
    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.machine()}"
    data = f"{mnist.source}, {n} training images"
    # The matrix-product libraries compared: what `ntkdyn cmnist` uses by default (Eigen on a CPU)
    # and XLA's own default. On an accelerator both are XLA's default, so only one is timed.
    libs = {"eigen": eigen_matmul_options(), "xla_default": {}}
    if not libs["eigen"]:
        libs = {"xla_default": {}}

    peak = sgemm_peak()
    flops = step_flops(n, 392, cfg.hidden)
    single = interleaved(
        {
            lib: compile_ours(cfg, batches, keys, args.steps, compiler_options=o)
            for lib, o in libs.items()
        },
        args.rounds,
    )
    single = {lib: seconds / args.steps for lib, seconds in single.items()}
    torch_s = None
    if not args.skip_torch:
        x = np.concatenate([np.asarray(batches["x1"][0]), np.asarray(batches["x2"][0])])
        y = np.concatenate([np.asarray(batches["y1"][0]), np.asarray(batches["y2"][0])]).astype(
            np.float32
        )
        torch_s = time_torch(x, y, cfg.hidden, cfg.lr, args.steps)
    for lib, ours in single.items():
        line = {
            "benchmark": "cmnist_fullbatch_step",
            "device": device,
            "data": data,
            "matmul": lib,
            "ours_steps_per_s": 1 / ours,
            "gflop_per_step": flops / 1e9,
            "ours_gflops": flops / ours / 1e9,
            "numpy_sgemm_peak_gflops": peak,
            "fraction_of_peak": flops / ours / 1e9 / peak,
        }
        if torch_s is not None:
            line.update({"torch_steps_per_s": 1 / torch_s, "ratio_ours_over_torch": torch_s / ours})
        print(json.dumps(line), flush=True)

    for lib, o in libs.items():
        mm = batched_vs_plain_matmul(compiler_options=o)
        print(
            json.dumps(
                {
                    "benchmark": "cmnist_batched_vs_plain_matmul",
                    "device": device,
                    "matmul": lib,
                    "shape": "2 x (2083x392)^T (2083x300)",
                    "batched_s": mm["batched"],
                    "plain_s": mm["plain"],
                    "ratio_batched_over_plain_time": mm["batched"] / mm["plain"],
                }
            ),
            flush=True,
        )

    R = args.restarts
    rkeys = jax.random.split(jax.random.PRNGKey(2), R)
    rb = jax.tree_util.tree_map(lambda a: jnp.repeat(a, R, axis=0), batches)
    chunks = [None, *[c for c in args.seed_chunk if c < R]]
    runs = {}
    for lib, o in libs.items():
        runs[(lib, "sequential")] = compile_ours(
            cfg, rb, rkeys, args.restart_steps, SeedAxis.MAP, compiler_options=o
        )
        for chunk in chunks:
            runs[(lib, chunk or R)] = compile_ours(
                cfg, rb, rkeys, args.restart_steps, SeedAxis.VMAP, chunk, o
            )
    med = interleaved(runs, args.rounds)
    rate = {k: R * args.restart_steps / v for k, v in med.items()}
    best_seq = max(rate[(lib, "sequential")] for lib in libs)
    for lib in libs:
        for chunk in chunks:
            vm, sq = rate[(lib, chunk or R)], rate[(lib, "sequential")]
            print(
                json.dumps(
                    {
                        "benchmark": "cmnist_restarts_vmapped_vs_sequential",
                        "device": device,
                        "data": data,
                        "matmul": lib,
                        "restarts": R,
                        "seed_chunk": chunk or R,
                        "rounds": args.rounds,
                        "vmapped_restart_steps_per_s": vm,
                        "sequential_restart_steps_per_s": sq,
                        "ratio_vmapped_over_sequential": vm / sq,
                        "best_sequential_restart_steps_per_s": best_seq,
                        "ratio_vmapped_over_best_sequential": vm / best_seq,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
