"""CelebA for the blond-hair-vs-gender experiment: metadata loader and a parallel input pipeline.

Reads the official layout of the aligned-and-cropped release::

    DATA_DIR/img_align_celeba/000001.jpg ...
    DATA_DIR/list_attr_celeba.txt        (count line, 40 attribute names, then "file v1 ... v40", v in {-1, 1})
    DATA_DIR/list_eval_partition.txt     ("file p", p = 0 train / 1 val / 2 test)

or the common CSV exports ``list_attr_celeba.csv`` (``image_id,<40 names>``) and
``list_eval_partition.csv`` (``image_id,partition``); the ``.txt`` files are used when both exist.
A target and a spurious attribute (Pezeshki et al. 2021, Sec. 5 / Table 2: ``Blond_Hair`` and
``Male``) define four groups ``g = 2·y + a``.

Preprocessing follows the authors' (and Group DRO's) evaluation transform: centre crop of side
min(width, height) (178 × 178 on the official 178 × 218 images; any resolution of the aligned faces
gets the same geometry, scaled), resize to 224 × 224 (bilinear), scale to [0, 1], normalise with
the ImageNet mean and std. Images come out NHWC float32. ``image_size`` may be lowered for CPU
smoke runs.

The pipeline decodes with a thread pool (PIL releases the GIL while decoding and resizing), keeps a
bounded number of batches in flight, and yields batches in an order fixed by ``(seed, epoch)``.
"""

from __future__ import annotations

import csv
import math
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from jaxtyping import Float, Int, UInt8
from PIL import Image, UnidentifiedImageError

__all__ = [
    "CELEBA_ATTRIBUTES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "CelebA",
    "CelebASplit",
    "load_celeba",
    "read_attributes",
    "read_partition",
    "centre_crop_box",
    "decode_image",
    "normalize_images",
    "load_image",
    "decode_split",
    "epoch_order",
    "iterate_batches",
]

#: The 40 attribute names of ``list_attr_celeba``, in file order.
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)  # fmt: skip

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

#: Partition ids of ``list_eval_partition``.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------------------------
# Metadata files
# --------------------------------------------------------------------------------------------


def _malformed(path: Path, lineno: int, what: str) -> ValueError:
    return ValueError(
        f"{path}: line {lineno}: {what}; the file is malformed — re-download it or fix that line"
    )


def read_attributes(
    path: str | os.PathLike,
) -> tuple[list[str], list[str], Int[np.ndarray, "n 40"]]:
    """Read ``list_attr_celeba.txt`` or ``list_attr_celeba.csv``.

    Args:
        path: the attribute file; the format is chosen by the suffix (``.csv`` or anything else for
            the whitespace-separated original).

    Returns:
        ``(filenames, attribute_names, values)`` with ``values`` an int8 array of ±1, one row per file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong header, wrong number of columns, a value outside {−1, 1}, or a row count that
            disagrees with the count line; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"attribute file {path} not found; expected list_attr_celeba.txt or .csv from the CelebA release"
        )
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise _malformed(path, 1, "the file is empty")
        header = [h.strip() for h in rows[0]]
        if len(header) < 2 or header[0] != "image_id":
            raise _malformed(
                path,
                1,
                f"expected a header 'image_id,<attribute names>', got {','.join(header[:3])!r}...",
            )
        names = header[1:]
        body = [(i + 2, [c.strip() for c in r]) for i, r in enumerate(rows[1:]) if r]
        expected_count = None
    else:
        with open(path) as fh:
            lines = fh.read().splitlines()
        if len(lines) < 2:
            raise _malformed(
                path, len(lines) or 1, "expected a count line and a line of attribute names"
            )
        try:
            expected_count = int(lines[0].strip())
        except ValueError:
            raise _malformed(
                path, 1, f"expected the number of images, got {lines[0][:40]!r}"
            ) from None
        names = lines[1].split()
        body = [(i + 3, line.split()) for i, line in enumerate(lines[2:]) if line.strip()]
    if not names or len(set(names)) != len(names):
        raise _malformed(
            path, 1 if expected_count is None else 2, "attribute names missing or repeated"
        )
    width = len(names) + 1
    filenames: list[str] = []
    values = np.empty((len(body), len(names)), np.int8)
    for row, (lineno, parts) in enumerate(body):
        if len(parts) != width:
            raise _malformed(
                path,
                lineno,
                f"expected a file name and {len(names)} values, got {len(parts)} fields",
            )
        try:
            vals = [int(v) for v in parts[1:]]
        except ValueError:
            raise _malformed(
                path, lineno, f"non-integer attribute value in {parts[1:]!r}"
            ) from None
        if any(v not in (-1, 1) for v in vals):
            raise _malformed(path, lineno, "attribute values must be -1 or 1")
        filenames.append(parts[0])
        values[row] = vals
    if expected_count is not None and expected_count != len(filenames):
        raise _malformed(
            path, 1, f"the count line says {expected_count} images but {len(filenames)} rows follow"
        )
    return filenames, list(names), values


def read_partition(path: str | os.PathLike) -> dict[str, int]:
    """Read ``list_eval_partition.txt`` or ``.csv``: file name → partition (0 train, 1 val, 2 test).

    Args:
        path: the partition file (``.csv`` by suffix, else the whitespace-separated original).

    Returns:
        file name → partition id.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line or a partition outside {0, 1, 2} (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"partition file {path} not found; expected list_eval_partition.txt or .csv from the CelebA release"
        )
    out: dict[str, int] = {}
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows or [c.strip() for c in rows[0]] != ["image_id", "partition"]:
            raise _malformed(path, 1, "expected the header 'image_id,partition'")
        body = [(i + 2, [c.strip() for c in r]) for i, r in enumerate(rows[1:]) if r]
    else:
        with open(path) as fh:
            body = [(i + 1, line.split()) for i, line in enumerate(fh) if line.strip()]
    for lineno, parts in body:
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise _malformed(path, lineno, f"expected '<file> <0|1|2>', got {' '.join(parts)!r}")
        out[parts[0]] = int(parts[1])
    return out


def _find(data_dir: Path, stem: str) -> Path:
    for suffix in (".txt", ".csv"):
        if (data_dir / f"{stem}{suffix}").is_file():
            return data_dir / f"{stem}{suffix}"
    raise FileNotFoundError(
        f"data_dir: {data_dir} has neither {stem}.txt nor {stem}.csv; point --data-dir at the CelebA folder "
        "(or write a fixture with `ntkdyn celeba --make-fixture DIR`)"
    )


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelebASplit:
    """One split: image paths, target ``y``, spurious attribute ``a`` and group ``g = 2y + a``.

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
class CelebA:
    """CelebA metadata with a target and a spurious attribute (see :func:`load_celeba`).

    Attributes:
        target: the target attribute name (default ``Blond_Hair``).
        spurious: the spurious attribute name (default ``Male``).
        splits: ``{"train", "val", "test"}`` → :class:`CelebASplit`.
    """

    target: str
    spurious: str
    splits: dict[str, CelebASplit]

    @property
    def group_names(self) -> list[str]:
        """Group labels ``"<target>=y,<spurious>=a"`` in group-id order (g = 2y + a)."""
        return [f"{self.target}={g // 2},{self.spurious}={g % 2}" for g in range(4)]

    def describe(self) -> str:
        """A table of group counts per split (printed by the experiment)."""
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


def _image_dir(data_dir: Path) -> Path:
    img = data_dir / "img_align_celeba"
    if (img / "img_align_celeba").is_dir():  # the common Kaggle export nests the folder
        img = img / "img_align_celeba"
    if not img.is_dir():
        raise FileNotFoundError(
            f"data_dir: image folder {img} not found; expected DATA_DIR/img_align_celeba/*.jpg"
        )
    return img


def load_celeba(
    data_dir: str | os.PathLike, *, target: str = "Blond_Hair", spurious: str = "Male"
) -> CelebA:
    """Load CelebA metadata: the official splits, a target and a spurious attribute, four groups.

    Labels: ``y = [target == 1]``, ``a = [spurious == 1]``, group ``g = 2y + a`` (Pezeshki et al.
    2021, Sec. 5; Sagawa et al. 2020). Images are not opened here; :func:`iterate_batches` does that.

    Args:
        data_dir: folder holding ``img_align_celeba/`` and the attribute and partition files.
        target: target attribute (one of :data:`CELEBA_ATTRIBUTES` or of the file's header).
        spurious: spurious attribute.

    Returns:
        A :class:`CelebA` with the train, val and test splits.

    Raises:
        FileNotFoundError: the folder, the image folder or a metadata file is missing.
        ValueError: a malformed file, an unknown attribute name, ``target == spurious``, or files
            listed in one metadata file and not the other.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data_dir: {data_dir} is not a directory; pass the folder of your CelebA copy"
        )
    img_dir = _image_dir(data_dir)
    attr_path = _find(data_dir, "list_attr_celeba")
    part_path = _find(data_dir, "list_eval_partition")
    files, names, values = read_attributes(attr_path)
    for role, attr in (("target", target), ("spurious", spurious)):
        if attr not in names:
            raise ValueError(
                f"{role}: unknown attribute {attr!r}; {attr_path.name} has {', '.join(names)}"
            )
    if target == spurious:
        raise ValueError(f"spurious: must differ from target, both are {target!r}")
    partition = read_partition(part_path)
    missing = [f for f in files if f not in partition]
    if missing or len(partition) != len(files):
        extra = sorted(set(partition) - set(files))
        raise ValueError(
            f"{attr_path.name} and {part_path.name} list different images "
            f"({len(missing)} only in the first, e.g. {missing[:2]}; {len(extra)} only in the second, e.g. {extra[:2]}); "
            "use files from the same release"
        )
    y_all = (values[:, names.index(target)] == 1).astype(np.int32)
    a_all = (values[:, names.index(spurious)] == 1).astype(np.int32)
    part = np.array([partition[f] for f in files])
    splits = {}
    for name, pid in SPLITS.items():
        idx = np.flatnonzero(part == pid)
        splits[name] = CelebASplit(
            name=name,
            paths=tuple(str(img_dir / files[i]) for i in idx),
            y=y_all[idx],
            a=a_all[idx],
            group=2 * y_all[idx] + a_all[idx],
        )
    return CelebA(target=target, spurious=spurious, splits=splits)


# --------------------------------------------------------------------------------------------
# Images and batches
# --------------------------------------------------------------------------------------------


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
        ValueError: ``crop`` < 1 or larger than the image.
    """
    side = min(width, height) if crop is None else int(crop)
    if side < 1:
        raise ValueError(f"--crop: must be >= 1 pixel (or auto), got {crop}")
    if side > min(width, height):
        raise ValueError(
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
        ValueError: the file cannot be decoded, or ``crop`` is larger than the image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            w0, h0 = img.size
            try:
                box = centre_crop_box(w0, h0, crop)
            except ValueError as exc:
                raise ValueError(f"image {path}: {exc}") from None
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
    except FileNotFoundError:
        raise FileNotFoundError(
            f"image {path} not found; it is listed in the attribute file — is the image folder complete?"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(
            f"image {path}: cannot be decoded ({exc}); re-download or replace it"
        ) from None
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
        ValueError: the file cannot be decoded, or ``crop`` is larger than the image.
    """
    return normalize_images(decode_image(path, image_size, crop=crop))


def decode_split(
    split: CelebASplit, *, image_size: int, crop: int | None = None, workers: int = 8
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
        ValueError, FileNotFoundError: as :func:`decode_image`, naming the file.
    """
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    out = np.empty((len(split), image_size, image_size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="celeba-decode") as pool:
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
    split: CelebASplit,
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

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="celeba-decode")
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
