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

For training, :func:`environment_batches` turns stacked restarts into the flat model inputs (with a
held-out validation part and the examples whose outputs are recorded for the feature responses),
:func:`probe_batches` gives the four probe inputs of Fig. 4 in the same form, and
:func:`probe_examples` picks two test images of each colour for the probe figure.
:func:`load_images` loads the MNIST images of a run and describes them (the ``data`` record of its
results), and :func:`recorded_probe_examples` rebuilds a restart's probe examples from that record.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
    "environment_batches",
    "probe_batches",
    "probe_examples",
    "load_images",
    "recorded_probe_examples",
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


_channel_sum = grayscale  # the arguments below named ``grayscale`` shadow the function


def environment_batches(
    envs: ColoredMNIST,
    *,
    grayscale: bool = False,
    val_frac: float = 0.0,
    n_z: int = 0,
    dtype=jnp.float32,
) -> dict[str, Array]:
    """Flat model inputs of stacked restarts: the two training environments, test, validation.

    Args:
        envs: :class:`ColoredMNIST` with a leading restart axis R on every leaf (``jax.vmap`` of
            :func:`colored_mnist` over keys).
        grayscale: channel-summed (R, n, 196) inputs (:func:`grayscale`) instead of (R, n, 392).
        val_frac: fraction of each training environment held out (its last images) as
            training-domain validation data, in [0, 0.5].
        n_z: number of training examples (the first of each environment, alternating) on which
            outputs are recorded for the feature responses; 0 for none.
        dtype: input dtype.

    Returns:
        dict of arrays with a leading R axis: ``x1``, ``y1``, ``x2``, ``y2`` (training
        environments), ``xt``, ``yt`` (test), ``xv``, ``yv`` (validation, if ``val_frac`` > 0),
        ``xz``, ``yz`` (feature-response examples, if ``n_z`` > 0); labels in {0, 1}.

    Raises:
        ValueError: if ``val_frac`` is not in [0, 0.5], or ``n_z`` is negative or exceeds the
            training data.
    """
    if not 0.0 <= val_frac <= 0.5:
        raise ValueError(f"val_frac: expected a fraction in [0, 0.5], got {val_frac}")
    if n_z < 0:
        raise ValueError(f"n_z: expected a count >= 0, got {n_z}")

    def inputs(env):
        x = _channel_sum(env.images) if grayscale else env.flat
        return x.astype(dtype)

    out: dict[str, Array] = {}
    xs_v, ys_v = [], []
    for i, env in enumerate(envs.train, start=1):
        x, y = inputs(env), env.labels.astype(dtype)
        n = x.shape[1]
        n_val = int(round(val_frac * n))
        if n_val:
            xs_v.append(x[:, n - n_val :])
            ys_v.append(y[:, n - n_val :])
            x, y = x[:, : n - n_val], y[:, : n - n_val]
        out[f"x{i}"], out[f"y{i}"] = x, y
    out["xt"], out["yt"] = inputs(envs.test), envs.test.labels.astype(dtype)
    if xs_v:
        out["xv"], out["yv"] = jnp.concatenate(xs_v, axis=1), jnp.concatenate(ys_v, axis=1)
    if n_z:
        half = (n_z + 1) // 2
        per_env = min(out["x1"].shape[1], out["x2"].shape[1])
        if half > per_env:
            raise ValueError(
                f"n_z: {n_z} feature-response examples exceed the training data ({per_env} per "
                f"environment, so at most {2 * per_env}); record fewer"
            )
        R = out["x1"].shape[0]
        xz = jnp.stack([out["x1"][:, :half], out["x2"][:, :half]], axis=2).reshape(R, 2 * half, -1)
        yz = jnp.stack([out["y1"][:, :half], out["y2"][:, :half]], axis=2).reshape(R, 2 * half)
        out["xz"], out["yz"] = xz[:, :n_z], yz[:, :n_z]
    return out


def probe_batches(
    envs: ColoredMNIST, *, grayscale: bool = False, dtype=jnp.float32
) -> dict[str, Array]:
    """The four probe inputs (:func:`probe_inputs`) of stacked test environments, as model inputs.

    Args:
        envs: :class:`ColoredMNIST` with a leading restart axis R.
        grayscale: channel-summed (R, n, 196) inputs instead of (R, n, 392).
        dtype: input dtype.

    Returns:
        probe name → (R, n, 392) (or (R, n, 196)) inputs; labels are those of ``envs.test``.
    """
    raw = jax.vmap(probe_inputs)(envs.test)
    if grayscale:
        return {k: _channel_sum(v).astype(dtype) for k, v in raw.items()}
    return {k: v.reshape(*v.shape[:-3], 2 * 14 * 14).astype(dtype) for k, v in raw.items()}


def probe_examples(envs: ColoredMNIST, restart: int = 0) -> dict[str, np.ndarray] | None:
    """Two test images of each colour as the four probe inputs, for the probe figure.

    Args:
        envs: :class:`ColoredMNIST` with a leading restart axis.
        restart: which restart's test environment to draw from.

    Returns:
        probe name → (4, 2, 14, 14) images (colour 1, colour 1, colour 0, colour 0), or ``None``
        when the test environment has fewer than two images of a colour.
    """
    test = jax.tree_util.tree_map(lambda a: a[restart], envs.test)
    raw = probe_inputs(test)
    colors = np.asarray(test.colors)
    idx = list(np.flatnonzero(colors == 1)[:2]) + list(np.flatnonzero(colors == 0)[:2])
    return {k: np.asarray(v)[idx] for k, v in raw.items()} if len(idx) == 4 else None


def load_images(
    data_dir: str | None = None, *, source: str = "auto", max_images: int | None = None
) -> tuple[Array, Array, dict[str, Any]]:
    """The MNIST training images of a run, their digits and the record that describes them.

    Args:
        data_dir: directory with the MNIST files (:func:`ntkdyn.data.mnist.load_mnist`).
        source: ``auto``, ``files``, ``download`` or ``embedded`` (as ``load_mnist``).
        max_images: keep only the first N images (``None``: all).

    Returns:
        ``(images, digits, info)``; ``info`` holds ``source``, ``n_images``, ``origin``,
        ``description``, ``n_train`` and ``n_test`` (:func:`split_sizes`).

    Raises:
        FileNotFoundError, ValueError: from ``load_mnist``; ValueError from :func:`split_sizes`.
    """
    from ntkdyn.data.mnist import load_mnist

    mnist = load_mnist(data_dir, source=source)
    images, digits = mnist.images[:max_images], mnist.labels[:max_images]
    n = int(images.shape[0])
    n_train, n_test = split_sizes(n)
    described = mnist.describe() + ("" if n == mnist.n_images else f"; first {n} used")
    info = {
        "source": mnist.source,
        "n_images": n,
        "origin": mnist.origin,
        "description": described,
        "n_train": n_train,
        "n_test": n_test,
    }
    return images, digits, info


def recorded_probe_examples(
    info: dict[str, Any], key: PRNGKeyArray
) -> dict[str, np.ndarray] | None:
    """The probe figure's examples of one restart, rebuilt from a run's ``data`` record.

    Args:
        info: the run's data record (:func:`load_images`: ``source``, ``origin``, ``n_images``).
        key: the restart's data key (the one :func:`colored_mnist` was given).

    Returns:
        :func:`probe_examples` of that restart, or ``None`` when the images are no longer where
        the record says.
    """
    from ntkdyn.data.mnist import load_mnist

    try:
        if info.get("source") == "embedded":
            mnist = load_mnist(source="embedded")
        else:
            mnist = load_mnist(info.get("origin"), source="files")
    except (OSError, ValueError, TypeError):
        return None
    n = info.get("n_images", mnist.n_images)
    envs = jax.vmap(lambda k: colored_mnist(k, mnist.images[:n], mnist.labels[:n]))(key[None])
    return probe_examples(envs)
