"""The dataset registry: a name, a user's ``.npz`` or an image folder → one :class:`Dataset`.

Registered names (:data:`DATASETS`): ``moons`` (the paper's two-moons toy), ``mnist`` (a random
MNIST sample, digits < 5 vs ≥ 5), ``cmnist`` (the two Colored MNIST training environments, pooled),
``celeba`` (the CelebA release in ``--data-dir``) and ``folder`` (an image folder with
``metadata.csv`` in ``--data-dir``). A user's data joins on equal terms: a path to an ``.npz``
(:func:`ntkdyn.data.npz.load_npz`) or to a folder with ``metadata.csv``
(:func:`ntkdyn.data.metadata.load_metadata_folder`), or a loader added with
:func:`register_dataset`. Every loader is called ``loader(split=, n=, seed=, data_dir=,
image_size=, crop=, **options)``.

Example::

    >>> from ntkdyn.data.registry import load_dataset
    >>> data = load_dataset("moons", n=300, seed=0)
    >>> data.x.shape, int(data.y.sum())
    ((300, 2), 150)

Image datasets are decoded at ``image_size`` (default 64) with :mod:`ntkdyn.data.images`; a subset
(``n`` below the split's size) is stratified by group and keeps every example of the rarest group
(:func:`ntkdyn.data.dataset.stratified_sample`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ntkdyn.data.dataset import Dataset, stratified_sample
from ntkdyn.data.images import GroupDataset, ImageSplit, decode_split, normalize_images
from ntkdyn.errors import InputError

__all__ = [
    "DATASETS",
    "DEFAULT_IMAGE_SIZE",
    "register_dataset",
    "load_dataset",
    "cmnist_pool",
    "group_dataset_to_dataset",
]

#: Side of decoded images when ``image_size`` is not given (celeba and image folders).
DEFAULT_IMAGE_SIZE = 64
#: Examples of ``moons`` when ``n`` is not given (the paper's 300).
_MOONS_N = 300
_USER_FORMS = (
    "a path to an .npz file (arrays x, y; optional groups, group_names, split), or a folder with "
    "metadata.csv (columns filename, split, y, a)"
)


def _train_only(name: str, split: str) -> None:
    if split != "train":
        raise InputError(f"--split: {name} has only training data here, got {split!r}")


def _moons(
    *,
    split: str = "train",
    n: int | None = None,
    seed: int,
    data_dir=None,
    delta: float = 0.1,
    noise: float = 0.1,
    **_: Any,
) -> Dataset:
    """Two moons (Pezeshki et al. 2021, Sec. 2): :func:`ntkdyn.data.moons.two_moons`, label 1 ↔ +1."""
    from ntkdyn.data.moons import two_moons

    _train_only("moons", split)
    if data_dir is not None:
        raise InputError(
            f"--data-dir: the two moons are generated, not read; drop --data-dir (got {data_dir})"
        )
    n = _MOONS_N if n is None else n
    x, y = two_moons(n=n, noise=noise, delta=delta, seed=seed)
    return Dataset(
        name="moons",
        x=np.asarray(x, np.float32),
        y=(np.asarray(y) > 0).astype(np.int32),
        source=f"{n} two-moons points (gap {delta}, noise {noise}, seed {seed})",
    )


def _load_mnist(data_dir):
    from ntkdyn.data.mnist import load_mnist

    if data_dir is None:
        return load_mnist(source="embedded")
    return load_mnist(data_dir, source="files")


def _mnist(
    *, split: str = "train", n: int | None = None, seed: int, data_dir=None, **_: Any
) -> Dataset:
    """A random MNIST sample, pixels / 255, label 1 for digits < 5 (the spectrum command's mnist)."""
    _train_only("mnist", split)
    data = _load_mnist(data_dir)
    total = data.n_images
    n = total if n is None else n
    if n > total:
        raise InputError(
            f"--n: the {data.source} MNIST has {total} images, got n={n}; "
            "lower --n or pass --data-dir with the full MNIST"
        )
    idx = np.random.default_rng(seed).choice(total, size=n, replace=False)
    x = data.images[idx].astype(np.float32) / 255.0
    return Dataset(
        name="mnist",
        x=x,
        y=(data.labels[idx] < 5).astype(np.int32),
        source=f"{n} of the {total} MNIST training images ({data.source}: {data.origin}), "
        f"drawn with seed {seed}; label 1 for digits < 5",
    )


def cmnist_pool(seed: int, data_dir: str | os.PathLike | None = None):
    """The two Colored MNIST training environments of one restart, pooled (SPEC §4).

    :func:`ntkdyn.data.colored_mnist.colored_mnist` with key ``fold_in(PRNGKey(seed), 0)``:
    the first 5/6 of the MNIST training images shuffled, even positions → environment 1
    (colour flip 0.2), odd → environment 2 (0.1), label noise 0.25, 2 × 14 × 14 inputs /255.
    The pool interleaves the two again (the shuffled order), so its first n examples hold
    ⌈n/2⌉ of environment 1 and ⌊n/2⌋ of environment 2.

    Args:
        seed: restart seed.
        data_dir: directory of the MNIST IDX files (``None``: the embedded 5k subset).

    Returns:
        ``(x, y, info)``: x (N, 392) float32, y (N,) int32 in {0, 1}, and a dict with the MNIST
        ``source``/``origin`` and the environment of each example (``env``, 0 or 1).

    Raises:
        FileNotFoundError: ``data_dir`` lacks the MNIST files.
    """
    import jax

    from ntkdyn.data.colored_mnist import colored_mnist

    data = _load_mnist(data_dir)
    envs = colored_mnist(jax.random.fold_in(jax.random.PRNGKey(seed), 0), data.images, data.labels)
    e1, e2 = envs.train
    m = min(e1.labels.shape[0], e2.labels.shape[0])
    parts = []
    for a, b in ((e1.flat, e2.flat), (e1.labels, e2.labels)):
        a, b = np.asarray(a), np.asarray(b)
        mixed = np.stack([a[:m], b[:m]], axis=1).reshape((2 * m,) + a.shape[1:])
        parts.append(np.concatenate([mixed, a[m:], b[m:]]))
    x, labels = parts
    env = np.concatenate(
        [
            np.tile([0, 1], m),
            np.zeros(e1.labels.shape[0] - m, int),
            np.ones(e2.labels.shape[0] - m, int),
        ]
    )
    info = {"source": data.source, "origin": data.origin, "env": env}
    return x.astype(np.float32), (labels > 0.5).astype(np.int32), info


def _cmnist(
    *, split: str = "train", n: int | None = None, seed: int, data_dir=None, **_: Any
) -> Dataset:
    """The first n examples of the pooled Colored MNIST training environments (:func:`cmnist_pool`)."""
    _train_only("cmnist", split)
    x, y, info = cmnist_pool(seed, data_dir)
    total = x.shape[0]
    n = total if n is None else n
    if n > total:
        raise InputError(
            f"--n: the Colored MNIST training environments hold {total} images here, got "
            f"n={n}; lower --n or pass --data-dir with the full MNIST (50,000 training images)"
        )
    return Dataset(
        name="cmnist",
        x=x[:n],
        y=y[:n],
        environments=np.asarray(info["env"][:n], np.int32),
        source=f"the first {n} of the {total} pooled Colored MNIST training examples (two "
        f"environments, restart seed {seed}; MNIST {info['source']}: {info['origin']})",
    )


def group_dataset_to_dataset(
    data: GroupDataset,
    *,
    name: str,
    split: str = "train",
    n: int | None = None,
    seed: int,
    image_size: int | None = None,
    crop: int | None = None,
    where: str = "",
) -> Dataset:
    """Decode ``n`` images of one split of a :class:`GroupDataset` into a :class:`Dataset`.

    With ``n`` below the split's size the subset is stratified by group and keeps every example of
    the rarest group (:func:`~ntkdyn.data.dataset.stratified_sample`, deterministic in ``seed``);
    images are decoded with :func:`ntkdyn.data.images.decode_split` and ImageNet-normalised.

    Args:
        data: the metadata (CelebA or a folder).
        name: the dataset's name for reports.
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: number of images (``None``: the whole split).
        seed: seed of the subset.
        image_size: side of the decoded images (``None``: :data:`DEFAULT_IMAGE_SIZE`).
        crop: centre-crop side in the file's pixels (``None``: min(width, height)).
        where: where the data came from, for ``source``.

    Returns:
        The :class:`Dataset`: x (n, s, s, 3) float32, y the target, groups 2y + a, the spurious
        attribute as ``attributes[data.spurious]``.

    Raises:
        InputError: unknown split, ``n`` outside [1, split size], bad ``image_size``.
    """
    if split not in data.splits:
        raise InputError(f"--split: expected one of {', '.join(data.splits)}, got {split!r}")
    full = data.splits[split]
    total = len(full)
    if n is not None and not 1 <= n <= total:
        raise InputError(
            f"--n: the {split} split of {name} has {total} images, got n={n}; ask for at most "
            f"{total}"
        )
    size = DEFAULT_IMAGE_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise InputError(f"--image-size: must be >= 1 pixel, got {image_size}")
    names = tuple(data.group_names)
    if n is None or n == total:
        idx, how = np.arange(total), f"all {total} {split} images"
    else:
        idx, note = stratified_sample(full.group, n, seed=seed, names=names)
        how = f"{n} of the {total} {split} images, {note}, seed {seed}"
    sub = ImageSplit(
        name=split,
        paths=tuple(full.paths[i] for i in idx),
        y=full.y[idx],
        a=full.a[idx],
        group=full.group[idx],
    )
    x = normalize_images(decode_split(sub, image_size=size, crop=crop))
    return Dataset(
        name=name,
        x=x,
        y=sub.y.astype(np.int32),
        groups=sub.group.astype(np.int32),
        group_names=names,
        attributes={data.spurious: sub.a.astype(np.int32)},
        source=f"{how} of {name}{where} at {size}x{size} px (target {data.target}, spurious "
        f"attribute {data.spurious})",
    )


def _need_dir(name: str, data_dir) -> Path:
    if data_dir is None:
        raise InputError(f"--data-dir: {name} needs the folder of the data; pass --data-dir DIR")
    return Path(data_dir)


def _celeba(
    *,
    split: str = "train",
    n: int | None = None,
    seed: int,
    data_dir=None,
    image_size=None,
    crop=None,
    target: str = "Blond_Hair",
    spurious: str = "Male",
    **_: Any,
) -> Dataset:
    """CelebA from ``--data-dir`` (:func:`ntkdyn.data.celeba.load_celeba`), target and spurious attribute."""
    from ntkdyn.data.celeba import load_celeba

    root = _need_dir("celeba", data_dir)
    data = load_celeba(root, target=target, spurious=spurious)
    return group_dataset_to_dataset(
        data,
        name="celeba",
        split=split,
        n=n,
        seed=seed,
        image_size=image_size,
        crop=crop,
        where=f" in {root}",
    )


def _folder(
    *,
    split: str = "train",
    n: int | None = None,
    seed: int,
    data_dir=None,
    image_size=None,
    crop=None,
    target_name: str = "y",
    attribute_name: str = "a",
    **_: Any,
) -> Dataset:
    """An image folder with ``metadata.csv`` (:func:`ntkdyn.data.metadata.load_metadata_folder`)."""
    from ntkdyn.data.metadata import load_metadata_folder

    root = _need_dir("folder", data_dir)
    data = load_metadata_folder(root, target_name=target_name, attribute_name=attribute_name)
    return group_dataset_to_dataset(
        data, name=f"folder:{root}", split=split, n=n, seed=seed, image_size=image_size, crop=crop
    )


#: Dataset name → loader ``loader(split=, n=, seed=, data_dir=, image_size=, crop=, **options)``.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "moons": _moons,
    "mnist": _mnist,
    "cmnist": _cmnist,
    "celeba": _celeba,
    "folder": _folder,
}


def register_dataset(name: str, loader: Callable[..., Dataset], *, overwrite: bool = False) -> None:
    """Add a loader to :data:`DATASETS`, so ``load_dataset(name, ...)`` (and ``--data name``) finds it.

    Args:
        name: the dataset's name (no path separator, not ending in ``.npz``).
        loader: ``loader(split=, n=, seed=, data_dir=, image_size=, crop=, **options) -> Dataset``.
        overwrite: replace an existing loader of that name.

    Raises:
        ValueError: a bad name, a non-callable loader, or a taken name without ``overwrite``.
    """
    if not isinstance(name, str) or not name or "/" in name or name.endswith(".npz"):
        raise ValueError(f"name: expected a plain dataset name, got {name!r}")
    if not callable(loader):
        raise ValueError(f"loader: expected a callable, got {type(loader).__name__}")
    if name in DATASETS and not overwrite and DATASETS[name] is not loader:
        raise ValueError(f"name: {name!r} is already registered; pass overwrite=True to replace it")
    DATASETS[name] = loader


def load_dataset(
    spec: str | os.PathLike,
    *,
    split: str = "train",
    n: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    crop: int | None = None,
    **options: Any,
) -> Dataset:
    """Load a dataset by name, from a user's ``.npz``, or from an image folder with ``metadata.csv``.

    For ``moons``, ``mnist`` and ``cmnist`` the examples, their order and preprocessing are those
    of the spectrum command for the same ``n`` and ``seed``: moons from
    :func:`ntkdyn.data.moons.two_moons`; mnist a sample ``default_rng(seed).choice(N, n)`` of the
    MNIST in ``data_dir`` (else the embedded 5k subset), pixels / 255, label 1 for digits < 5;
    cmnist the first n of :func:`cmnist_pool`.

    Args:
        spec: a registered name (:data:`DATASETS`), a path to an ``.npz`` file, or a folder with
            ``metadata.csv`` (also ``"folder"`` with ``data_dir``).
        split: ``"train"``, ``"val"`` or ``"test"`` (moons, mnist, cmnist: train only).
        n: number of examples (``None``: moons 300, otherwise the whole split).
        seed: seed of the sample (moons: of the points; cmnist: the restart).
        data_dir: the data's folder (mnist/cmnist: MNIST files; celeba, folder: required).
        image_size: side of decoded images (celeba, folders; default 64).
        crop: centre-crop side of images (``None``: min(width, height)).
        **options: loader-specific settings (moons: ``delta``, ``noise``; celeba: ``target``,
            ``spurious``; folder: ``target_name``, ``attribute_name``).

    Returns:
        The :class:`~ntkdyn.data.dataset.Dataset`.

    Raises:
        InputError: an unknown name (the registered names and the two user forms are listed),
            or the loader's own complaints about its input.
        FileNotFoundError: a missing file or folder.
    """
    key = os.fspath(spec)
    kwargs = dict(split=split, n=n, seed=seed, image_size=image_size, crop=crop, **options)
    if n is not None and n < 1:
        raise InputError(f"--n: must be >= 1, got {n}")
    if key in DATASETS:
        return DATASETS[key](data_dir=data_dir, **kwargs)
    path = Path(key)
    if key.endswith(".npz") or path.is_file():
        from ntkdyn.data.npz import load_npz

        if data_dir is not None:
            raise InputError(f"--data-dir: not used with an .npz file ({key}); drop it")
        return load_npz(path, split=split, n=n, seed=seed)
    if path.is_dir():
        if not (path / "metadata.csv").is_file():
            raise FileNotFoundError(
                f"--data: the folder {path} has no metadata.csv; an image folder needs "
                "metadata.csv with the columns filename, split, y, a"
            )
        return _folder(data_dir=path, **kwargs)
    if os.sep in key or "/" in key:
        raise FileNotFoundError(
            f"--data: no file or folder {key}; pass an existing path: {_USER_FORMS}"
        )
    raise InputError(
        f"--data: unknown dataset {key!r}; registered: {', '.join(sorted(DATASETS))}; or "
        f"{_USER_FORMS}"
    )
