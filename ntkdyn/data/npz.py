"""A user's own data as one ``.npz`` file: inputs ``x``, labels ``y``, optional groups and splits.

The arrays (``numpy.savez``)::

    x            (n, ...) numbers, no NaN or inf            required
    y            (n,) labels in {0, 1} or {−1, +1}         required ({−1, +1} becomes {0, 1})
    groups       (n,) non-negative int group ids            optional
    group_names  (k,) strings, one per group id             optional (needs groups)
    split        (n,) 0/1/2 or "train"/"val"/"test"        optional (without it every example is train)

Everything is checked before anything else is done, and each problem raises an
:class:`ntkdyn.errors.InputError` naming ``--data``, the file and what to do (a file that cannot be
read as an archive of arrays: :class:`ntkdyn.errors.DataError`). Arrays are read without pickle,
their declared sizes checked against the archive first (:func:`read_npz_arrays`).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ntkdyn.data.dataset import Dataset, stratified_sample
from ntkdyn.errors import DataError, InputError

__all__ = ["NPZ_KEYS", "load_npz", "read_npz_arrays"]

#: The arrays a user's ``.npz`` may hold (others are ignored).
NPZ_KEYS: tuple[str, ...] = ("x", "y", "groups", "group_names", "split")
_SPLITS = {"train": 0, "val": 1, "test": 2}
_FORMAT = (
    "save it with numpy.savez(path, x=inputs, y=labels) (optional: groups, group_names, split)"
)


#: What reading a zip member or an ``.npy`` header can raise on a corrupt or hostile file: bad zip
#: structure, truncation, a bad deflate stream, an unknown compression or an encrypted member
#: (RuntimeError), a malformed header (ValueError, struct.error).
_READ_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
    struct.error,
    KeyError,
)
#: Largest size ratio of a deflated zip member (DEFLATE compresses at most about 1032 : 1).
_ZIP_MAX_RATIO = 1100
_NPY_MAGIC = b"\x93NUMPY"


def _declared(fh) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype from an ``.npy`` header (None for a format version without a public reader)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    return tuple(shape), np.dtype(dtype)


def read_npz_arrays(
    path: str | os.PathLike, keys: tuple[str, ...], *, where: str, fix: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays ``keys`` (those present) of an ``.npz`` archive, and the names of all its arrays.

    Nothing is unpickled, and each array's size (its header's shape × item size) is checked
    against its zip member before memory is allocated, so a truncated or hostile file is refused
    with a message instead of a crash or an allocation of its declared size.

    Args:
        path: the archive.
        keys: the arrays to read.
        where: how messages start (``"--data: FILE"``).
        fix: what to do, appended to messages.

    Returns:
        ``(arrays, names)``.

    Raises:
        DataError: not a zip archive, a single ``.npy``, an object array, a size that disagrees
            with the archive, or an unreadable member.
    """
    path, head = Path(path), b""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_NPY_MAGIC))
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as exc:
        if head == _NPY_MAGIC:
            raise DataError(f"{where} holds a single array, not an .npz archive; {fix}") from None
        raise DataError(f"{where} is not a readable .npz file ({exc}); {fix}") from None
    with zf:
        members = {i.filename.removesuffix(".npy"): i for i in zf.infolist() if not i.is_dir()}
        arrays = {}
        for key in keys:
            info = members.get(key)
            if info is None:
                continue
            try:
                with zf.open(info) as fh:
                    declared = _declared(fh)
                if declared is not None:
                    shape, dtype = declared
                    if dtype.hasobject:
                        raise DataError(
                            f"{where}: {key!r} holds object arrays (Python objects), which ntkdyn "
                            f"never unpickles; store plain numeric or string arrays; {fix}"
                        )
                    need = math.prod(shape) * dtype.itemsize
                    ratio_ok = info.file_size <= _ZIP_MAX_RATIO * info.compress_size + 4096
                    if need > info.file_size or not ratio_ok:
                        raise DataError(
                            f"{where}: array {key!r} declares shape {shape} of {dtype} ({need} "
                            f"bytes) but its entry holds {info.file_size} bytes "
                            f"({info.compress_size} stored); the file is truncated or corrupt; "
                            f"{fix}"
                        )
                with zf.open(info) as fh:
                    arrays[key] = np.lib.format.read_array(fh, allow_pickle=False)
            except DataError:
                raise
            except _READ_ERRORS as exc:
                raise DataError(
                    f"{where}: array {key!r} is unreadable ({exc}); the file is truncated or "
                    f"corrupt, or holds Python objects; {fix}"
                ) from None
        return arrays, list(members)


def _read(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The recognised arrays of the archive and the names of all its arrays."""
    if not path.is_file():
        raise FileNotFoundError(f"--data: no file {path}; pass an existing .npz file ({_FORMAT})")
    return read_npz_arrays(path, NPZ_KEYS, where=f"--data: {path}", fix=_FORMAT)


def _labels(y: np.ndarray, path: Path, n: int) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(
            f"--data: {path}: y has shape {y.shape}, expected a 1-D array of length n = {n} "
            "(the first axis of x); flatten it or fix its length"
        )
    if y.dtype.kind not in "biuf":
        raise InputError(f"--data: {path}: y has dtype {y.dtype}; store numeric labels 0/1 or ±1")
    values = np.unique(y)
    if set(values.tolist()) <= {0, 1}:
        return y.astype(np.int32)
    if set(values.tolist()) <= {-1, 1}:
        return (y > 0).astype(np.int32)
    shown = ", ".join(str(v) for v in values[:10]) + (" ..." if len(values) > 10 else "")
    raise InputError(
        f"--data: {path}: y holds the values {{{shown}}}; the analysis is binary: labels must be "
        "{0, 1} or {-1, +1} — recode them"
    )


def _split_ids(split: np.ndarray, path: Path, n: int) -> np.ndarray:
    if split.ndim != 1 or split.shape[0] != n:
        raise InputError(
            f"--data: {path}: split has shape {split.shape}, expected a 1-D array of length n = {n}"
        )
    if split.dtype.kind in "US":
        try:
            names = np.char.lower(np.char.strip(split.astype(str)))
        except UnicodeError:
            raise InputError(
                f"--data: {path}: split holds bytes that are not text; use 'train', 'val', "
                "'test' or 0/1/2"
            ) from None
        bad = sorted(set(names.tolist()) - set(_SPLITS))
        if bad:
            raise InputError(
                f"--data: {path}: split holds {bad[:5]}; use 'train', 'val', 'test' or 0/1/2"
            )
        return np.vectorize(_SPLITS.__getitem__, otypes=[int])(names)
    if not np.issubdtype(split.dtype, np.integer) or not np.isin(split, (0, 1, 2)).all():
        raise InputError(
            f"--data: {path}: split holds {np.unique(split)[:5].tolist()}; use 0 (train), "
            "1 (val), 2 (test) or the strings"
        )
    return split.astype(int)


def load_npz(
    path: str | os.PathLike, *, split: str = "train", n: int | None = None, seed: int = 0
) -> Dataset:
    """Load a user's ``.npz`` (arrays ``x``, ``y``; optional ``groups``, ``group_names``, ``split``).

    With ``n`` smaller than the split, the subset is drawn with ``seed``: stratified by group
    (keeping every example of the rarest group, :func:`ntkdyn.data.dataset.stratified_sample`)
    when the file has ``groups``, uniformly otherwise; examples keep the file's order.

    Args:
        path: the file (``--data``).
        split: ``"train"``, ``"val"`` or ``"test"``; without a ``split`` array only ``"train"``
            (every example).
        n: number of examples (``None``: the whole split).
        seed: seed of the subset.

    Returns:
        A :class:`~ntkdyn.data.dataset.Dataset` named after the file, x float32, y in {0, 1}.

    Raises:
        FileNotFoundError: no such file.
        InputError: not an npz; ``x`` or ``y`` missing (the keys found are listed); ``y`` not 1-D
            of length n; labels other than {0, 1} / {−1, +1} (the values found are shown); NaN or
            inf in ``x`` (count and first example); bad ``groups``/``group_names``/``split``; the
            requested split empty; ``n`` larger than the split (its size is given).
    """
    path = Path(path)
    if split not in _SPLITS:
        raise InputError(f"--split: expected train, val or test, got {split!r}")
    arrays, found = _read(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise InputError(
                f"--data: {path} has no array {key!r} (found: {', '.join(found) or 'none'}); "
                f"{_FORMAT}"
            )
    x = arrays["x"]
    if x.ndim < 2 or x.dtype.kind not in "biuf":
        raise InputError(
            f"--data: {path}: x has shape {x.shape} and dtype {x.dtype}; expected numbers shaped "
            "(n, features...) — one row per example (reshape a 1-D x to (n, 1))"
        )
    total = x.shape[0]
    y = _labels(arrays["y"], path, total)
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused with it
        finite = np.isfinite(x.astype(np.float32, copy=False).reshape(total, -1))
    bad = ~finite.all(axis=1) if total else np.zeros(0, bool)
    if bad.any():
        count = int((~finite).sum())
        raise InputError(
            f"--data: {path}: x holds {count} NaN or inf value(s) in {int(bad.sum())} example(s), "
            f"the first at index {int(np.argmax(bad))} (values beyond float32's range count as "
            "inf); clean or drop those examples"
        )
    groups = names = None
    if "groups" in arrays:
        groups = arrays["groups"]
        if (
            groups.ndim != 1
            or groups.shape[0] != total
            or not np.issubdtype(groups.dtype, np.integer)
            or (total and (groups.min() < 0 or int(groups.max()) > np.iinfo(np.int32).max))
        ):
            raise InputError(
                f"--data: {path}: groups must be a 1-D array of {total} non-negative ints, got "
                f"shape {groups.shape} dtype {groups.dtype}"
            )
        groups = groups.astype(np.int32)
    if "group_names" in arrays:
        if groups is None:
            raise InputError(f"--data: {path}: group_names given without groups; add groups")
        names = tuple(str(s) for s in np.asarray(arrays["group_names"]).ravel())
        if total and int(groups.max()) >= len(names):
            raise InputError(
                f"--data: {path}: groups go up to {int(groups.max())} but group_names has "
                f"{len(names)} names; give one name per group id"
            )
    elif groups is not None and total:
        if int(groups.max()) >= max(total, 1024):
            raise InputError(
                f"--data: {path}: groups go up to {int(groups.max())} for {total} examples and "
                "no group_names; number the groups 0, 1, 2, ... or add group_names"
            )
        names = tuple(f"group {g}" for g in range(int(groups.max()) + 1))
    if "split" in arrays:
        sid = _split_ids(arrays["split"], path, total)
        idx = np.flatnonzero(sid == _SPLITS[split])
        where = f"the {split} split ({len(idx)} of {total} examples)"
    elif split != "train":
        raise InputError(
            f"--split: {path} has no split array, so every example is train; ask for --split "
            f"train or add split (0/1/2) to the file"
        )
    else:
        idx = np.arange(total)
        where = f"all {total} examples"
    if len(idx) == 0:
        raise InputError(
            f"--data: {path}: the {split} split is empty; choose another --split or assign "
            "examples to it"
        )
    if n is not None and not 1 <= n <= len(idx):
        raise InputError(
            f"--n: {path} holds {len(idx)} examples in the {split} split, got n={n}; ask for at "
            f"most {len(idx)}"
        )
    note = ""
    if n is not None and n < len(idx):
        if groups is not None:
            sub, how = stratified_sample(groups[idx], n, seed=seed, names=names)
        else:
            sub = np.sort(np.random.default_rng(seed).choice(len(idx), size=n, replace=False))
            how = "uniformly at random"
        idx = idx[sub]
        note = f", a sample of {n} drawn {how} with seed {seed}"
    return Dataset(
        name=path.name,
        x=np.asarray(x[idx], np.float32),
        y=y[idx],
        groups=None if groups is None else groups[idx],
        group_names=names,
        source=f"{len(idx)} examples from {path} ({where}{note})",
    )
