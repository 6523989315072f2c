"""Colored MNIST environments (Arjovsky et al. 2019, IRM; used in Pezeshki et al. 2021, Sec. 4, Table 1).

The construction, per restart (one PRNG key):

1. The first ⌊5N/6⌋ MNIST training images (50,000 of 60,000) are shuffled; the rest (10,000) are the
   test images, in their original order. With fewer than 60,000 images the same 5/6 : 1/6
   proportions are kept (the 5,000-image subset gives 4,166 training and 834 test images).
2. Training environments: the even and the odd indices of the shuffled training images, with
   colour-flip probabilities e = 0.2 and 0.1; the test environment has e = 0.9.
3. Each image is subsampled 28 × 28 → 14 × 14 (every other pixel); the binary label is
   (digit < 5) flipped with probability 0.25; the colour is the label flipped with probability e;
   the image goes to two channels with the channel of the other colour zeroed (colour c keeps
   channel c); intensities are divided by 255.

So colour predicts the training label with 85 % accuracy and the digit shape with 75 %; at test time the
colour correlation is reversed. The grayscale view (the two channels summed) removes the colour.
Everything is a pure JAX function of the key, so restarts vmap.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

__all__ = [
    "Environment",
    "ColoredMNIST",
    "TRAIN_ENV_E",
    "TEST_ENV_E",
    "LABEL_NOISE",
    "split_sizes",
    "make_environment",
    "colored_mnist",
    "grayscale",
    "probe_inputs",
]

#: Colour-flip probabilities of the two training environments and of the test environment.
TRAIN_ENV_E: tuple[float, float] = (0.2, 0.1)
TEST_ENV_E: float = 0.9
#: Probability that the binary label disagrees with (digit < 5).
LABEL_NOISE: float = 0.25


class Environment(NamedTuple):
    """One Colored MNIST environment (a PyTree; a leading restart axis when vmapped).

    Attributes:
        images: (n, 2, 14, 14) float intensities in [0, 1]; channel ``c`` is lit for colour ``c``.
        labels: (n,) noisy binary labels in {0, 1} (float).
        colors: (n,) colours in {0, 1} (float).
        digits: (n,) the original digits 0–9.
    """

    images: Float[Array, "n 2 14 14"]
    labels: Float[Array, " n"]
    colors: Float[Array, " n"]
    digits: Int[Array, " n"]

    @property
    def flat(self) -> Float[Array, "n 392"]:
        """The images flattened to (…, n, 2·14·14), the MLP input."""
        return self.images.reshape(*self.images.shape[:-3], 2 * 14 * 14)


class ColoredMNIST(NamedTuple):
    """The three environments of one restart: two for training, one for testing.

    Attributes:
        train: (environment with e = 0.2, environment with e = 0.1).
        test: the test environment (e = 0.9).
    """

    train: tuple[Environment, Environment]
    test: Environment


def split_sizes(n_images: int) -> tuple[int, int]:
    """(n_train, n_test) = (⌊5N/6⌋, N − ⌊5N/6⌋): 50,000 / 10,000 for full MNIST.

    Args:
        n_images: number N of MNIST training images available.

    Returns:
        (n_train, n_test).

    Raises:
        ValueError: if fewer than 12 images (each environment needs at least two).
    """
    if n_images < 12:
        raise ValueError(
            f"n_images: need at least 12 images to build three environments, got {n_images}"
        )
    n_train = (5 * n_images) // 6
    return n_train, n_images - n_train


def make_environment(
    key: PRNGKeyArray,
    images: Int[ArrayLike, "n 28 28"],
    digits: Int[ArrayLike, " n"],
    e: float,
    *,
    label_noise: float = LABEL_NOISE,
) -> Environment:
    """One environment: subsample, noisy binary label, colour flipped w.p. ``e``, two channels, /255.

    label = (digit < 5) XOR Bernoulli(label_noise); colour = label XOR Bernoulli(e); channel
    1 − colour zeroed.

    Args:
        key: PRNG key (label noise and colour flips).
        images: (n, 28, 28) uint8 MNIST images.
        digits: (n,) digits 0–9.
        e: colour-flip probability in [0, 1].
        label_noise: label-flip probability in [0, 1].

    Returns:
        The :class:`Environment`.

    Raises:
        ValueError: on shapes other than (n, 28, 28)/(n,) or probabilities outside [0, 1].
    """
    images = jnp.asarray(images)
    digits = jnp.asarray(digits)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or digits.shape != images.shape[:1]:
        raise ValueError(
            f"images, digits: expected shapes (n, 28, 28) and (n,), got {images.shape} and {digits.shape}"
        )
    for name, p in (("e", e), ("label_noise", label_noise)):
        if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:
            raise ValueError(f"{name}: a probability in [0, 1], got {p}")
    k_label, k_color = jax.random.split(key)
    n = digits.shape[0]
    dtype = jnp.result_type(float)
    labels = (digits < 5) ^ jax.random.bernoulli(k_label, label_noise, (n,))
    colors = labels ^ jax.random.bernoulli(k_color, e, (n,))
    small = images[:, ::2, ::2].astype(dtype) / 255.0
    lit = jnp.stack([~colors, colors], axis=1).astype(dtype)  # (n, 2): channel c lit for colour c
    return Environment(
        small[:, None] * lit[:, :, None, None],
        labels.astype(dtype),
        colors.astype(dtype),
        digits.astype(jnp.int32),
    )


def colored_mnist(
    key: PRNGKeyArray,
    images: Int[ArrayLike, "N 28 28"],
    digits: Int[ArrayLike, " N"],
    *,
    train_e: tuple[float, float] = TRAIN_ENV_E,
    test_e: float = TEST_ENV_E,
    label_noise: float = LABEL_NOISE,
) -> ColoredMNIST:
    """The IRM Colored MNIST environments of one restart (module docstring for the construction).

    Args:
        key: PRNG key of the restart (shuffle, label noise, colours); vmap over keys for restarts.
        images: (N, 28, 28) uint8 MNIST training images in their file order.
        digits: (N,) digits.
        train_e: colour-flip probabilities of the two training environments.
        test_e: colour-flip probability of the test environment.
        label_noise: label-flip probability.

    Returns:
        :class:`ColoredMNIST` with environments of ⌈n_train/2⌉, ⌊n_train/2⌋ and n_test images.

    Raises:
        ValueError: on bad shapes, probabilities, or fewer than 12 images.
    """
    images = jnp.asarray(images)
    digits = jnp.asarray(digits)
    if images.ndim != 3 or digits.shape != images.shape[:1]:
        raise ValueError(
            f"images, digits: expected shapes (N, 28, 28) and (N,), got {images.shape} and {digits.shape}"
        )
    n_train, _ = split_sizes(images.shape[0])
    k_perm, k1, k2, k3 = jax.random.split(key, 4)
    perm = jax.random.permutation(k_perm, n_train)
    tr_img, tr_dig = images[:n_train][perm], digits[:n_train][perm]
    env1 = make_environment(k1, tr_img[::2], tr_dig[::2], train_e[0], label_noise=label_noise)
    env2 = make_environment(k2, tr_img[1::2], tr_dig[1::2], train_e[1], label_noise=label_noise)
    test = make_environment(k3, images[n_train:], digits[n_train:], test_e, label_noise=label_noise)
    return ColoredMNIST((env1, env2), test)


def grayscale(images: Float[Array, "*b n 2 14 14"]) -> Float[Array, "*b n 196"]:
    """Colour removed: the two channels summed and flattened (the grayscale oracle's input).

    Args:
        images: (..., n, 2, 14, 14) two-channel Colored MNIST images.

    Returns:
        (..., n, 196) the channel sums, i.e. the subsampled digit intensities.

    Raises:
        ValueError: if the trailing shape is not (2, 14, 14).
    """
    if images.ndim < 4 or images.shape[-3:] != (2, 14, 14):
        raise ValueError(f"images: expected shape (..., n, 2, 14, 14), got {images.shape}")
    return images.sum(axis=-3).reshape(*images.shape[:-3], 14 * 14)


def probe_inputs(env: Environment) -> dict[str, Float[Array, "n 2 14 14"]]:
    """The four probe inputs of Pezeshki et al. 2021, Fig. 4, built from an environment.

    * ``digit_gray``: the digit with the colour removed (each channel at half intensity, so the
      channel sum is the digit);
    * ``digit_color``: the environment's coloured digit;
    * ``blank_gray``: every pixel the mean intensity of all images, at half intensity in both channels;
    * ``blank_color``: that blank image in the environment's colour (only the colour carries
      information).

    Labels and colours are the environment's.

    Args:
        env: an :class:`Environment` (usually the test environment).

    Returns:
        Mapping from the four names to (n, 2, 14, 14) inputs.
    """
    digit = env.images.sum(axis=-3)[..., None, :, :]  # (..., n, 1, 14, 14)
    blank = jnp.broadcast_to(jnp.mean(digit, axis=(-4, -3, -2, -1), keepdims=True), digit.shape)
    lit = jnp.stack([1.0 - env.colors, env.colors], axis=-1)[..., None, None]  # (..., n, 2, 1, 1)
    return {
        "digit_gray": digit * jnp.full_like(lit, 0.5),
        "digit_color": env.images,
        "blank_gray": blank * jnp.full_like(lit, 0.5),
        "blank_color": blank * lit,
    }
