"""Optional neural-tangents cross-check: skipped where neural-tangents is not installed.

Runs in a subprocess, so that the compatibility patches never touch the test process's JAX.
"""

import importlib.util
import subprocess
import sys
import textwrap

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("neural_tangents") is None
        or importlib.util.find_spec("frozendict") is None,
        reason="neural-tangents not installed (pip install --no-deps neural-tangents==0.6.5 frozendict)",
    ),
]


@pytest.mark.e2e
def test_neural_tangents_analytic_ntk_matches_ours_and_wide_networks():
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        import ntkdyn
        assert "neural_tangents" not in __import__("sys").modules  # the core never imports it
        from ntkdyn.contrib.neural_tangents import nt_relu_ntk
        from ntkdyn.analytic import init_ntk_mlp, relu_ntk
        from ntkdyn.tangent import NTKMethod, empirical_ntk
        x = jax.random.normal(jax.random.PRNGKey(0), (6, 4))
        x2 = jax.random.normal(jax.random.PRNGKey(1), (3, 4))
        for depth, sw, sb in ((0, 1.0, 0.0), (1, 1.4, 0.2), (3, 1.2, 0.0)):
            theirs = nt_relu_ntk(x, x2, depth=depth, sigma_w=sw, sigma_b=sb)
            ours = relu_ntk(x, x2, depth=depth, sigma_w=sw, sigma_b=sb)
            np.testing.assert_allclose(theirs, ours, rtol=1e-10, atol=1e-12)
        exact = nt_relu_ntk(x, depth=2, sigma_w=1.4, sigma_b=0.2)
        errs = []
        for w in (16, 1024):
            f, p = init_ntk_mlp(jax.random.PRNGKey(3), 4, [w, w], sigma_w=1.4, sigma_b=0.2)
            emp = empirical_ntk(f, p, x, method=NTKMethod.NTK_VECTOR_PRODUCTS)
            errs.append(float(jnp.linalg.norm(emp - exact) / jnp.linalg.norm(exact)))
        assert errs[1] < errs[0] / 3 and errs[1] < 0.15, errs
        print("ok", errs)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")
