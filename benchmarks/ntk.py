"""Empirical NTK Gram of a dense ReLU MLP: ntkdyn (structured and generic paths) vs torch.func.

MLP 392 → 300 → 300 → 1 (p = 208,501, the Colored MNIST network of Pezeshki et al. 2021, Sec. 5),
float32, the same weights in both frameworks. For n = 500 and 1000 random inputs it times

* ``torch.func``: PyTorch's NTK recipe, ``vmap(jacrev(functional_call))`` then an einsum contraction
  of the per-parameter Jacobians (the Jacobian is computed once since x1 = x2);
* ntkdyn ``NTKMethod.STRUCTURED``: Θ = Σ_l (A_{l−1}A_{l−1}ᵀ + 1) ⊙ (Δ_lΔ_lᵀ), ≈ n²Σ(h_in + h_out)
  FLOPs instead of ≈ n²p;
* ntkdyn ``NTKMethod.JACOBIAN_CONTRACTION``: the generic path (any model), ``vmap(jacrev)`` and a
  leaf-wise contraction.

Each is warmed up (compilation excluded) and timed as the best of ``--repeats`` runs; the kernels
must agree (max relative difference, float32). Prints one JSON line per n, then one line for the
memory check: the structured path at n = 5,000 (peak resident memory of a fresh subprocess, target
< 4 GB).

Run: ``python benchmarks/ntk.py`` (needs the ``bench`` extra: ``pip install torch``).
Targets: structured ≥ 100× faster than torch.func, generic within 1.2× of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

DIMS = (392, 300, 300, 1)


def _weights(seed: int):
    rng = np.random.default_rng(seed)
    layers = []
    for a, b in zip(DIMS[:-1], DIMS[1:], strict=True):
        bound = np.sqrt(6 / (a + b))
        layers.append(
            (
                rng.uniform(-bound, bound, (a, b)).astype(np.float32),
                0.01 * rng.standard_normal(b).astype(np.float32),
            )
        )
    return layers


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: compilation / allocator
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _torch_ntk(layers, x):
    import torch
    from torch.func import functional_call, jacrev, vmap

    net = torch.nn.Sequential(
        torch.nn.Linear(DIMS[0], DIMS[1]),
        torch.nn.ReLU(),
        torch.nn.Linear(DIMS[1], DIMS[2]),
        torch.nn.ReLU(),
        torch.nn.Linear(DIMS[2], DIMS[3]),
    )
    with torch.no_grad():
        for lin, (W, b) in zip([net[0], net[2], net[4]], layers, strict=True):
            lin.weight.copy_(torch.from_numpy(W.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
    params = {k: v.detach() for k, v in net.named_parameters()}
    xt = torch.from_numpy(x)

    def fnet_single(p, xi):
        return functional_call(net, p, (xi.unsqueeze(0),)).squeeze(0)

    def ntk():
        with torch.no_grad():
            jac = vmap(jacrev(fnet_single), (None, 0))(params, xt)
            jac = [j.flatten(2) for j in jac.values()]
            return torch.stack(
                [torch.einsum("Naf,Mbf->NMab", j1, j2) for j1, j2 in zip(jac, jac, strict=True)]
            ).sum(0)

    return ntk


def _ours(layers, x, method):
    import jax
    import jax.numpy as jnp

    from ntkdyn import DenseApply, NTKMethod, empirical_ntk

    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in layers]
    xj = jnp.asarray(x)
    m = NTKMethod[method]
    return lambda: jax.block_until_ready(
        empirical_ntk(DenseApply(jax.nn.relu), params, xj, method=m)
    )


def compare(n: int, repeats: int, seed: int) -> dict:
    layers = _weights(seed)
    x = np.random.default_rng(seed + 1).standard_normal((n, DIMS[0])).astype(np.float32)
    torch_fn = _torch_ntk(layers, x)
    structured = _ours(layers, x, "STRUCTURED")
    generic = _ours(layers, x, "JACOBIAN_CONTRACTION")
    k_torch = torch_fn().numpy()[:, :, 0, 0].astype(np.float64)
    k_struct = np.asarray(structured(), np.float64)
    k_gen = np.asarray(generic(), np.float64)
    scale = np.abs(k_torch).max()
    t_torch = _best(torch_fn, repeats)
    t_struct = _best(structured, repeats)
    t_gen = _best(generic, repeats)
    return {
        "benchmark": "empirical_ntk",
        "n": n,
        "dims": list(DIMS),
        "p": int(sum(W.size + b.size for W, b in layers)),
        "torch_func_s": round(t_torch, 4),
        "ntkdyn_structured_s": round(t_struct, 5),
        "ntkdyn_generic_s": round(t_gen, 4),
        "speedup_structured_vs_torch": round(t_torch / t_struct, 1),
        "ratio_generic_over_torch": round(t_gen / t_torch, 3),
        "max_rel_diff_structured": float(np.abs(k_struct - k_torch).max() / scale),
        "max_rel_diff_generic": float(np.abs(k_gen - k_torch).max() / scale),
        "agree": bool(
            max(np.abs(k_struct - k_torch).max(), np.abs(k_gen - k_torch).max()) / scale < 1e-4
        ),
    }


def memory_child(n: int, seed: int) -> None:
    """Structured NTK at size n in this (fresh) process; prints time and peak resident memory."""
    layers = _weights(seed)
    x = np.random.default_rng(seed + 1).standard_normal((n, DIMS[0])).astype(np.float32)
    fn = _ours(layers, x, "STRUCTURED")
    t = time.perf_counter()
    k = fn()
    elapsed = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    print(
        json.dumps(
            {
                "benchmark": "empirical_ntk_memory",
                "n": n,
                "method": "structured",
                "p": int(sum(W.size + b.size for W, b in layers)),
                "seconds_incl_compile": round(elapsed, 3),
                "peak_rss_gb": round(peak_gb, 3),
                "under_4gb": peak_gb < 4.0,
                "finite": bool(np.isfinite(np.asarray(k)).all()),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--memory-n", type=int, default=5000, help="size of the memory check (0 skips it)"
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.seed)
        return 0
    for n in args.n:
        print(json.dumps(compare(n, args.repeats, args.seed)), flush=True)
    if args.memory_n:
        env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(args.memory_n),
                "--seed",
                str(args.seed),
            ],
            check=True,
            env=env,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
