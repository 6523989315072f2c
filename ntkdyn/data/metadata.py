"""Image folders in the metadata format of the group-robustness benchmarks (Waterbirds, MetaShift, CelebA).

The layout SubpopBench uses for its exports::

    DATA_DIR/metadata.csv      columns filename, split, y, a (others, such as id, are ignored)
    DATA_DIR/images/1.jpg ...  (any paths, relative to DATA_DIR, as listed in ``filename``)

``split`` is 0 (train), 1 (val) or 2 (test); ``y`` (the target) and ``a`` (the spurious attribute)
lie in {0, 1}; the group of an example is g = 2·y + a. :func:`load_metadata_folder` reads it into a
:class:`ntkdyn.data.images.GroupDataset` whose splits go through the image pipeline of
:mod:`ntkdyn.data.images` (centre crop, resize, ImageNet normalisation).
:func:`write_metadata_fixture` writes a small folder in the same format with a learnable target and a
stronger spurious cue, for tests and smoke runs.

Everything that can be wrong with a folder is checked before anything is decoded: the folder, the
file, the columns, every value, that every listed image exists, and that no split is empty.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ntkdyn.data.celeba_fixture import (
    EVAL_GROUP_FRACTIONS,
    TRAIN_GROUP_FRACTIONS,
    draw_face,
    group_labels,
)
from ntkdyn.data.images import GroupDataset, ImageSplit
from ntkdyn.errors import DataError, InputError

__all__ = [
    "METADATA_FILE",
    "METADATA_COLUMNS",
    "SPLIT_IDS",
    "load_metadata_folder",
    "write_metadata_fixture",
]

#: The metadata file's name inside the folder.
METADATA_FILE = "metadata.csv"
#: The columns the loader needs (others are allowed and ignored).
METADATA_COLUMNS: tuple[str, ...] = ("filename", "split", "y", "a")
#: Split name → the id in the ``split`` column.
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

_FORMAT = (
    "metadata.csv needs a header with the columns filename, split, y, a (filename relative to the "
    "folder, split 0 train / 1 val / 2 test, y and a in {0, 1})"
)


def _binary(value: str) -> int | None:
    """0 or 1 from a CSV cell ("1", "1.0", " 0 "); ``None`` for anything else."""
    try:
        v = float(value)
    except ValueError:
        return None
    return int(v) if v in (0.0, 1.0) else None


def load_metadata_folder(
    data_dir: str | os.PathLike, *, target_name: str = "y", attribute_name: str = "a"
) -> GroupDataset:
    """Read an image folder with ``metadata.csv`` (columns filename, split, y, a) into its splits.

    Labels: the target y and the spurious attribute a from the file, group g = 2y + a (Sagawa et
    al. 2020). Images are not opened here (:func:`ntkdyn.data.images.decode_split` does that), but
    every listed file must exist.

    Args:
        data_dir: the folder (``--data-dir``) holding ``metadata.csv`` and the images.
        target_name: name of ``y`` in group names and reports (e.g. ``"Blond_Hair"``).
        attribute_name: name of ``a`` (e.g. ``"Male"``); group names read
            ``"<target_name>=y,<attribute_name>=a"``.

    Returns:
        A :class:`~ntkdyn.data.images.GroupDataset` with the train, val and test splits, examples in
        file order.

    Raises:
        FileNotFoundError: the folder, ``metadata.csv`` or a listed image is missing (the first
            missing image and the number missing are named).
        InputError: a missing column, a split outside {0, 1, 2}, y or a outside {0, 1}, an empty
            split, or equal names for the target and the attribute; the message names the file,
            the line or column and the fix.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"--data-dir: {root} is not a directory; pass the folder that holds {METADATA_FILE} "
            "and the images (write one with ntkdyn.data.metadata.write_metadata_fixture)"
        )
    meta = root / METADATA_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"--data-dir: {root} has no {METADATA_FILE}; {_FORMAT}")
    if target_name == attribute_name:
        raise InputError(f"attribute_name: must differ from target_name, both are {target_name!r}")
    data = meta.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"--data-dir: {meta}: line {line}: not UTF-8 text (byte {data[exc.start]:#04x}); "
            f"save it as UTF-8 CSV; {_FORMAT}"
        ) from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing_cols = [c for c in METADATA_COLUMNS if c not in header]
        if missing_cols:
            raise DataError(
                f"--data-dir: {meta} lacks the column(s) {', '.join(missing_cols)} (header: "
                f"{','.join(header) or 'empty'}); {_FORMAT}"
            )
        reader.fieldnames = header
        rows = list(reader)
    except csv.Error as exc:
        raise DataError(
            f"--data-dir: {meta}: line {reader.line_num}: not a CSV file ({exc}); {_FORMAT}"
        ) from None
    n = len(rows)
    files: list[str] = []
    split = np.empty(n, np.int32)
    y = np.empty(n, np.int32)
    a = np.empty(n, np.int32)
    for i, row in enumerate(rows):
        lineno = i + 2
        values = {c: (row.get(c) or "").strip() for c in METADATA_COLUMNS}
        if not values["filename"]:
            raise InputError(
                f"--data-dir: {meta}: line {lineno}: empty filename; fix or remove that line"
            )
        if values["split"] not in ("0", "1", "2"):
            raise InputError(
                f"--data-dir: {meta}: line {lineno}: column split is {values['split']!r}, expected "
                "0 (train), 1 (val) or 2 (test); fix that line"
            )
        for col, out in (("y", y), ("a", a)):
            v = _binary(values[col])
            if v is None:
                raise InputError(
                    f"--data-dir: {meta}: line {lineno}: column {col} is {values[col]!r}, expected "
                    f"0 or 1; recode the {'target' if col == 'y' else 'attribute'} as 0/1"
                )
            out[i] = v
        files.append(values["filename"])
        split[i] = int(values["split"])
    paths = [root / f for f in files]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise FileNotFoundError(
            f"--data-dir: {len(absent)} of the {n} images listed in {meta} are missing, the first "
            f"is {absent[0]}; copy the images in or drop their rows from {METADATA_FILE}"
        )
    for name, sid in SPLIT_IDS.items():
        if not np.any(split == sid):
            raise InputError(
                f"--data-dir: {meta} has no example with split={sid} ({name}); every split "
                "(0 train, 1 val, 2 test) needs examples — assign some rows to it"
            )
    splits = {}
    for name, sid in SPLIT_IDS.items():
        idx = np.flatnonzero(split == sid)
        splits[name] = ImageSplit(
            name=name,
            paths=tuple(str(paths[i]) for i in idx),
            y=y[idx],
            a=a[idx],
            group=2 * y[idx] + a[idx],
        )
    return GroupDataset(target=target_name, spurious=attribute_name, splits=splits)


def write_metadata_fixture(
    directory: str | os.PathLike,
    *,
    seed: int,
    sizes: Sequence[int] = (200, 40, 40),
    train_fractions: Sequence[float] = TRAIN_GROUP_FRACTIONS,
    eval_fractions: Sequence[float] = EVAL_GROUP_FRACTIONS,
    image_size: int = 64,
    jpeg_quality: int = 90,
) -> Path:
    """Write a small metadata-format image folder with a learnable target and a rare group.

    The images are the cartoon faces of :mod:`ntkdyn.data.celeba_fixture` (target y: the hair
    colour, informative but not perfect; attribute a: a large dark lower half, the easier cue),
    centre-cropped to a square and resized to ``image_size``. Training groups follow CelebA's
    proportions (g = 3, y = 1 and a = 1, about 1 %); val and test over-represent the rare group.
    Writes ``images/1.jpg …`` and ``metadata.csv`` with the columns id, filename, split, y, a.

    Args:
        directory: folder to create.
        seed: randomness of labels and drawings (same seed → same bytes).
        sizes: images in the train, val and test splits (split 0, 1, 2; numbered in that order).
        train_fractions: group fractions (g = 2y + a) of the training split.
        eval_fractions: group fractions of val and test.
        image_size: side of the square JPEGs.
        jpeg_quality: JPEG quality.

    Returns:
        ``directory`` as a Path.

    Raises:
        ValueError: fewer than 4 images in a split, bad fractions or a bad image size.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != 3 or min(sizes) < 4:
        raise ValueError(
            f"sizes: expected 3 split sizes (train, val, test) of >= 4 images each (one per "
            f"group), got {sizes}"
        )
    for name, fr in (("train_fractions", train_fractions), ("eval_fractions", eval_fractions)):
        if len(fr) != 4 or min(fr) < 0 or sum(fr) <= 0:
            raise ValueError(f"{name}: expected 4 non-negative group fractions, got {tuple(fr)}")
    if image_size < 8:
        raise ValueError(f"image_size: must be >= 8 pixels, got {image_size}")
    out = Path(directory)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    groups = np.concatenate(
        [
            group_labels(sizes[0], train_fractions, rng),
            group_labels(sizes[1], eval_fractions, rng),
            group_labels(sizes[2], eval_fractions, rng),
        ]
    )
    split = np.repeat([0, 1, 2], sizes)
    lines = ["id,filename,split,y,a"]
    for i, g in enumerate(groups):
        y, a = int(g // 2), int(g % 2)
        img = draw_face(y, a, rng)
        w, h = img.size
        top = (h - w) // 2
        img = img.crop((0, top, w, top + w)).resize((image_size, image_size), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=jpeg_quality)
        name = f"images/{i + 1}.jpg"
        (out / name).write_bytes(buf.getvalue())
        lines.append(f"{i},{name},{split[i]},{y},{a}")
    (out / METADATA_FILE).write_text("\n".join(lines) + "\n")
    return out
