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
import io
import os
from pathlib import Path

import numpy as np
from jaxtyping import Int

# The image pipeline lives in ntkdyn.data.images; its names stay importable from here.
from ntkdyn.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    GroupDataset,
    ImageSplit,
    centre_crop_box,
    decode_image,
    decode_split,
    epoch_order,
    iterate_batches,
    load_image,
    normalize_images,
)
from ntkdyn.errors import DataError, InputError

__all__ = [
    "CELEBA_ATTRIBUTES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLITS",
    "CelebA",
    "CelebASplit",
    "GroupDataset",
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


#: Partition ids of ``list_eval_partition``.
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}


# --------------------------------------------------------------------------------------------
# Metadata files
# --------------------------------------------------------------------------------------------


def _malformed(path: Path, lineno: int, what: str) -> DataError:
    return DataError(
        f"{path}: line {lineno}: {what}; the file is malformed — re-download it or fix that line"
    )


def _text(path: Path) -> str:
    """The file as UTF-8 text (the release's files are ASCII), or a message naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise _malformed(path, line, f"not text (byte {data[exc.start]:#04x})") from None


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        return list(csv.reader(io.StringIO(_text(path), newline="")))
    except csv.Error as exc:
        raise _malformed(path, 1, f"not a CSV file ({exc})") from None


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
        InputError: wrong header, wrong number of columns, a value outside {−1, 1}, or a row count that
            disagrees with the count line; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"attribute file {path} not found; expected list_attr_celeba.txt or .csv from the CelebA release"
        )
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
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
        lines = _text(path).splitlines()
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
        InputError: a malformed line or a partition outside {0, 1, 2} (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"partition file {path} not found; expected list_eval_partition.txt or .csv from the CelebA release"
        )
    out: dict[str, int] = {}
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path)
        if not rows or [c.strip() for c in rows[0]] != ["image_id", "partition"]:
            raise _malformed(path, 1, "expected the header 'image_id,partition'")
        body = [(i + 2, [c.strip() for c in r]) for i, r in enumerate(rows[1:]) if r]
    else:
        lines = _text(path).splitlines()
        body = [(i + 1, line.split()) for i, line in enumerate(lines) if line.strip()]
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


#: One CelebA split (the generic :class:`ntkdyn.data.images.ImageSplit`).
CelebASplit = ImageSplit


#: CelebA with a target and a spurious attribute: the generic
#: :class:`ntkdyn.data.images.GroupDataset` (see :func:`load_celeba`).
CelebA = GroupDataset


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
        InputError: a malformed file, an unknown attribute name, ``target == spurious``, or files
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
            raise InputError(
                f"{role}: unknown attribute {attr!r}; {attr_path.name} has {', '.join(names)}"
            )
    if target == spurious:
        raise InputError(f"spurious: must differ from target, both are {target!r}")
    partition = read_partition(part_path)
    missing = [f for f in files if f not in partition]
    if missing or len(partition) != len(files):
        extra = sorted(set(partition) - set(files))
        raise InputError(
            f"--data-dir: {attr_path.name} and {part_path.name} list different images "
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
