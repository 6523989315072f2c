"""Models and inputs shared by the tests of ntkdyn.tangent (tests/test_tangent_*.py)."""

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from ntkdyn.models.mlp import init_mlp

F64 = dict(rtol=1e-10, atol=1e-10)


def mlp(key, hidden=(7, 5), out=1, **kw):
    """A float64 ReLU MLP 3 → hidden → out as ``(apply_fn, params)`` (a DenseApply)."""
    return init_mlp(key, 3, list(hidden), out, dtype=jnp.float64, **kw)


def custom(key):
    """A model with a custom params PyTree: nested dict + tuple, tanh, a skip connection."""
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "enc": (jax.random.normal(k1, (3, 6)), jnp.zeros(6) + 0.1),
        "head": {"w": jax.random.normal(k2, (6,)), "skip": jax.random.normal(k3, (3,))},
    }

    def apply_fn(p, x):
        W, b = p["enc"]
        return jnp.tanh(x @ W + b) @ p["head"]["w"] + x @ p["head"]["skip"]

    return apply_fn, params


_REF_CACHE = {}


def reference_phi(apply_fn, params, x, cache_key=None):
    """Slow reference: one jax.grad per example, raveled (cached per model across parametrisations)."""
    if cache_key is not None:
        if cache_key not in _REF_CACHE:
            _REF_CACHE[cache_key] = reference_phi(apply_fn, params, x)
        return _REF_CACHE[cache_key]
    grad = jax.jit(jax.grad(lambda p, xi: apply_fn(p, xi[None]).sum()))
    return jnp.stack([ravel_pytree(grad(params, xi))[0] for xi in x])


def inputs():
    """Two fixed batches of 3-D inputs, (9, 3) and (4, 3)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    return jax.random.normal(k1, (9, 3)), jax.random.normal(k2, (4, 3))
