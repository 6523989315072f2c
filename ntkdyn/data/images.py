"""Image folders as model inputs: centre crop, resize, ImageNet normalisation, and a batch pipeline.

The evaluation transform of the group-robustness literature (Sagawa et al. 2020's
``get_transform_celebA``, the authors' CelebA code): centre crop of side min(width, height), bilinear
resize, scale to [0, 1], normalise with the ImageNet mean and std. Images come out NHWC.

Any split that has ``paths``, ``y``, ``a`` and ``group`` arrays (:class:`ImageSplit`) goes through
:func:`decode_split` and :func:`iterate_batches`; CelebA (:mod:`ntkdyn.data.celeba`) and the
metadata-format folders (:mod:`ntkdyn.data.metadata`) both produce such splits.

The pipeline decodes with a thread pool (PIL releases the GIL while decoding and resizing), keeps a
bounded number of batches in flight, and yields batches in an order fixed by ``(seed, epoch)``.
"""

from __future__ import annotations

import math
import os
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int, UInt8
from PIL import Image, UnidentifiedImageError

from ntkdyn.errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSplit",
    "GroupDataset",
    "centre_crop_box",
    "decode_image",
    "normalize_images",
    "load_image",
    "decode_split",
    "epoch_order",
    "iterate_batches",
]

#: Largest image (width × height) decoded: PIL's decompression-bomb limit (about 89 million
#: pixels; a 178 × 218 CelebA face has 38,804). A header declaring more is refused before decoding.
_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
#: What PIL raises on a corrupt, truncated or hostile file while identifying or decoding it: its
#: own kinds (UnidentifiedImageError, DecompressionBombError) and the plain ones its plugins let
#: through on malformed headers and streams.
_DECODE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    TypeError,
    ZeroDivisionError,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class ImageSplit:
    """One split of an image dataset: paths, target ``y``, attribute ``a`` and group ``g = 2y + a``.

    Attributes:
        name: "train", "val" or "test".
        paths: absolute image paths, in file order.
        y: (n,) target labels in {0, 1}.
        a: (n,) spurious-attribute labels in {0, 1}.
        group: (n,) group ids 2·y + a in {0, 1, 2, 3}.
    """

    name: str
    paths: tuple[str, ...]
    y: Int[np.ndarray, " n"]
    a: Int[np.ndarray, " n"]
    group: Int[np.ndarray, " n"]

    def __len__(self) -> int:
        return len(self.paths)

    def group_counts(self) -> Int[np.ndarray, " 4"]:
        """Number of images in each of the four groups."""
        return np.bincount(self.group, minlength=4)


@dataclass(frozen=True)
class GroupDataset:
    """An image dataset with a target, a spurious attribute and four groups g = 2·y + a, per split.

    Produced by :func:`ntkdyn.data.celeba.load_celeba` (``CelebA`` is this class) and by
    :func:`ntkdyn.data.metadata.load_metadata_folder`. Images are not held; each split lists paths.

    Attributes:
        target: the target's name (``Blond_Hair`` for CelebA; ``y`` for a metadata folder unless
            named otherwise).
        spurious: the spurious attribute's name (``Male``; ``a`` for a folder).
        splits: ``{"train", "val", "test"}`` → :class:`ImageSplit`.
    """

    target: str
    spurious: str
    splits: dict[str, ImageSplit]

    @property
    def group_names(self) -> list[str]:
        """Group labels ``"<target>=y,<spurious>=a"`` in group-id order (g = 2y + a)."""
        return [f"{self.target}={g // 2},{self.spurious}={g % 2}" for g in range(4)]

    def describe(self) -> str:
        """A table of group counts per split (printed by the experiments)."""
        names = self.group_names
        width = max(len(n) for n in names)
        lines = [f"{'group':<{width}}  " + "  ".join(f"{s:>8}" for s in self.splits)]
        counts = {s: sp.group_counts() for s, sp in self.splits.items()}
        for g, name in enumerate(names):
            cells = []
            for s, sp in self.splits.items():
                c = int(counts[s][g])
                cells.append(
                    f"{c:>8}" if not len(sp) else f"{c:>8}" + f" ({100 * c / len(sp):4.1f}%)"
                )
            lines.append(f"{name:<{width}}  " + "  ".join(cells))
        lines.append(
            f"{'total':<{width}}  "
            + "  ".join(f"{len(sp):>8}" + " " * 8 for sp in self.splits.values())
        )
        return "\n".join(lines)


def centre_crop_box(width: int, height: int, crop: int | None = None) -> tuple[int, int, int, int]:
    """The centre square ``(left, top, right, bottom)`` of side ``crop`` in a ``width × height`` image.

    The official CelebA transform is torchvision's ``CenterCrop(min(w, h))`` (Sagawa et al. 2020's
    ``get_transform_celebA``): on a 178 × 218 aligned image the 178-pixel square, i.e. side = width.
    ``crop=None`` takes that side, min(width, height), so an aligned image of any resolution gets the
    same crop geometry, scaled: 89 × 109 → (0, 10, 89, 99), twice that for 178 × 218.

    Args:
        width: image width in pixels.
        height: image height in pixels.
        crop: side of the square in pixels (``None``: min(width, height)).

    Returns:
        The box, as PIL's ``Image.crop`` takes it (left ≈ (width − crop)/2, rounded).

    Raises:
        InputError: ``crop`` < 1 or larger than the image.
    """
    side = min(width, height) if crop is None else int(crop)
    if side < 1:
        raise InputError(f"--crop: must be >= 1 pixel (or auto), got {crop}")
    if side > min(width, height):
        raise InputError(
            f"--crop: {side} px is larger than the {width}x{height} image; pass --crop auto "
            f"(the central square of side {min(width, height)}) or at most {min(width, height)}"
        )
    left = round((width - side) / 2.0)
    top = round((height - side) / 2.0)
    return left, top, left + side, top + side


def decode_image(
    path: str | os.PathLike, image_size: int = 224, *, crop: int | None = None
) -> UInt8[np.ndarray, "h w 3"]:
    """Decode one image: centre crop ``crop`` × ``crop``, bilinear resize, 8-bit RGB.

    :func:`load_image` without the normalisation; :func:`decode_split` keeps these in memory.

    resize(centre_crop(img)) as torchvision's ``CenterCrop(min(w, h))``, ``Resize(224)``
    (:func:`centre_crop_box`). When ``image_size ≤ crop / 2`` the JPEG is decoded at a reduced
    scale first (PIL ``draft``), a fast path for small smoke-run sizes.

    Args:
        path: image file.
        image_size: output side length.
        crop: centre-crop side length in the file's pixels; ``None`` (the default, ``--crop auto``)
            takes min(width, height): 178 on the official 178 × 218 aligned images, 89 on 89 × 109.

    Returns:
        (image_size, image_size, 3) uint8 array.

    Raises:
        FileNotFoundError: the file is missing.
        InputError: the file cannot be decoded, or ``crop`` is larger than the image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            w0, h0 = img.size
            if w0 * h0 > _MAX_PIXELS:
                raise InputError(
                    f"image {path}: declares {w0}x{h0} pixels, more than the {_MAX_PIXELS:,} "
                    "ntkdyn decodes; the file is corrupt or not a photograph — replace it"
                )
            try:
                box = centre_crop_box(w0, h0, crop)
            except ValueError as exc:
                raise InputError(f"image {path}: {exc}") from None
            side = box[2] - box[0]
            if image_size * 2 <= side and img.format == "JPEG":
                img.draft(
                    "RGB", (math.ceil(w0 * image_size / side), math.ceil(h0 * image_size / side))
                )
            img = img.convert("RGB")
            scale = img.size[0] / w0
            c = side * scale
            left = round((img.size[0] - c) / 2.0)
            top = round((img.size[1] - c) / 2.0)
            box = (left, top, left + round(c), top + round(c))
            # crop, then resize (not resize(box=...), which samples outside the box at the edges)
            img = img.crop(box).resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except InputError:  # already says what is wrong with the file
        raise
    except FileNotFoundError:
        raise FileNotFoundError(
            f"image {path} not found; it is listed in the attribute file — is the image folder complete?"
        ) from None
    except _DECODE_ERRORS as exc:
        raise InputError(
            f"image {path}: cannot be decoded ({type(exc).__name__}: {exc}); re-download or "
            "replace it"
        ) from None
    if arr.shape != (image_size, image_size, 3):  # pragma: no cover - PIL's contract
        raise InputError(f"image {path}: decoded to shape {arr.shape}; replace it")
    return arr


def normalize_images(images: UInt8[np.ndarray, "... h w 3"]) -> Float[np.ndarray, "... h w 3"]:
    """ImageNet normalisation x = (pixels / 255 − mean) / std (torchvision ``ToTensor``, ``Normalize``).

    Args:
        images: 8-bit RGB, channels last (one image or a batch).

    Returns:
        float32 array of the same shape.
    """
    return (np.asarray(images, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def load_image(
    path: str | os.PathLike, image_size: int = 224, *, crop: int | None = None
) -> Float[np.ndarray, "h w 3"]:
    """Decode one image: centre crop ``crop`` × ``crop``, bilinear resize, ImageNet normalisation.

    x = (resize(centre_crop(img)) / 255 − mean) / std, as torchvision's ``CenterCrop(min(w, h))``,
    ``Resize(224)``, ``ToTensor()``, ``Normalize(ImageNet)``: :func:`normalize_images` of
    :func:`decode_image`.

    Args:
        path: image file.
        image_size: output side length.
        crop: centre-crop side length in the file's pixels; ``None`` (the default, ``--crop auto``)
            takes min(width, height): 178 on the official 178 × 218 aligned images, 89 on 89 × 109.

    Returns:
        (image_size, image_size, 3) float32 array.

    Raises:
        FileNotFoundError: the file is missing.
        InputError: the file cannot be decoded, or ``crop`` is larger than the image.
    """
    return normalize_images(decode_image(path, image_size, crop=crop))


def decode_split(
    split: ImageSplit, *, image_size: int, crop: int | None = None, workers: int = 8
) -> UInt8[np.ndarray, "n h w 3"]:
    """Decode every image of a split once, for :func:`iterate_batches`'s ``images`` (8-bit, in memory).

    10,000 images at 64 px take 123 MB; decoding them once instead of every epoch is what makes
    many epochs on a CPU affordable. Batches drawn from the result equal decoded ones exactly.

    Args:
        split: the split.
        image_size: output side length.
        crop: centre-crop side (see :func:`load_image`).
        workers: decoding threads (≥ 1).

    Returns:
        (n, image_size, image_size, 3) uint8 array in file order.

    Raises:
        InputError, FileNotFoundError: as :func:`decode_image`, naming the file.
    """
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    out = np.empty((len(split), image_size, image_size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-decode") as pool:
        for i, arr in enumerate(
            pool.map(lambda p: decode_image(p, image_size, crop=crop), split.paths)
        ):
            out[i] = arr
    return out


def epoch_order(n: int, *, seed: int, epoch: int, shuffle: bool = True) -> Int[np.ndarray, " n"]:
    """The example order of one epoch: a permutation fixed by ``(seed, epoch)``.

    Resuming mid-epoch slices this order, so a resumed run sees exactly the batches of an
    uninterrupted one.

    Args:
        n: number of examples.
        seed: run seed.
        epoch: epoch index.
        shuffle: False gives the identity order (evaluation).

    Returns:
        (n,) indices.
    """
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def iterate_batches(
    split: ImageSplit,
    order: Sequence[int] | np.ndarray,
    *,
    batch_size: int,
    image_size: int = 224,
    crop: int | None = None,
    drop_last: bool = False,
    pad_to_multiple: int = 1,
    workers: int = 8,
    prefetch: int = 2,
    shard: tuple[int, int] = (0, 1),
    images: UInt8[np.ndarray, "n h w 3"] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield batches of decoded images in ``order``, decoding ahead on a thread pool.

    Each batch is a dict: ``image`` (b, H, W, 3) float32, ``y``, ``a``, ``group``, ``index`` (int32)
    and ``mask`` (float32, 0 for padding). A final partial batch is dropped (``drop_last``) or
    padded with copies of its first example and ``mask = 0`` up to a multiple of
    ``pad_to_multiple`` (the device count), so that it can be sharded. At most ``prefetch``
    batches beyond the current one are in flight; the order is exactly ``order``.

    Args:
        split: the split to read.
        order: example indices, e.g. from :func:`epoch_order` (sliced to resume mid-epoch).
        batch_size: global batch size.
        image_size: output side length.
        crop: centre-crop side (``None``: min(width, height) of each image, see :func:`load_image`).
        drop_last: drop a final partial batch.
        pad_to_multiple: pad the final partial batch up to a multiple of this.
        workers: decoding threads.
        prefetch: batches decoded ahead.
        shard: ``(process_index, process_count)``: yield only this process's contiguous slice of
            every global batch (multi-host training); the slice sizes must divide evenly.
        images: the split decoded in memory (:func:`decode_split`); batches are then taken from it
            instead of being decoded (the same values), and ``image_size``, ``crop``, ``workers``
            and ``prefetch`` are unused.

    Raises:
        ValueError: bad sizes, or an image that cannot be decoded (names the file).
        FileNotFoundError: an image file is missing (names the file).
    """
    if batch_size < 1 or workers < 1 or prefetch < 0 or pad_to_multiple < 1:
        raise ValueError(
            f"batch_size, workers, pad_to_multiple must be >= 1 and prefetch >= 0; got {batch_size}, {workers}, {pad_to_multiple}, {prefetch}"
        )
    pid, nproc = shard
    if batch_size % nproc:
        raise ValueError(f"batch_size: {batch_size} is not divisible by the process count {nproc}")
    order = np.asarray(order, dtype=np.int64)
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if chunks and drop_last and len(chunks[-1]) < batch_size:
        chunks.pop()

    def plan(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.ones(len(idx), np.float32)
        size = len(idx)
        if size < batch_size:
            size = -(-size // (pad_to_multiple * nproc)) * pad_to_multiple * nproc
        if size > len(idx):
            mask = np.concatenate([mask, np.zeros(size - len(idx), np.float32)])
            idx = np.concatenate([idx, np.full(size - len(idx), idx[0])])
        per = len(idx) // nproc
        sl = slice(pid * per, (pid + 1) * per)
        return idx[sl], mask[sl]

    if images is not None:
        if len(images) != len(split):
            raise ValueError(
                f"images: {len(images)} decoded images for the {len(split)} of split {split.name!r}"
            )
        for chunk in chunks:
            idx, mask = plan(chunk)
            yield {
                "image": normalize_images(images[idx]),
                "y": split.y[idx].astype(np.int32),
                "a": split.a[idx].astype(np.int32),
                "group": split.group[idx].astype(np.int32),
                "index": idx.astype(np.int32),
                "mask": mask,
            }
        return

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-decode")
    pending: deque = deque()
    chunk_iter = iter(chunks)

    def submit() -> None:
        idx = next(chunk_iter, None)
        if idx is not None:
            idx, mask = plan(idx)
            pending.append(
                (
                    idx,
                    mask,
                    [pool.submit(load_image, split.paths[i], image_size, crop=crop) for i in idx],
                )
            )

    try:
        for _ in range(prefetch + 1):
            submit()
        while pending:
            idx, mask, futures = pending.popleft()
            images = np.stack([f.result() for f in futures])
            submit()
            yield {
                "image": images,
                "y": split.y[idx].astype(np.int32),
                "a": split.a[idx].astype(np.int32),
                "group": split.group[idx].astype(np.int32),
                "index": idx.astype(np.int32),
                "mask": mask,
            }
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
