"""Shared test configuration: float64 on for the theory checks, tolerances by dtype in one place."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)

# Tolerances by dtype, the one place tests take them from.
TOL = {
    np.dtype("float64"): dict(rtol=1e-9, atol=1e-10),
    np.dtype("float32"): dict(rtol=2e-4, atol=2e-5),
}


def tol(dtype) -> dict:
    """``rtol``/``atol`` keyword arguments for comparisons in ``dtype``."""
    return TOL[np.dtype(dtype)]


@pytest.fixture
def key():
    return jax.random.PRNGKey(0)
