"""ODE grid: 10,000 two-feature CE systems to t = 100, jitted vmapped diffrax vs scipy's solve_ivp.

The systems are the paper's two-feature system (Pezeshki et al. 2021, Sec. 3): U(δ = 0.5),
s = (s₁, 2) with s₁ spread evenly over [2, 8], λ = 0.01, ż = S²Uᵀσ(−Uz) − λz from z = 0 to t = 100, both
solvers adaptive 5th-order Runge–Kutta at rtol 1e-8, atol 1e-10 (ours: diffrax Tsit5 with a PID
controller, all systems in one compiled ``vmap``; the peer: ``scipy.integrate.solve_ivp``, RK45, one
system at a time). Scipy is timed on ``--n-scipy`` systems spread over the same range and the time is
extrapolated linearly to ``--n`` (stated in the output). Float64.

Prints one JSON line: both times, the compile time, the ratio (steady state, and including
compilation), and the largest difference between the two solvers' end points.

    python benchmarks/ode_grid.py                 # 10,000 systems, scipy timed on 300
    python benchmarks/ode_grid.py --n 1000 --n-scipy 50
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from ntkdyn.dynamics import ce_field, integrate  # noqa: E402
from ntkdyn.systems import FeatureSystem, rotation_matrix  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="number of systems")
    parser.add_argument(
        "--n-scipy", type=int, default=300, help="systems timed with scipy (then extrapolated)"
    )
    parser.add_argument("--t1", type=float, default=100.0)
    parser.add_argument("--rtol", type=float, default=1e-8)
    parser.add_argument("--atol", type=float, default=1e-10)
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed repeats of our solver (best is reported)"
    )
    args = parser.parse_args()
    if args.n < 1 or not 1 <= args.n_scipy <= args.n:
        parser.error(f"need n >= 1 and 1 <= n-scipy <= n, got n={args.n}, n-scipy={args.n_scipy}")

    delta, s2, lam = 0.5, 2.0, 0.01
    s1 = np.linspace(2.0, 8.0, args.n)
    U = np.asarray(rotation_matrix(jnp.asarray(delta)))
    systems = FeatureSystem(
        jnp.broadcast_to(jnp.asarray(U), (args.n, 2, 2)),
        jnp.stack([jnp.asarray(s1), jnp.full(args.n, s2)], axis=1),
        jnp.full(args.n, lam),
    )
    z0 = jnp.zeros(2)

    @jax.jit
    def solve_all(batch):
        traj = jax.vmap(
            lambda sy: integrate(
                ce_field,
                sy,
                z0,
                t1=args.t1,
                num_points=2,
                rtol=args.rtol,
                atol=args.atol,
                throw=False,
            )
        )(batch)
        return traj.final, traj.success, traj.num_steps

    start = time.perf_counter()
    jax.block_until_ready(solve_all(systems))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        final, success, steps = jax.block_until_ready(solve_all(systems))
        times.append(time.perf_counter() - start)
    ours = min(times)
    compile_s = max(first - ours, 0.0)
    if not bool(jnp.all(success)):
        raise SystemExit(
            f"ode_grid: {int(np.sum(~np.asarray(success)))} systems failed to integrate"
        )

    idx = np.unique(np.linspace(0, args.n - 1, args.n_scipy).round().astype(int))

    def make_rhs(s):
        s_sq = s**2

        def rhs(t, z):
            return s_sq * (U.T @ (1.0 / (1.0 + np.exp(U @ z)))) - lam * z

        return rhs

    start = time.perf_counter()
    scipy_final = []
    for i in idx:
        sol = solve_ivp(
            make_rhs(np.array([s1[i], s2])),
            (0.0, args.t1),
            np.zeros(2),
            method="RK45",
            rtol=args.rtol,
            atol=args.atol,
            t_eval=[args.t1],
        )
        if sol.status != 0:
            raise SystemExit(f"ode_grid: scipy failed on system {i}: {sol.message}")
        scipy_final.append(sol.y[:, -1])
    scipy_measured = time.perf_counter() - start
    scipy_total = scipy_measured * args.n / len(idx)
    diff = float(np.max(np.abs(np.asarray(final)[idx] - np.array(scipy_final))))

    print(
        json.dumps(
            {
                "benchmark": "ode_grid",
                "systems": args.n,
                "t1": args.t1,
                "rtol": args.rtol,
                "atol": args.atol,
                "ours": "ntkdyn.integrate (diffrax Tsit5, PID), jit(vmap) over all systems",
                "peer": f"scipy {scipy.__version__} solve_ivp RK45, one system at a time",
                "ours_s": round(ours, 4),
                "ours_compile_s": round(compile_s, 3),
                "ours_mean_accepted_steps": float(np.mean(np.asarray(steps))),
                "scipy_s": round(scipy_total, 3),
                "scipy_extrapolated_from": int(len(idx)),
                "scipy_measured_s": round(scipy_measured, 3),
                "ratio": round(scipy_total / ours, 1),
                "ratio_including_compile": round(scipy_total / (ours + compile_s), 1),
                "max_abs_endpoint_diff": diff,
                "jax_backend": jax.default_backend(),
                "machine": f"{platform.machine()}, {jax.devices()[0].device_kind}",
            }
        )
    )


if __name__ == "__main__":
    main()
