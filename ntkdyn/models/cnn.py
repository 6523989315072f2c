"""A small convolutional network (Flax NNX) with the same pure ``(apply_fn, params)`` view as the MLP.

Used where the tangent features of a non-dense model are needed (e.g. MNIST digits, Pezeshki et al.
2021, Sec. 4): conv 3×3 → φ → conv 3×3 stride 2 → φ → … → global average pool → linear. Inputs are
NHWC images (n, H, W, C); a grayscale batch (n, H, W) gets a channel axis added.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, PRNGKeyArray

from ntkdyn.models.mlp import pure

__all__ = ["CNN", "init_cnn"]


class CNN(nnx.Module):
    """conv(3×3, stride 1) → φ → [conv(3×3, stride 2) → φ]… → mean over space → linear.

    Args:
        in_channels: channels of the input images (1 for grayscale).
        channels: output channels of each conv layer (the first has stride 1, the others stride 2).
        out_features: number of outputs (1 for a binary logit).
        rngs: :class:`flax.nnx.Rngs` with a ``params`` stream.
        activation: elementwise nonlinearity φ (default ReLU).
        kernel_init: conv and dense weight initializer (default LeCun normal).
        dtype: parameter dtype (default float32).

    Raises:
        ValueError: naming ``in_channels``, ``channels`` or ``out_features`` when out of range.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (16, 32),
        out_features: int = 1,
        *,
        rngs: nnx.Rngs,
        activation: Callable[[Array], Array] = jax.nn.relu,
        kernel_init: Callable[..., Array] | None = None,
        dtype: Any = jnp.float32,
    ):
        channels = [int(c) for c in channels]
        if int(in_channels) < 1:
            raise ValueError(f"in_channels: must be >= 1, got {in_channels}")
        if not channels or any(c < 1 for c in channels):
            raise ValueError(
                f"channels: need at least one conv layer with >= 1 channels, got {channels}"
            )
        if int(out_features) < 1:
            raise ValueError(f"out_features: must be >= 1, got {out_features}")
        kernel_init = nnx.initializers.lecun_normal() if kernel_init is None else kernel_init
        dims = [int(in_channels), *channels]
        self.in_channels = dims[0]
        self.activation = activation
        self.convs = nnx.List(
            [
                nnx.Conv(
                    a,
                    b,
                    kernel_size=(3, 3),
                    strides=(1, 1) if i == 0 else (2, 2),
                    padding="SAME",
                    kernel_init=kernel_init,
                    param_dtype=dtype,
                    rngs=rngs,
                )
                for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True))
            ]
        )
        self.head = nnx.Linear(
            dims[-1], int(out_features), kernel_init=kernel_init, param_dtype=dtype, rngs=rngs
        )

    def __call__(self, x: Float[Array, "n h w c"] | Float[Array, "n h w"]) -> Float[Array, "n out"]:
        """Forward pass on NHWC images (or (n, H, W) grayscale); returns (n, out_features)."""
        x = jnp.asarray(x)
        if x.ndim == 3 and self.in_channels == 1:
            x = x[..., None]
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"x: expected images shaped (n, H, W, {self.in_channels}) (NHWC), got shape {x.shape}"
            )
        h = x
        for conv in self.convs:
            h = self.activation(conv(h))
        return self.head(h.mean(axis=(1, 2)))


def init_cnn(
    key: PRNGKeyArray,
    in_channels: int,
    channels: Sequence[int] = (16, 32),
    out_features: int = 1,
    **kwargs,
) -> tuple[Callable, Any]:
    """Initialise a :class:`CNN` from a key and return its pure view ``(apply_fn, params)``.

    Args:
        key: PRNG key for the weights.
        in_channels, channels, out_features: the architecture (see :class:`CNN`).
        **kwargs: further :class:`CNN` keyword arguments.

    Returns:
        ``(apply_fn, params)`` as from :func:`ntkdyn.models.mlp.pure`.
    """
    return pure(CNN(in_channels, channels, out_features, rngs=nnx.Rngs(key), **kwargs))
