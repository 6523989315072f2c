"""XLA compiler options by backend: what ntkdyn passes to ``jax.jit(..., compiler_options=...)``."""

from __future__ import annotations

import functools

import jax
import numpy as np

__all__ = ["eigen_matmul_options"]


#: The XLA option that selects which CPU operations go to the YNNPACK library; empty: none of them.
_YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@functools.cache
def _cpu_option_accepted(name: str, value: str) -> bool:
    """Whether this jaxlib's CPU compiler accepts the option (compiles a 2 × 2 product with it)."""
    try:
        a = np.ones((2, 2), np.float32)
        jax.jit(lambda a: a @ a, compiler_options={name: value}).lower(a).compile()
    except Exception:  # noqa: BLE001 - an unknown or malformed option: the compiler's exception type varies
        return False
    return True


def eigen_matmul_options(backend: str | None = None) -> dict[str, str]:
    """XLA compiler options that compute matrix products with Eigen on a CPU; ``{}`` elsewhere.

    Recent XLA CPU backends hand matrix products (and fused elementwise work) to the YNNPACK
    library. For the large full-batch steps of Colored MNIST on a CPU, Eigen's products are faster,
    one restart at a time and more so with several restarts batched into each step, whose working
    set no longer fits in cache (``benchmarks/cmnist.py`` measures both). Pass the result as
    ``compiler_options`` to :func:`ntkdyn.train.fullbatch.train_fullbatch` or ``jax.jit``; the
    matrix-free spectrum (:func:`ntkdyn.tangent.signed_tangent_operator`) compiles its products with
    it (``benchmarks/spectrum.py``).

    Args:
        backend: the backend the computation runs on (default: ``jax.default_backend()``).

    Returns:
        ``{"xla_cpu_experimental_ynn_fusion_type": ""}`` on a CPU whose compiler accepts it,
        otherwise ``{}`` (GPUs and TPUs, or a jaxlib without the option: its default products).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu" or not _cpu_option_accepted(_YNN_FUSION_OPTION, ""):
        return {}
    return {_YNN_FUSION_OPTION: ""}
