"""Shared test configuration: float64 on for the theory checks, tolerances by dtype in one place.

``NTKDYN_TEST_X64=0`` runs a session with float64 off, as a user gets by default: CI runs the
float32-path tests (``-m float32``) that way too.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", os.environ.get("NTKDYN_TEST_X64", "1") == "1")

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
