"""ResNet-18 and ResNet-50 (He et al. 2016) in Flax Linen, torchvision's layout, one logit.

The architecture mirrors torchvision's ``resnet18`` / ``resnet50`` (v1.5: the stride of a bottleneck
sits on its 3 × 3 convolution) so that ImageNet weights import one-to-one
(:mod:`ntkdyn.models.pretrained`); module names follow torchvision's keys (``layer2_0/downsample_0``
↔ ``layer2.0.downsample.0``). Batch norm: torch's momentum 0.1 and ε = 1e-5; in train mode it
normalises with the batch statistics and updates the running averages (``batch_stats``), in eval
mode it uses the running averages and changes nothing.

Inputs are NHWC float arrays (ImageNet-normalised images); the output is (n, num_outputs), and
:func:`resnet_logit_fn` gives the pure one-logit view ``f(params, x) -> (n,)`` used by the theory
(Pezeshki et al. 2021, Sec. 5 trains a ResNet-50 with one logit on CelebA).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = [
    "ResNet",
    "resnet10",
    "resnet18",
    "resnet50",
    "RESNET_ARCHS",
    "init_resnet",
    "resnet_logit_fn",
]

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu").
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _BasicBlock(nn.Module):
    features: int
    stride: int
    downsample: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        y = conv(
            self.features, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)), name="conv1"
        )(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = norm(name="bn2")(y)
        if self.downsample:
            x = conv(
                self.features, (1, 1), strides=self.stride, padding="VALID", name="downsample_0"
            )(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(y + x)


class _Bottleneck(nn.Module):
    features: int
    stride: int
    downsample: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, train: bool):
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_conv_init)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
        )
        y = nn.relu(norm(name="bn1")(conv(self.features, (1, 1), padding="VALID", name="conv1")(x)))
        y = conv(
            self.features, (3, 3), strides=self.stride, padding=((1, 1), (1, 1)), name="conv2"
        )(y)
        y = nn.relu(norm(name="bn2")(y))
        y = norm(name="bn3")(conv(4 * self.features, (1, 1), padding="VALID", name="conv3")(y))
        if self.downsample:
            x = conv(
                4 * self.features, (1, 1), strides=self.stride, padding="VALID", name="downsample_0"
            )(x)
            x = norm(name="downsample_1")(x)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """A torchvision-layout ResNet: stem (7 × 7/2 conv, BN, ReLU, 3 × 3/2 max pool), four stages, mean pool, linear.

    Attributes:
        stage_sizes: blocks per stage ((2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50).
        bottleneck: bottleneck blocks (ResNet-50) instead of basic blocks (ResNet-18).
        width: channels of the first stage (64 in the standard nets; smaller for CPU smoke runs).
        num_outputs: outputs of the final layer (1: one logit; 1000 to hold an ImageNet head).
        dtype: computation dtype (``jnp.bfloat16`` on GPUs); parameters stay float32 and the output
            is cast to float32.
    """

    stage_sizes: Sequence[int]
    bottleneck: bool = False
    width: int = 64
    num_outputs: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "n h w 3"], train: bool = False) -> Float[Array, "n k"]:
        """Forward pass; ``train=True`` uses batch statistics (call with ``mutable=["batch_stats"]``)."""
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"x: expected NHWC images with 3 channels, got shape {x.shape}")
        x = x.astype(self.dtype)
        x = nn.Conv(
            self.width,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_conv_init,
            name="conv1",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name="bn1"
        )(x)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = _Bottleneck if self.bottleneck else _BasicBlock
        expansion = 4 if self.bottleneck else 1
        in_features = self.width
        for i, n_blocks in enumerate(self.stage_sizes):
            features = self.width * 2**i
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                downsample = j == 0 and (stride != 1 or in_features != features * expansion)
                x = block(features, stride, downsample, self.dtype, name=f"layer{i + 1}_{j}")(
                    x, train
                )
                in_features = features * expansion
        x = jnp.mean(x, axis=(1, 2))
        bound = 1.0 / jnp.sqrt(in_features)  # torch.nn.Linear's default init

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        x = nn.Dense(
            self.num_outputs, dtype=self.dtype, kernel_init=uniform, bias_init=uniform, name="fc"
        )(x)
        return x.astype(jnp.float32)


def resnet18(*, width: int = 64, num_outputs: int = 1, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-18 (basic blocks, stages 2-2-2-2), torchvision layout.

    Args:
        width: first-stage channels (64 standard).
        num_outputs: final-layer outputs (1: one logit).
        dtype: computation dtype.

    Returns:
        The (uninitialised) :class:`ResNet`.
    """
    return ResNet((2, 2, 2, 2), bottleneck=False, width=width, num_outputs=num_outputs, dtype=dtype)


def resnet50(*, width: int = 64, num_outputs: int = 1, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-50 (bottleneck blocks, stages 3-4-6-3, v1.5 strides), torchvision layout.

    Args:
        width: first-stage channels (64 standard).
        num_outputs: final-layer outputs (1: one logit).
        dtype: computation dtype.

    Returns:
        The (uninitialised) :class:`ResNet`.
    """
    return ResNet((3, 4, 6, 3), bottleneck=True, width=width, num_outputs=num_outputs, dtype=dtype)


def resnet10(*, width: int = 64, num_outputs: int = 1, dtype: Any = jnp.float32) -> ResNet:
    """ResNet-10 (basic blocks, stages 1-1-1-1): a small, fast-compiling member for smoke runs and tests.

    Args:
        width: first-stage channels.
        num_outputs: final-layer outputs (1: one logit).
        dtype: computation dtype.

    Returns:
        The (uninitialised) :class:`ResNet`.
    """
    return ResNet((1, 1, 1, 1), bottleneck=False, width=width, num_outputs=num_outputs, dtype=dtype)


#: Architecture name → factory.
RESNET_ARCHS: dict[str, Callable[..., ResNet]] = {
    "resnet10": resnet10,
    "resnet18": resnet18,
    "resnet50": resnet50,
}


def init_resnet(model: ResNet, key: Array, image_size: int = 224) -> dict[str, Any]:
    """Initialise ``{"params", "batch_stats"}`` for ``model`` on (1, image_size, image_size, 3) inputs.

    Weights are drawn with JAX's ``"rbg"`` generator seeded from ``key``'s bits: the dozens of
    initialisers of a ResNet compile several times faster with it than with threefry on a CPU
    (seconds instead of tens of seconds). Same key → same weights on the same backend.

    Args:
        model: the ResNet.
        key: PRNG key (raw ``PRNGKey`` array or typed key) for the weights.
        image_size: input side length (any size ≥ 32 works; only shapes are traced).

    Returns:
        The variables dict.
    """
    data = (
        jax.random.key_data(key)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        else jnp.asarray(key)
    )
    words = jnp.resize(data.ravel().astype(jnp.uint32), (4,))
    rbg = jax.random.wrap_key_data(words, impl="rbg")
    x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return dict(jax.jit(lambda k: model.init(k, x, train=False))(rbg))


def resnet_logit_fn(model: ResNet, batch_stats: Any) -> Callable[[Any, Array], Float[Array, " n"]]:
    """The pure eval-mode one-logit view ``f(params, x) -> (n,)`` with frozen batch statistics.

    This is the ``(apply_fn, params)`` pair the tangent-feature code consumes.

    Args:
        model: a ResNet with ``num_outputs == 1``.
        batch_stats: the running averages to normalise with.

    Returns:
        ``f(params, x)`` returning (n,) logits.

    Raises:
        ValueError: ``model.num_outputs != 1``.
    """
    if model.num_outputs != 1:
        raise ValueError(
            f"model: expected num_outputs=1 for a one-logit view, got {model.num_outputs}"
        )

    def f(params, x):
        return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)[:, 0]

    return f
